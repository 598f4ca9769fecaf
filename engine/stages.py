"""What differs between the two stages, behind one interface the trainer and test.py use:
data, model, learning-rate groups, loss inputs, evaluation and checkpoint selection."""
from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F

import datasets as data_registry
from datasets.base import PairDataset, drop_bad_images_from_eval_set, drop_samples_with_bad_images
from datasets.captions import FeedbackQuery, feedback_rounds
from datasets.mixgen import MixGenCollate
from datasets.transforms import eval_transform, train_transform
from engine.evaluation import METRICS, encode_images, encode_texts, retrieval, similarity_scores
from model.adapt import LOSS_INPUTS, AdaptModel
from model.build import (
    adapt_model_from_checkpoint,
    clip_from_pretrained,
    clip_from_project_state,
    token_model_from_checkpoint,
)
from model.clip import load_state_dict_strict
from model.losses import soft_target_share
from model.token import TokenModel
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError, DatasetError
from utils.precision import autocast, inference_dtype

log = logging.getLogger(__name__)


class Stage:
    """Base: the parts both stages share."""

    name = ""
    title = ""
    default_task = ""
    tasks = ()
    datasets = ()

    def __init__(self):
        self._eval_sets = {}
        self._noted = set()  # what ``note_once`` has logged
        self._auto_task = {}  # default task -> the task that stands in for it (see below)

    def note_once(self, message: str) -> None:
        """Log ``message`` the first time only (e.g. a task left out at every evaluation)."""
        if message not in self._noted:
            self._noted.add(message)
            log.info("%s", message)

    def check_dataset(self, cfg) -> None:
        data_registry.check_name(cfg.data.dataset, self.datasets)

    def eval_sets(self, cfg, split: str, trial=None) -> list:
        key = (cfg.data.root, cfg.data.dataset, cfg.data.get("manifest"), split, trial)
        if key not in self._eval_sets:
            sets = data_registry.eval_sets(cfg, split, trial)
            if cfg.data.skip_bad_images:
                sets = [self._without_bad_images(eval_set, cfg.data.load_truncated_images)
                        for eval_set in sets]
            self._eval_sets[key] = sets
        return self._eval_sets[key]

    @staticmethod
    def _without_bad_images(eval_set, load_truncated_images: bool):
        eval_set, bad, truncated = drop_bad_images_from_eval_set(eval_set,
                                                                 load_truncated_images)
        log_image_scan(eval_set.name, bad, truncated)
        return eval_set

    @staticmethod
    def _training_samples(cfg, trial) -> list:
        samples = data_registry.train_samples(cfg, trial)
        if cfg.data.skip_bad_images:
            samples, bad, truncated = drop_samples_with_bad_images(
                samples, cfg.data.load_truncated_images)
            log_image_scan("training set", bad, truncated)
        return samples

    def usable_samples(self, cfg, samples: list) -> list:
        """The training samples this stage can learn from (all, unless a stage says)."""
        return samples

    def pair_dataset(self, cfg, samples: list, with_text: bool, with_view: bool = False,
                     with_caption: bool = False, feedback_query=None) -> PairDataset:
        """A ``PairDataset`` of ``samples``; sketches and captions are loaded when every
        sample has them (captions only when ``with_text``); ``feedback_query``: see
        ``PairDataset``."""
        with_text = with_text and all(sample.captions for sample in samples)
        return PairDataset(samples, train_transform(cfg), train_transform(cfg, sketch=True),
                           cfg.model.context_length, cfg.data.backtrans_p, with_text, with_view,
                           with_caption and with_text,
                           load_truncated_images=cfg.data.load_truncated_images,
                           with_sketch=all(sample.sketch is not None for sample in samples),
                           feedback_query=feedback_query)

    def training_samples(self, cfg, trial=None) -> list:
        """``usable_samples`` of the dataset's training split."""
        self.check_dataset(cfg)
        return self.usable_samples(cfg, self._training_samples(cfg, trial))

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

    def check_selection(self, cfg) -> None:
        """Reject a selection metric, task or dataset that no evaluation will produce."""
        if cfg.train.select_metric not in METRICS:
            raise ConfigError(f"train.select_metric={cfg.train.select_metric!r} is not one of "
                              f"{', '.join(METRICS)}")
        task = cfg.train.select_task
        if task != "auto" and task not in self.tasks:
            raise ConfigError(f"train.select_task={task!r} is not one of auto, "
                              f"{', '.join(self.tasks)}")
        members = data_registry.members(cfg.data.dataset)
        dataset = cfg.train.select_dataset
        if dataset != "auto" and cfg.data.dataset == "tri-pedes" and dataset not in members:
            raise ConfigError(f"train.select_dataset={dataset!r} is not one of auto, "
                              f"{', '.join(members)}")

    def selection_name(self, cfg) -> str:
        task = self.default_task if cfg.train.select_task == "auto" else cfg.train.select_task
        return f"{self._auto_task.get(task, task)} {cfg.train.select_metric}"

    def _selection_task(self, cfg, tasks: dict) -> str:
        """``train.select_task``; ``auto``: the stage's default task, or, where the data
        give no queries for it, the first of the stage's tasks they do give."""
        task = cfg.train.select_task
        if task != "auto":
            return task
        if self.default_task in tasks:
            return self.default_task
        stand_in = next((name for name in self.tasks if name in tasks), self.default_task)
        if stand_in != self.default_task:
            self._auto_task = {self.default_task: stand_in}
            self.note_once(f"train.select_task=auto: {self.default_task} has no queries in "
                           f"{data_registry.source(cfg)}, so the best epoch is picked on "
                           f"{stand_in}")
        return stand_in

    def selection_score(self, results: dict, cfg) -> float:
        metric = cfg.train.select_metric
        if metric not in METRICS:
            raise ConfigError(f"train.select_metric={metric!r} is not one of "
                              f"{', '.join(METRICS)}")
        block = results
        if "datasets" in results:
            dataset = cfg.train.select_dataset
            dataset = "cuhk-pedes" if dataset == "auto" else dataset
            if dataset not in results["datasets"]:
                raise ConfigError(f"train.select_dataset={dataset!r} is not one of "
                                  f"{', '.join(results['datasets'])}")
            block = results["datasets"][dataset]
        task = self._selection_task(cfg, block["tasks"])
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
    tasks = ("text_to_image", "sketch_to_image")
    datasets = data_registry.names_for("adapt")

    def train_dataset(self, cfg, trial=None) -> PairDataset:
        samples = self.training_samples(cfg, trial)  # may turn losses off: read cfg after
        return self.pair_dataset(cfg, samples, with_text=True, with_view=cfg.loss.ss > 0,
                                 with_caption=cfg.loss.mixgen)

    def usable_samples(self, cfg, samples: list) -> list:
        """Turn off the losses the data cannot feed, then keep the samples that have what
        the remaining losses need.

        A loss whose input (captions, sketches: ``model.adapt.LOSS_INPUTS``; MixGen mixes
        captions) no training sample has is set to 0 in ``cfg.loss``, so that the run's
        config.yaml says so, with a line in the log; never silently. Where some samples
        have it, those without it are left out and counted. The named datasets give every
        sample both, so nothing changes for them.
        """
        have = {"text": any(sample.captions for sample in samples),
                "sketch": any(sample.sketch is not None for sample in samples)}
        source = data_registry.source(cfg)
        if not any(have.values()):
            raise DatasetError(f"{source}: none of the {len(samples)} training samples has a "
                               "sketch or a caption; stage 1 learns from at least one of them")
        words = {"text": "a caption", "sketch": "a sketch"}
        for name, inputs in LOSS_INPUTS.items():
            missing = [words[what] for what in inputs if not have[what]]
            if cfg.loss[name] > 0 and missing:
                log.warning("loss.%s=%g turned off (set to 0): no training sample of %s has "
                            "%s", name, cfg.loss[name], source, " or ".join(missing))
                cfg.loss[name] = 0.0
        if cfg.loss.mixgen and not have["text"]:
            log.warning("loss.mixgen turned off (set to false): no training sample of %s has "
                        "a caption to mix", source)
            cfg.loss.mixgen = False
        if not any(cfg.loss[name] > 0 for name in LOSS_INPUTS):
            raise ConfigError(f"every stage-1 loss is off (loss.{', loss.'.join(LOSS_INPUTS)}"
                              f" are 0) for {source}: nothing to train")
        needed = {what for name, inputs in LOSS_INPUTS.items() if cfg.loss[name] > 0
                  for what in inputs} | ({"text"} if cfg.loss.mixgen else set())
        kept = [sample for sample in samples
                if ("text" not in needed or sample.captions)
                and ("sketch" not in needed or sample.sketch is not None)]
        if len(kept) < len(samples):
            log.warning("%s: %d of %d training samples left out: they lack %s, which the "
                        "losses on need (a loss set to 0 needs nothing)", source,
                        len(samples) - len(kept), len(samples),
                        " or ".join(words[what] for what in sorted(needed)))
        return kept

    def collate(self, cfg):
        if cfg.loss.mixgen:
            return MixGenCollate(cfg.loss.mixgen_p, cfg.loss.mixgen_ratio,
                                 cfg.model.context_length)
        return None

    def build_model(self, cfg, train_set) -> AdaptModel:
        return AdaptModel(clip_from_pretrained(cfg), cfg.loss, train_set.num_classes())

    def zero_shot_model(self, cfg) -> AdaptModel:
        """CLIP as ``model.pretrained`` gives it, for zero-shot evaluation."""
        return AdaptModel(clip_from_pretrained(cfg), cfg.loss, num_classes=0)

    def model_from_checkpoint(self, checkpoint: dict, cfg, source: str) -> AdaptModel:
        return adapt_model_from_checkpoint(checkpoint, cfg, source)

    def loss_inputs(self, cfg, epoch, step_in_epoch, steps_per_epoch) -> dict:
        return {"alpha": soft_target_share(cfg.loss.softlabel_ratio, epoch, step_in_epoch,
                                           steps_per_epoch)}

    def evaluate(self, model, cfg, split: str, device, trial=None, examples: int = 0,
                 queries: bool = False, rerank: dict | None = None) -> dict:
        """text->image and sketch->image on every test set of the dataset (a task whose
        queries a set lacks is left out, with a line in the log); with ``queries``, also
        the text of every text query (``results["queries"]``); with ``rerank``
        (``engine.evaluation.rerank_setting``), every task k-reciprocal re-ranked."""
        blocks, shown, asked = {}, [], []
        encode = partial(encode_images, transform=eval_transform(cfg), device=device,
                         batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                         dtype=inference_dtype(device, cfg),
                         load_truncated_images=cfg.data.load_truncated_images)
        rank = partial(retrieval, rank_denominator=cfg.test.rank_denominator, rerank=rerank)
        for eval_set in self.eval_sets(cfg, split, trial):
            gallery = encode(model.encode_image, eval_set.gallery_paths,
                             desc=f"{eval_set.name} photos")
            tasks = {}
            if eval_set.sketch_paths:
                # A sketch asked once per caption is encoded once.
                unique = sorted(set(eval_set.sketch_paths))
                row = {path: index for index, path in enumerate(unique)}
                sketches = encode(model.encode_image, unique, desc=f"{eval_set.name} sketches")
                sketches = sketches[torch.as_tensor([row[p] for p in eval_set.sketch_paths],
                                                    device=sketches.device)]
            if eval_set.text_queries:
                texts = encode_texts(model, eval_set.text_queries, cfg.model.context_length,
                                     device, cfg.test.batch_size, inference_dtype(device, cfg))
                # Text queries leave photos out only where the dataset gives their cams.
                text_cams = (eval_set.text_cams, eval_set.gallery_cams) \
                    if eval_set.text_cams is not None else (None, None)
                tasks["text_to_image"] = rank(texts, gallery, eval_set.text_ids,
                                              eval_set.gallery_ids, *text_cams)
            else:
                self.note_once(f"{eval_set.name} {split}: text_to_image left out (no caption "
                               "queries)")
            if eval_set.sketch_paths:
                tasks["sketch_to_image"] = rank(sketches, gallery, eval_set.sketch_ids,
                                                eval_set.gallery_ids, eval_set.sketch_cams,
                                                eval_set.gallery_cams)
            else:
                self.note_once(f"{eval_set.name} {split}: sketch_to_image left out (no sketch "
                               "queries)")
            blocks[eval_set.name] = {"tasks": tasks}
            if examples and eval_set.sketch_paths:
                shown += ranked_examples(sketches, gallery, eval_set,
                                         [""] * len(eval_set.sketch_paths), examples,
                                         rerank=rerank)
            if queries:
                asked += [{"task": "text_to_image", "dataset": eval_set.name,
                           "image": str(photo), "person_id": pid, "text": text}
                          for photo, pid, text in zip(eval_set.text_photos, eval_set.text_ids,
                                                      eval_set.text_queries)]
        results = ({"dataset": cfg.data.dataset, **next(iter(blocks.values()))}
                   if len(blocks) == 1 else {"dataset": cfg.data.dataset, "datasets": blocks})
        if examples:
            results["examples"] = shown[:examples]
        if queries:
            results["queries"] = asked
        return results


