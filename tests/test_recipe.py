"""The shipped recipe is the paper's code's recipe (github.com/littlexinyi/InteractReID,
after TBPS-CLIP and Pic2Word): every choice that moves the numbers is pinned here, each
checked against the value or behaviour read in the reference."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from datasets import pedes, pku_sketch
from datasets.transforms import (
    NORMALIZATIONS,
    RandomChoiceOf,
    augmentations,
    eval_transform,
    train_transform,
)
from model.losses import clamped_logit_scale
from model.token import MappingNetwork
from utils.config import REPO_ROOT, flatten, load_config
from utils.metrics import rank_metrics

STAGE1 = {
    "seed": 1, "model.image_size": [224, 224], "model.context_length": 77,
    "model.freeze_patch_embed": True, "model.text_dropout": 0.05,
    "loss.nitc": 1.0, "loss.nisc": 1.0, "loss.ritc": 1.0, "loss.ritc_eps": 0.01,
    "loss.softlabel_ratio": 0.5, "loss.logit_scale_max": 100.0,
    "loss.logit_scale_clamp": "straight_through", "loss.id": 0.0, "loss.citc": 0.0,
    "loss.ss": 0.0, "loss.mixgen": False, "loss.separate_soft_target_pass": False,
    "data.dataset": "tri-pedes", "data.augment": True, "data.num_augments": 2,
    "data.augment_replacement": True, "data.grayscale_p": 0.1, "data.normalize": "imagenet",
    "data.crop_aspect": "fixed", "data.sketch_fill": 0.0, "data.load_truncated_images": True,
    "data.drop_captions_without_backtrans": False, "data.test_interpolation": "bicubic",
    "data.pre_caption": True, "data.backtrans_p": 0.1,
    "data.sketch_pairing": "own", "train.epochs": 5, "train.batch_size": 60,
    "train.global_batch": 240, "train.lr": 1e-4, "train.lr_start": 1e-6, "train.lr_end": 5e-6,
    "train.warmup_epochs": 1.0, "train.weight_decay": 0.02, "train.betas": [0.9, 0.98],
    "train.eps": 1e-8, "train.amp": True, "train.amp_dtype": "float16",
    "train.select_on": "test", "train.select_task": "auto", "train.select_metric": "R1",
    "train.select_dataset": "auto", "test.amp": False, "test.sketch_queries": "per_caption",
    "test.rank_denominator": "all",
}
STAGE2 = {
    "seed": 0, "model.mapping_type": "MLP", "model.n_layer": 1, "model.middle_dim": 768,
    "model.mapping_dropout": 0.1, "model.text_dropout": 0.05,
    "model.prompt": "a photo of * , and {}", "model.sketch_prompt": "a photo of *",
    "model.init_from": "outputs/TriPEDES_pretrain/checkpoint_best.pth",
    "loss.inversion": 1.0, "loss.alignment": 1.0, "loss.logit_scale_max": 0.0,
    "train.lr": 1e-5, "train.lr_start": 1e-6, "train.lr_end": 5e-6, "train.warmup_epochs": 5.0,
    "train.ratio_factor": 10.0, "train.weight_decay": 0.02, "train.amp_dtype": "float16",
    "train.select_task": "auto", "test.amp": False, "test.rank_denominator": "all",
    "test.stage2_drop_same_camera": False, "data.normalize": "imagenet",
    "data.augment_replacement": True, "data.grayscale_p": 0.1, "data.crop_aspect": "fixed",
    "data.sketch_fill": 0.0, "data.load_truncated_images": True,
}


@pytest.mark.parametrize("name, expected", [
    ("TriPEDES_pretrain", STAGE1),
    ("Market_finetune", {**STAGE2, "data.dataset": "mask1k", "train.epochs": 20,
                         "train.batch_size": 32, "train.global_batch": 32}),
    ("PKU_finetune", {**STAGE2, "data.dataset": "pku-sketch", "train.epochs": 40,
                      "train.batch_size": 16, "train.global_batch": 16,
                      "data.pku_reference_indexing": False}),
])
def test_resolved_stage_values(name, expected):
    cfg = flatten(load_config(REPO_ROOT / "config" / f"{name}.yaml"))
    assert {key: cfg[key] for key in expected} == expected


def test_shell_scripts_reach_the_paper_batch():
    """adaptation.sh takes the stage-1 config (global batch 240 on any GPU count); the
    stage-2 script runs both datasets, PKU over ten trials."""
    assert "config/TriPEDES_pretrain.yaml" in (REPO_ROOT / "adaptation.sh").read_text()
    script = (REPO_ROOT / "tokenlearning.sh").read_text()
    assert "config/Market_finetune.yaml" in script and "config/PKU_finetune.yaml" in script
    assert load_config(REPO_ROOT / "config" / "PKU_finetune.yaml").data.trials == list(
        range(1, 11))


def test_mapping_network_shapes():
    """One block: Linear(512->768), Dropout(0.1), ReLU, then Linear(768->512)."""
    cfg = load_config(REPO_ROOT / "config" / "Market_finetune.yaml").model
    phi = MappingNetwork(512, 512, cfg.mapping_type, cfg.n_layer, cfg.middle_dim,
                         cfg.mapping_dropout)
    layers = list(phi.layers) + [phi.fc_out]
    assert [type(layer) for layer in layers] == [nn.Linear, nn.Dropout, nn.ReLU, nn.Linear]
    assert layers[0].weight.shape == (768, 512) and layers[3].weight.shape == (512, 768)
    assert layers[1].p == 0.1
    assert sum(p.numel() for p in phi.parameters()) == 512 * 768 + 768 + 768 * 512 + 512


def test_straight_through_logit_scale():
    """Capped value, gradient of the uncapped exp: what the reference gets by overwriting
    the tensor's data after exp (done here the same way, as the oracle)."""
    log_scale = torch.tensor(5.0, requires_grad=True)  # exp = 148.4
    scale = clamped_logit_scale(log_scale, 100.0, "straight_through")
    (3 * scale).backward()
    oracle_param = torch.tensor(5.0, requires_grad=True)
    oracle = oracle_param.exp()
    oracle.data = torch.clamp(oracle.data, max=100)
    (3 * oracle).backward()
    assert scale.item() == oracle.item() == 100.0
    assert torch.allclose(log_scale.grad, oracle_param.grad)
    assert torch.allclose(log_scale.grad, 3 * torch.exp(torch.tensor(5.0)))

    stopped = torch.tensor(5.0, requires_grad=True)
    clamped_logit_scale(stopped, 100.0, "stop_gradient").backward()
    assert stopped.grad.item() == 0.0
    free = torch.tensor(5.0, requires_grad=True)
    assert torch.allclose(clamped_logit_scale(free, 0.0), torch.exp(torch.tensor(5.0)))
    below = torch.tensor(2.0, requires_grad=True)
    clamped_logit_scale(below, 100.0, "straight_through").backward()
    assert torch.allclose(below.grad, torch.exp(torch.tensor(2.0)))


