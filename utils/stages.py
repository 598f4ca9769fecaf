"""What differs between the two stages, behind one interface the trainer and test.py use:
data, model, learning-rate groups, loss inputs, evaluation and checkpoint selection."""
from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F
from easydict import EasyDict

import datasets as data_registry
from datasets.base import PairDataset
from datasets.transforms import build_transform
from model.adapt import AdaptModel
from model.build import clip_from_pretrained, clip_from_project_state
from model.clip import load_state_dict_strict
from model.token import TokenModel, compose_query
from model.tokenizer import tokenize
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError
from utils.evaluation import METRICS, autocast, encode_images, encode_texts, retrieval

log = logging.getLogger(__name__)


class Stage:
    """Base: the parts both stages share."""

    name = ""
    title = ""
    default_task = ""
    datasets = ()

    def __init__(self):
        self._eval_sets = {}

    def check_dataset(self, cfg) -> None:
        data_registry.check_name(cfg.data.dataset, self.datasets)

    def eval_sets(self, cfg, split: str, trial=None) -> list:
        key = (cfg.data.root, cfg.data.dataset, split, trial)
        if key not in self._eval_sets:
            self._eval_sets[key] = data_registry.eval_sets(cfg, split, trial)
        return self._eval_sets[key]

    def pair_dataset(self, cfg, trial, with_text: bool, with_view: bool = False) -> PairDataset:
        self.check_dataset(cfg)
        augment = cfg.data.augment
        transform = build_transform(cfg.model.image_size, augment, cfg.data.num_augments)
        return PairDataset(data_registry.train_samples(cfg, trial), transform, transform,
                           cfg.model.context_length, cfg.data.backtrans_p, with_text, with_view)

    def collate(self, cfg):
        return None  # the default collation

    def lr_scales(self, cfg) -> dict:
        return {}

    def loss_inputs(self, cfg, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> dict:
        return {}

    def selection_split(self, cfg, trial=None) -> str:
        choice = cfg.train.select_on
        if choice not in ("auto", "val", "test"):
            raise ConfigError(f"train.select_on={choice!r} is not one of auto, val, test")
        if choice == "auto":
            return "val" if data_registry.has_split(cfg, "val") else "test"
        if choice == "val" and not data_registry.has_split(cfg, "val"):
            raise ConfigError(f"train.select_on=val but {cfg.data.dataset} has no val split")
        return choice

    def selection_name(self, cfg) -> str:
        task = self.default_task if cfg.train.select_task == "auto" else cfg.train.select_task
        return f"{task} {cfg.train.select_metric}"

    def selection_score(self, results: dict, cfg) -> float:
        metric = cfg.train.select_metric
        if metric not in METRICS:
            raise ConfigError(f"train.select_metric={metric!r} is not one of "
                              f"{', '.join(METRICS)}")
        task = self.default_task if cfg.train.select_task == "auto" else cfg.train.select_task
        block = results
        if "datasets" in results:
            dataset = cfg.train.select_dataset
            dataset = "cuhk-pedes" if dataset == "auto" else dataset
            if dataset not in results["datasets"]:
                raise ConfigError(f"train.select_dataset={dataset!r} is not one of "
                                  f"{', '.join(results['datasets'])}")
            block = results["datasets"][dataset]
        if task not in block["tasks"]:
            raise ConfigError(f"train.select_task={task!r} is not one of "
                              f"{', '.join(block['tasks'])}")
        return block["tasks"][task][metric]

    def load_model_state(self, model, state: dict, source: str) -> None:
        load_state_dict_strict(model, state, source)


class AdaptStage(Stage):
    """Stage 1: photo<->text and photo<->sketch alignment on PEDES-style data."""

    name = "adapt"
    title = "stage 1 (task-oriented knowledge adaptation)"
    default_task = "sketch_to_image"
    datasets = data_registry.STAGE1_DATASETS

    def train_dataset(self, cfg, trial=None) -> PairDataset:
        return self.pair_dataset(cfg, trial, with_text=True, with_view=cfg.loss.ss > 0)

    def build_model(self, cfg, train_set) -> AdaptModel:
        return AdaptModel(clip_from_pretrained(cfg), cfg.loss, train_set.num_classes())

    def model_from_checkpoint(self, checkpoint: dict, cfg, source: str) -> AdaptModel:
        state = checkpoint["model"]
        classifier = state.get("id_classifier.weight")
        num_classes = classifier.shape[0] if classifier is not None else 0
        model = AdaptModel(clip_from_project_state(state, checkpoint["config"], cfg),
                           EasyDict(checkpoint["config"]["loss"]), num_classes)
        clip_state = {k: v for k, v in model.state_dict().items() if k.startswith("clip.")}
        # The CLIP part was rebuilt (possibly resampled) from the state; the heads load here.
        load_state_dict_strict(model, {**state, **clip_state}, source)
        return model

    def loss_inputs(self, cfg, epoch, step_in_epoch, steps_per_epoch) -> dict:
        # Soft targets ramp in over the first epoch, from 0 to loss.softlabel_ratio.
        ramp = min(1.0, step_in_epoch / steps_per_epoch) if epoch == 0 else 1.0
        return {"alpha": cfg.loss.softlabel_ratio * ramp}

    def evaluate(self, model, cfg, split: str, device, trial=None) -> dict:
        """text->image and sketch->image on every test set of the dataset."""
        blocks = {}
        for eval_set in self.eval_sets(cfg, split, trial):
            gallery = encode_images(model.encode_image, eval_set.gallery_paths, cfg.model.image_size, device,
                                    cfg.test.batch_size, cfg.data.num_workers,
                                    f"{eval_set.name} photos")
            sketches = encode_images(model.encode_image, eval_set.sketch_paths, cfg.model.image_size, device,
                                     cfg.test.batch_size, cfg.data.num_workers,
                                     f"{eval_set.name} sketches")
            texts = encode_texts(model, eval_set.text_queries, cfg.model.context_length, device,
                                 cfg.test.batch_size)
            blocks[eval_set.name] = {"tasks": {
                "text_to_image": retrieval(texts, gallery, eval_set.text_ids,
                                           eval_set.gallery_ids),
                "sketch_to_image": retrieval(sketches, gallery, eval_set.sketch_ids,
                                             eval_set.gallery_ids, eval_set.sketch_cams,
                                             eval_set.gallery_cams),
            }}
        if len(blocks) == 1:
            return {"dataset": cfg.data.dataset, **next(iter(blocks.values()))}
        return {"dataset": cfg.data.dataset, "datasets": blocks}


class TokenStage(Stage):
    """Stage 2: a sketch becomes the word ``*`` of a text query composed with feedback."""

    name = "token"
    title = "stage 2 (pseudo-word token learning)"
    default_task = "interactive"
    datasets = data_registry.DATASET_NAMES

    def train_dataset(self, cfg, trial=None) -> PairDataset:
        return self.pair_dataset(cfg, trial, with_text=False)

    def build_model(self, cfg, train_set=None) -> TokenModel:
        if cfg.model.init_from:
            checkpoint = load_checkpoint(cfg.model.init_from, expected_stage="adapt")
            clip = clip_from_project_state(checkpoint["model"], checkpoint["config"], cfg)
        else:
            log.warning("model.init_from is empty: stage 2 starts from %s, not from a stage-1 "
                        "checkpoint", cfg.model.pretrained)
            clip = clip_from_pretrained(cfg)
        return TokenModel(clip, cfg.model, cfg.loss)

    def model_from_checkpoint(self, checkpoint: dict, cfg, source: str) -> TokenModel:
        clip = clip_from_project_state(checkpoint["model"], checkpoint["config"], cfg)
        model = TokenModel(clip, cfg.model, cfg.loss)
        clip_state = {k: v for k, v in model.state_dict().items() if k.startswith("clip.")}
        load_state_dict_strict(model, {**checkpoint["model"], **clip_state}, source)
        return model

    def lr_scales(self, cfg) -> dict:
        return {"img2text.": cfg.train.ratio_factor}

    def composed_features(self, model, sketch_feats, feedback, cfg, device) -> torch.Tensor:
        """Normalised features [Q, E] of "a photo of * , and {feedback}" per query."""
        texts = [compose_query(cfg.model.prompt, phrases, cfg.model.sketch_prompt)
                 for phrases in feedback]
        feats = []
        with torch.no_grad():
            for start in range(0, len(texts), cfg.test.batch_size):
                tokens = tokenize(texts[start:start + cfg.test.batch_size],
                                  cfg.model.context_length).to(device)
                with autocast(device, cfg.train.amp):
                    feats.append(model.compose(
                        sketch_feats[start:start + cfg.test.batch_size], tokens).float())
        return torch.cat(feats)

    def evaluate(self, model, cfg, split: str, device, trial=None) -> dict:
        """interactive (sketch + feedback), sketch_only (sketch image) and text_only."""
        (eval_set,) = self.eval_sets(cfg, split, trial)
        encode = partial(encode_images, image_size=cfg.model.image_size, device=device,
                         batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                         amp=cfg.train.amp)
        gallery = encode(model.encode_image, eval_set.gallery_paths, desc="gallery photos")
        sketch_raw = encode(model.clip.encode_image, eval_set.sketch_paths, desc="query sketches")
        feedback_texts = [", ".join(phrases) for phrases in eval_set.feedback]
        composed = self.composed_features(model, sketch_raw, eval_set.feedback, cfg, device)
        texts = encode_texts(model, feedback_texts, cfg.model.context_length, device,
                             cfg.test.batch_size, cfg.train.amp)
        rank = partial(retrieval, gallery_feats=gallery, query_ids=eval_set.sketch_ids,
                       gallery_ids=eval_set.gallery_ids, query_cams=eval_set.sketch_cams,
                       gallery_cams=eval_set.gallery_cams)
        tasks = {"interactive": rank(composed),
                 "sketch_only": rank(F.normalize(sketch_raw, dim=-1)),
                 "text_only": rank(texts)}
        return {"dataset": cfg.data.dataset, "tasks": tasks}


STAGES = {"adapt": AdaptStage, "token": TokenStage}


def stage_for(name: str) -> Stage:
    return STAGES[name]()