class TokenStage(Stage):
    """Stage 2: a sketch becomes the word ``*`` of a text query composed with feedback."""

    name = "token"
    title = "stage 2 (pseudo-word token learning)"
    default_task = "interactive"
    tasks = ("interactive", "sketch_only", "text_only", "interactive_mq", "sketch_only_mq")
    datasets = data_registry.names_for("token")

    def train_dataset(self, cfg, trial=None) -> PairDataset:
        samples = self.training_samples(cfg, trial)  # may turn loss.composed off: read after
        query = (FeedbackQuery(cfg.model.prompt, cfg.model.sketch_prompt,
                               cfg.loss.composed_clauses) if cfg.loss.composed > 0 else None)
        return self.pair_dataset(cfg, samples, with_text=False, feedback_query=query)

    def usable_samples(self, cfg, samples: list) -> list:
        """The samples with a sketch (all, for the named datasets); none is an error. With
        ``loss.composed``, only those with feedback, or the term off (with a line in the
        log) where no sample has any."""
        kept = [sample for sample in samples if sample.sketch is not None]
        source = data_registry.source(cfg)
        if samples and not kept:
            raise DatasetError(f"{source}: no training sample has a sketch; stage 2 learns a "
                               "word from sketches (stage 1 trains without them)")
        if len(kept) < len(samples):
            log.warning("%s: %d of %d training samples have no sketch and are left out of "
                        "stage 2", source, len(samples) - len(kept), len(samples))
        if cfg.loss.composed > 0:
            if cfg.loss.composed_clauses not in ("rounds", "all"):
                raise ConfigError(f"loss.composed_clauses={cfg.loss.composed_clauses!r} is not "
                                  "one of rounds, all")
            with_feedback = [sample for sample in kept if sample.feedback]
            if not with_feedback:
                log.warning("loss.composed=%g turned off (set to 0): no training sketch of %s "
                            "has feedback", cfg.loss.composed, source)
                cfg.loss.composed = 0.0
            elif len(with_feedback) < len(kept):
                log.warning("%s: %d of %d training sketches have no feedback and are left out "
                            "(loss.composed needs it)", source,
                            len(kept) - len(with_feedback), len(kept))
                kept = with_feedback
        return kept

    def eval_sets(self, cfg, split: str, trial=None) -> list:
        sets = super().eval_sets(cfg, split, trial)
        for eval_set in sets:
            if not eval_set.sketch_paths:
                raise DatasetError(f"{data_registry.source(cfg)}: no query sketch in the "
                                   f"{split} split; stage 2 evaluates sketch queries")
        return sets

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
        return token_model_from_checkpoint(checkpoint, cfg, source)

    def lr_scales(self, cfg) -> dict:
        return {"img2text.": cfg.train.ratio_factor}

    @staticmethod
    def composed_features(model, sketch_feats, feedback: list, cfg, device) -> torch.Tensor:
        """``model.encode_query`` over the queries in batches, without gradients, in the
        inference precision: features [Q, E] from raw sketch features [Q, E] and one
        feedback text per query."""
        size, dtype = cfg.test.batch_size, inference_dtype(device, cfg)
        feats = []
        with torch.no_grad():
            for start in range(0, len(feedback), size):
                with autocast(device, dtype):
                    feats.append(model.encode_query(sketch_feats[start:start + size],
                                                    feedback[start:start + size]).float())
        return torch.cat(feats)

    def evaluate(self, model, cfg, split: str, device, trial=None, examples: int = 0,
                 queries: bool = False, rerank: dict | None = None) -> dict:
        """interactive (sketch + feedback), sketch_only (sketch image) and text_only (the
        feedback alone); with ``test.rounds``, the interactive metrics per round of
        feedback; with ``test.multi_query``, all sketches of a person as one query
        (``*_mq``); with ``queries``, the texts of every query (``results["queries"]``);
        with ``rerank`` (``engine.evaluation.rerank_setting``), every task and round
        k-reciprocal re-ranked. Without any feedback the tasks that need it are left out,
        with a line in the log."""
        (eval_set,) = self.eval_sets(cfg, split, trial)
        feedback_texts = eval_set.feedback or [""] * len(eval_set.sketch_paths)
        has_feedback = any(feedback_texts)
        if not has_feedback:
            self.note_once(f"{eval_set.name} {split}: interactive, text_only"
                           f"{', interactive_mq' if cfg.test.multi_query else ''}"
                           f"{' and the feedback rounds' if cfg.test.rounds > 0 else ''} "
                           "left out (no query sketch has feedback)")
        dtype = inference_dtype(device, cfg)
        encode = partial(encode_images, transform=eval_transform(cfg), device=device,
                         batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                         dtype=dtype, load_truncated_images=cfg.data.load_truncated_images)
        gallery = encode(model.encode_image, eval_set.gallery_paths, desc="gallery photos")
        sketch_raw = encode(model.clip.encode_image, eval_set.sketch_paths, desc="query sketches")
        sketches = F.normalize(sketch_raw, dim=-1)
        if has_feedback:
            composed = self.composed_features(model, sketch_raw, feedback_texts, cfg, device)
            texts = encode_texts(model, feedback_texts, cfg.model.context_length, device,
                                 cfg.test.batch_size, dtype)
        # The paper's code ranks the whole gallery for stage 2 (no camera filter).
        cams = ((eval_set.sketch_cams, eval_set.gallery_cams)
                if cfg.test.stage2_drop_same_camera else (None, None))
        rank = partial(retrieval, gallery_feats=gallery, query_ids=eval_set.sketch_ids,
                       gallery_ids=eval_set.gallery_ids, query_cams=cams[0],
                       gallery_cams=cams[1], rank_denominator=cfg.test.rank_denominator,
                       rerank=rerank)
        results = {"dataset": cfg.data.dataset, "tasks": (
            {"interactive": rank(composed), "sketch_only": rank(sketches),
             "text_only": rank(texts)} if has_feedback else {"sketch_only": rank(sketches)})}
        if cfg.test.multi_query:
            person_ids, grouped = group_by_person(
                eval_set.sketch_ids, [composed, sketches] if has_feedback else [sketches])
            rank_mq = partial(retrieval, gallery_feats=gallery, query_ids=person_ids,
                              gallery_ids=eval_set.gallery_ids,
                              rank_denominator=cfg.test.rank_denominator, rerank=rerank)
            if has_feedback:
                results["tasks"]["interactive_mq"] = rank_mq(grouped[0])
            results["tasks"]["sketch_only_mq"] = rank_mq(grouped[-1])
        rounds = [feedback_rounds(text, cfg.test.rounds) for text in feedback_texts]
        if cfg.test.rounds > 0 and has_feedback:
            results["rounds"] = []
            for round_number in range(cfg.test.rounds + 1):
                feedback = [per_query[round_number] for per_query in rounds]
                feats = self.composed_features(model, sketch_raw, feedback, cfg, device)
                results["rounds"].append({"round": round_number, **rank(feats)})
        query_texts = [model.query_text(text) for text in feedback_texts]
        if examples:
            results["examples"] = ranked_examples(composed if has_feedback else sketches,
                                                  gallery, eval_set, query_texts, examples,
                                                  same_camera_out=cams[0] is not None,
                                                  rerank=rerank)
        if queries:
            results["queries"] = [
                {"image": str(path), "person_id": pid,
                 "texts": {"interactive": text, "text_only": feedback,
                           **({"rounds": [model.query_text(text) for text in per_query]}
                              if cfg.test.rounds > 0 else {})} if has_feedback else {}}
                for path, pid, text, feedback, per_query in zip(
                    eval_set.sketch_paths, eval_set.sketch_ids, query_texts, feedback_texts,
                    rounds)]
        return results