def test_stage2_text_tower_dropout_is_active_while_training(tiny_clip_path):
    """The text tower is frozen but stays in train mode, so its attention dropout (0.05
    in the paper's yaml) acts on the composed query while training, not while testing."""
    from engine.stages import TokenStage
    cfg = load_config(REPO_ROOT / "config" / "Market_finetune.yaml",
                      [f"model.pretrained={tiny_clip_path}", "model.init_from=null",
                       "model.image_size=[32,16]", "model.middle_dim=32",
                       "model.mapping_dropout=0", "model.text_dropout=0.3"])
    model = TokenStage().build_model(cfg)
    assert all(block.attn.dropout == 0.3 for block in model.clip.transformer.resblocks)
    assert all(block.attn.dropout == 0.0 for block in model.clip.visual.transformer.resblocks)
    assert not any(p.requires_grad for n, p in model.clip.named_parameters()
                   if n.startswith("transformer."))
    sketch = torch.randn(4, 64)
    tokens = model.prompt_tokens.expand(4, -1)
    model.train()
    assert not torch.allclose(model.compose(sketch, tokens), model.compose(sketch, tokens))
    model.eval()
    assert torch.equal(model.compose(sketch, tokens), model.compose(sketch, tokens))


def test_augmentation_draws_two_of_six_with_replacement():
    pool = augmentations((32, 16), grayscale_p=0.1)
    assert len(pool) == 6 and pool[3].p == 0.1
    calls = []
    marks = [lambda image, k=k: calls.append(k) or image for k in range(6)]
    torch.manual_seed(0)
    repeated = 0
    for _ in range(200):
        calls.clear()
        RandomChoiceOf(marks, 2, replacement=True)(torch.zeros(1))
        repeated += calls[0] == calls[1]
    assert 15 <= repeated <= 60  # 1 in 6 of 200 draws repeat: about 33
    for _ in range(50):
        calls.clear()
        RandomChoiceOf(marks, 2, replacement=False)(torch.zeros(1))
        assert calls[0] != calls[1]


def test_image_preparation():
    """ImageNet mean/std everywhere; bilinear resize for training, bicubic for testing."""
    from torchvision.transforms import InterpolationMode
    cfg = load_config(REPO_ROOT / "config" / "TriPEDES_pretrain.yaml")
    assert NORMALIZATIONS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    test_steps, train_steps = eval_transform(cfg).transforms, train_transform(cfg).transforms
    assert test_steps[1].interpolation == InterpolationMode.BICUBIC
    assert train_steps[1].interpolation == InterpolationMode.BILINEAR
    for steps in (test_steps, train_steps):
        assert tuple(steps[-1].mean) == (0.485, 0.456, 0.406)
    assert isinstance(train_steps[-2], RandomChoiceOf) and train_steps[-2].replacement
    clip_cfg = load_config(None, ["data.normalize=clip", "data.test_interpolation=bilinear"])
    clip_steps = eval_transform(clip_cfg).transforms
    assert clip_steps[1].interpolation == InterpolationMode.BILINEAR
    assert tuple(clip_steps[-1].mean) == NORMALIZATIONS["clip"][0]