def log_image_scan(where: str, unreadable: set, truncated: set) -> None:
    """The counts of a ``data.skip_bad_images`` scan (each truncated image is also named
    once by ``datasets.base``)."""
    if unreadable:
        log.warning("%s: skipped %d unreadable image(s) (data.skip_bad_images=true): %s",
                    where, len(unreadable), ", ".join(map(str, sorted(unreadable)[:5])))
    if truncated:
        log.warning("%s: %d truncated image(s) load as far as their data go "
                    "(data.load_truncated_images=true)", where, len(truncated))


def group_by_person(ids: list, feature_sets: list) -> tuple:
    """Average the normalised features of each person's queries (one multi-query per
    person). ids [Q]; each feature set [Q, E] -> ([P] ids, list of [P, E])."""
    people = sorted(set(ids))
    index = torch.as_tensor([people.index(pid) for pid in ids])
    grouped = []
    for feats in feature_sets:
        sums = torch.zeros(len(people), feats.shape[1], device=feats.device)
        sums.index_add_(0, index.to(feats.device), feats)
        grouped.append(F.normalize(sums, dim=-1))
    return people, grouped


def ranked_examples(query_feats, gallery_feats, eval_set, query_texts: list, count: int,
                    topk: int = 10, same_camera_out: bool = True,
                    rerank: dict | None = None) -> list:
    """The top-``topk`` gallery photos of ``count`` queries spread over the query list;
    with ``same_camera_out``, without what the protocol leaves out (same person and cam).
    With ``rerank`` the order is the re-ranked one and the scores are minus the re-ranked
    distance (``engine.evaluation.similarity_scores``)."""
    step = max(1, len(eval_set.sketch_paths) // count)
    chosen = list(range(0, len(eval_set.sketch_paths), step))[:count]
    if rerank is None:
        similarity = query_feats[chosen] @ gallery_feats.t()
    else:  # every query is in the re-ranking graph, so all of them are re-ranked again
        similarity = similarity_scores(query_feats, gallery_feats, rerank)[chosen]
    if same_camera_out and eval_set.sketch_cams is not None and eval_set.gallery_cams is not None:
        same_id = torch.as_tensor(eval_set.gallery_ids)[None] == torch.as_tensor(
            [eval_set.sketch_ids[q] for q in chosen])[:, None]
        same_cam = torch.as_tensor(eval_set.gallery_cams)[None] == torch.as_tensor(
            [eval_set.sketch_cams[q] for q in chosen])[:, None]
        similarity = similarity.masked_fill((same_id & same_cam).to(similarity.device),
                                            float("-inf"))
    scores, order = similarity.topk(min(topk, gallery_feats.shape[0]), dim=1)
    examples = []
    for row, query in enumerate(chosen):
        ranked = order[row].tolist()
        examples.append({
            "query": str(eval_set.sketch_paths[query]), "text": query_texts[query],
            "ranked": [str(eval_set.gallery_paths[g]) for g in ranked],
            "scores": scores[row].tolist(),
            "correct": [eval_set.gallery_ids[g] == eval_set.sketch_ids[query] for g in ranked]})
    return examples


STAGES = {"adapt": AdaptStage, "token": TokenStage}


def stage_for(name: str) -> Stage:
    return STAGES[name]()