def test_rank_k_over_all_queries():
    """A query left without a match (its only photo is its own traced one) is a miss for
    rank-k over all queries; mAP and mINP average the queries that have a match."""
    similarity = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.1, 0.2, 0.9]])
    query_ids, gallery_ids = [1, 2, 3], [1, 1, 3]
    query_cams, gallery_cams = [0, 9, 5], [0, 1, 2]  # query 0 loses photo 0 (same id, cam)
    every = rank_metrics(similarity, query_ids, gallery_ids, query_cams, gallery_cams,
                         rank_denominator="all")
    valid = rank_metrics(similarity, query_ids, gallery_ids, query_cams, gallery_cams,
                         rank_denominator="valid")
    # Query 0 (id 1) keeps photo 1 at rank 2; query 1 (id 2) has no photo; query 2 rank 1.
    assert valid["R1"] == pytest.approx(50.0) and every["R1"] == pytest.approx(100 / 3)
    assert valid["R5"] == pytest.approx(100.0) and every["R5"] == pytest.approx(200 / 3)
    assert every["mAP"] == valid["mAP"] == pytest.approx(75.0)


def test_pedes_sketch_queries_and_captions(synthetic_root):
    entries = pedes.read_annotations(synthetic_root, "cuhk-pedes", "test")
    per_caption = pedes.eval_set(synthetic_root, "cuhk-pedes", "test")
    per_photo = pedes.eval_set(synthetic_root, "cuhk-pedes", "test", sketch_queries="per_photo")
    captions = sum(len(e["captions"]) for e in entries)
    assert len(per_caption.sketch_paths) == len(per_caption.text_queries) == captions
    assert len(per_photo.sketch_paths) == len(entries)
    # Each sketch query keeps the cam of its own photo, so exactly that photo is left out.
    for path, cam in zip(per_caption.sketch_paths, per_caption.sketch_cams):
        assert per_caption.gallery_paths[cam].name == path.name
    raw = pedes.eval_set(synthetic_root, "cuhk-pedes", "test", clean=False)
    assert raw.text_queries == [c for e in entries for c in e["captions"]]
    assert per_caption.text_queries == [pedes.pre_caption(c) for c in raw.text_queries]


def test_missing_back_translations_become_empty_captions(synthetic_root, tmp_path):
    entries = pedes.read_annotations(synthetic_root, "cuhk-pedes", "train")
    without = [e for e in entries if "captions_bt" not in e]
    assert without and len(without) < len(entries)  # the generator gives some, not all
    kept = pedes.train_samples(synthetic_root, ["cuhk-pedes"])
    quirk = pedes.train_samples(synthetic_root, ["cuhk-pedes"], empty_missing_backtrans=True)
    assert len(kept) == len(quirk)
    empty = [s for s in quirk if s.captions_bt == ("",)]
    assert len(empty) == sum(len(e["captions"]) for e in without)
    assert not any(s.captions_bt == ("",) for s in kept)


def test_pku_reference_indexing(synthetic_root):
    """Item i = photo i with the sketch and label of person i // 2: the first half of the
    people, each with both photos, as many items as sketches."""
    normal = pku_sketch.train_samples(synthetic_root, 1, 0)
    quirk = pku_sketch.train_samples(synthetic_root, 1, 0, reference_indexing=True)
    assert len(quirk) == len(normal)
    people = sorted({s.label for s in normal})
    first_half = people[:len(people) // 2]
    assert sorted({s.label for s in quirk}) == first_half
    by_label = {s.label: s for s in normal}
    for item, sample in enumerate(quirk):
        owner = by_label[first_half[item // 2]]
        assert sample.sketch == owner.sketch and len(sample.photos) == 1
        assert sample.photos[0] == owner.photos[item % 2]
    assert dataclasses.replace(quirk[0], photos=()).captions == by_label[quirk[0].label].captions


def test_stage2_ranks_the_whole_gallery(market_run, synthetic_root, monkeypatch):
    """No camera filter in stage 2 unless test.stage2_drop_same_camera=true."""
    import engine.stages
    from test import evaluate_checkpoint
    seen = []
    original = engine.stages.retrieval

    def spy(*args, **kwargs):
        seen.append(kwargs.get("query_cams"))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.stages, "retrieval", spy)
    base = ["data.dataset=pku-sketch", f"data.root={synthetic_root}", "data.trials=[1]"]
    evaluate_checkpoint(market_run / "checkpoint_best.pth", base, trial=1)
    assert seen and all(cams is None for cams in seen)
    seen.clear()
    evaluate_checkpoint(market_run / "checkpoint_best.pth",
                        base + ["test.stage2_drop_same_camera=true"], trial=1)
    assert seen and all(cams is not None for cams in seen[:3])
