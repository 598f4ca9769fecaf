"""Checkpoints of the paper's reference code (InteractReID / TBPS-CLIP layout, EasyDict config,
optimizer state) load here: converted keys and settings, the same features as the CLIP they
hold, test.py end to end, stage 2 from a reference stage-1 file, and one-line errors."""
from __future__ import annotations

import argparse
import json
import logging
import re

import pytest
import torch
from easydict import EasyDict
from torch import nn

import datasets as data_registry
import test as test_entry
from engine.stages import AdaptStage, TokenStage
from model.clip import ARCHIVE_METADATA_KEYS, build_clip
from model.random_clip import PRESETS, random_clip_state_dict
from model.tokenizer import tokenize
from tests.conftest import tiny_overrides
from utils.checkpoint import load_checkpoint
from utils.config import REPO_ROOT, load_config
from utils.errors import UserError
from utils.reference_checkpoint import DATASET_NAMES, from_reference

EMBED = PRESETS["tiny"].embed_dim  # = the tiny text width: the reference maps embed -> embed


def openai_state(image_size=(32, 32), seed: int = 1) -> dict:
    """A tiny random CLIP in OpenAI's layout, its position grid fitted to ``image_size``."""
    state = {key: value for key, value in random_clip_state_dict(PRESETS["tiny"], seed).items()
             if key not in ARCHIVE_METADATA_KEYS}
    if tuple(image_size) != (32, 32):
        state = dict(build_clip(state, image_size).state_dict())
    return state


def reference_clip(state: dict) -> dict:
    """OpenAI layout -> the reference's: the text tower one level down, under encode_text."""
    return {key if key.startswith("visual.") or key == "logit_scale" else f"encode_text.{key}":
            value for key, value in state.items()}


class ReferenceMapping(nn.Module):
    """The reference's mapping network layout: block i = Sequential(Linear, Dropout, ReLU)."""

    def __init__(self, n_layer: int, middle_dim: int, dropout: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(*[
            nn.Sequential(nn.Linear(EMBED if i == 0 else middle_dim, middle_dim),
                          nn.Dropout(dropout), nn.ReLU()) for i in range(n_layer)])
        self.fc_out = nn.Linear(middle_dim, EMBED)

    def forward(self, feats):
        return self.fc_out(self.layers(feats))


def reference_config(dataset: str, resolution=(32, 32), **model) -> EasyDict:
    """The nested EasyDict the reference pickles next to its weights (a subset of its keys)."""
    return EasyDict({
        "device": "cuda:0", "misc": {"seed": 0},
        "experiment": {"input_resolution": list(resolution), "text_length": 77, "patch_size": 8,
                       "dropout": 0.05, "ritc": True, "simclr_mlp": [64, 16, 64]},
        "schedule": {"lr": 1.0e-5, "epoch": 40, "betas": [0.9, 0.98], "niter_per_ep": 3},
        "model": {"ckpt_type": "finetune_train", "embed_dim": EMBED, "dropout": 0.2, **model},
        "data": {"dataset": dataset, "trial": 1, "batch_size": 16}})


def to_plain_config(resolution) -> dict:
    """A config that is plain dicts already (as after to_plain)."""
    return {"experiment": {"input_resolution": list(resolution)}}


def optimizer_state(tensors) -> dict:
    """An AdamW state after one step, with the reference's extra 'ratio' per group."""
    params = [nn.Parameter(tensor.detach().clone().float()) for tensor in tensors]
    optimizer = torch.optim.AdamW([{"params": [p], "ratio": 10.0} for p in params], lr=1e-4,
                                  betas=(0.9, 0.98))
    sum((p ** 2).sum() for p in params).backward()
    optimizer.step()
    return optimizer.state_dict()


def save_reference(path, state: dict, config: EasyDict | None):
    """Saved the way the reference does: plain torch.save of model, optimizer and config."""
    obj = {"model": state, "optimizer": optimizer_state(list(state.values())[-2:])}
    if config is not None:
        obj["config"] = config
    torch.save(obj, path)
    return path


def stage2_state(clip_state: dict, mapping: nn.Module) -> dict:
    return {**{f"tbps_clip.{key}": value for key, value in reference_clip(clip_state).items()},
            **{f"mapping.{key}": value for key, value in mapping.state_dict().items()}}


@pytest.fixture(scope="module")
def stage1_file(tmp_path_factory):
    """A reference stage-1 file with an identity classifier (an auxiliary head)."""
    state = reference_clip(openai_state())
    state["classifier.weight"] = torch.randn(5, EMBED)
    state["classifier.bias"] = torch.zeros(5)
    path = tmp_path_factory.mktemp("reference") / "simplified_trained_ViT-B-8.pth"
    return save_reference(path, state, reference_config("Tri-PEDES"))


@pytest.fixture(scope="module")
def stage2_file(tmp_path_factory):
    torch.manual_seed(2)
    mapping = ReferenceMapping(n_layer=2, middle_dim=32)
    path = tmp_path_factory.mktemp("reference") / "checkpoint_best.pth"
    config = reference_config("MaSk1K", mapping_type="MLP", n_layer=2, middle_dim=32)
    return save_reference(path, stage2_state(openai_state(), mapping), config)


def test_stage1_converts_to_the_same_clip(stage1_file, caplog):
    with caplog.at_level(logging.INFO, logger="utils.reference_checkpoint"):
        checkpoint = load_checkpoint(stage1_file, expected_stage="adapt")
    assert "auxiliary heads classifier" in caplog.text
    assert checkpoint["stage"] == "adapt" and checkpoint["source"] == "reference"
    assert checkpoint["epoch"] is None and checkpoint["trial"] is None
    original = openai_state()
    assert set(checkpoint["model"]) == {f"clip.{key}" for key in original}
    for key, value in original.items():
        assert torch.equal(checkpoint["model"][f"clip.{key}"], value), key
    stored = checkpoint["config"]
    assert stored["model"]["image_size"] == [32, 32] and stored["model"]["context_length"] == 77
    assert stored["data"]["dataset"] == "tri-pedes"
    assert stored["loss"]["id"] == 0.0 and stored["loss"]["ss"] == 0.0
    # The stored config is plain: it round-trips through weights-only torch.save/load.
    assert load_config(None, [], base=stored).model.image_size == [32, 32]

    cfg = load_config(None, ["device=cpu"], base=stored)
    model = AdaptStage().model_from_checkpoint(checkpoint, cfg, str(stage1_file)).eval()
    direct = build_clip(original, (32, 32), 77).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = tokenize(["a woman in a red coat", "a man with a black backpack"], 77)
    with torch.no_grad():
        assert torch.allclose(model.clip.encode_image(images), direct.encode_image(images),
                              atol=1e-6)
        assert torch.allclose(model.clip.encode_text(tokens), direct.encode_text(tokens),
                              atol=1e-6)


@pytest.mark.parametrize("mapping_type, n_layer", [("MLP", 1), ("MLP", 2), ("Linear", None)])
def test_stage2_mapping_network_converts(mapping_type, n_layer, tmp_path):
    torch.manual_seed(3)
    if mapping_type == "MLP":
        mapping = ReferenceMapping(n_layer, middle_dim=48)
        config = reference_config("PKUSketch", mapping_type="MLP", n_layer=n_layer,
                                  middle_dim=48)
    else:
        mapping = nn.Linear(EMBED, EMBED)
        config = reference_config("PKUSketch", mapping_type="Linear")
    path = save_reference(tmp_path / "checkpoint_best.pth",
                          stage2_state(openai_state(), mapping), config)
    checkpoint = load_checkpoint(path, expected_stage="token")
    assert checkpoint["stage"] == "token" and checkpoint["trial"] == 1
    stored = checkpoint["config"]
    assert stored["data"]["dataset"] == "pku-sketch"
    assert stored["model"]["mapping_type"] == mapping_type
    if mapping_type == "MLP":
        assert stored["model"]["n_layer"] == n_layer and stored["model"]["middle_dim"] == 48
        assert stored["model"]["mapping_dropout"] == 0.2

    cfg = load_config(None, ["device=cpu"], base=stored)
    model = TokenStage().model_from_checkpoint(checkpoint, cfg, str(path)).eval()
    mapping.eval()
    feats = torch.randn(4, EMBED)
    with torch.no_grad():
        assert torch.allclose(model.img2text(feats), mapping(feats), atol=1e-6)
    for key, value in openai_state().items():
        assert torch.equal(model.clip.state_dict()[key], value), key


def test_variants_of_the_file(tmp_path):
    """module. prefixes, a bare state dict, no config (square grid), a non-square grid."""
    state = {f"module.{key}": value for key, value in reference_clip(openai_state()).items()}
    converted = from_reference({"model": state}, tmp_path / "a.pth")
    assert converted["stage"] == "adapt" and converted["config"]["model"]["image_size"] == [32, 32]
    assert "clip.visual.proj" in converted["model"]
    assert from_reference(reference_clip(openai_state()), tmp_path / "b.pth")["stage"] == "adapt"

    tall = reference_clip(openai_state((32, 16)))
    converted = from_reference({"model": tall, "config": to_plain_config((32, 16))},
                               tmp_path / "c.pth")
    assert converted["config"]["model"]["image_size"] == [32, 16]
    with pytest.raises(UserError, match=r"c\.pth: .*8 patch positions, not a square grid"):
        from_reference({"model": tall}, tmp_path / "c.pth")
    with pytest.raises(UserError, match=r"input_resolution \[32, 32\]"):
        from_reference({"model": tall, "config": to_plain_config((32, 32))}, tmp_path / "c.pth")

    # Not the reference layout: left to the caller's error.
    assert from_reference(openai_state(), tmp_path / "d.pth") is None
    assert from_reference({"weights": 1}, tmp_path / "d.pth") is None
    assert set(DATASET_NAMES.values()) <= set(data_registry.DATASET_NAMES)


def test_test_py_on_a_reference_stage2_file(stage2_file, synthetic_root, tmp_path):
    out = tmp_path / "eval"
    results = test_entry.main(["--checkpoint", str(stage2_file), "data.dataset=mask1k",
                               f"data.root={synthetic_root}", "device=cpu", f"output_dir={out}",
                               "model.image_size=[32,16]", "data.num_workers=0",
                               "test.batch_size=64"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "mask1k"
    assert set(saved["tasks"]) >= {"interactive", "sketch_only", "text_only"}
    assert saved["tasks"]["interactive"] == results["tasks"]["interactive"]


def test_test_py_on_a_reference_stage1_file(stage1_file, synthetic_root, tmp_path):
    out = tmp_path / "eval"
    test_entry.main(["--checkpoint", str(stage1_file), "data.dataset=cuhk-pedes",
                     f"data.root={synthetic_root}", "device=cpu", f"output_dir={out}",
                     "data.num_workers=0", "test.batch_size=64"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "cuhk-pedes"
    assert set(saved["tasks"]) == {"text_to_image", "sketch_to_image"}


def test_stage2_starts_from_a_reference_stage1_file(stage1_file, tiny_clip_path, synthetic_root,
                                                    tmp_path):
    cfg = load_config(REPO_ROOT / "config" / "Market_finetune.yaml", tiny_overrides(
        tiny_clip_path, synthetic_root, tmp_path,
        **{"model.init_from": str(stage1_file), "model.middle_dim": 32}))
    model = TokenStage().build_model(cfg)
    original = openai_state()
    for key in ("token_embedding.weight", "text_projection", "visual.proj", "logit_scale",
                "transformer.resblocks.1.mlp.c_fc.weight"):
        assert torch.equal(model.clip.state_dict()[key], original[key]), key
    # Resampled from the stored 4x4 grid to the run's 32x16 input.
    assert model.clip.visual.positional_embedding.shape[0] == 4 * 2 + 1


def test_unknown_keys_are_named(tmp_path):
    state = reference_clip(openai_state())
    state["sketch_encoder.conv1.weight"] = torch.zeros(1)
    path = save_reference(tmp_path / "odd.pth", state, reference_config("Tri-PEDES"))
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "sketch_encoder.conv1.weight" in message
    assert "stage 1: visual.*, encode_text.*" in message and "\n" not in message


def test_stage_mismatch_is_one_line(stage1_file, stage2_file, tiny_clip_path, synthetic_root,
                                    tmp_path):
    with pytest.raises(UserError, match=re.escape(
            "is a stage 1 (the reference's knowledge_adaptation.py) checkpoint; expected a "
            "stage 2 (train_token.py) checkpoint")):
        load_checkpoint(stage1_file, expected_stage="token")
    cfg = load_config(REPO_ROOT / "config" / "Market_finetune.yaml", tiny_overrides(
        tiny_clip_path, synthetic_root, tmp_path, **{"model.init_from": str(stage2_file)}))
    with pytest.raises(UserError, match=re.escape(
            "is a stage 2 (the reference's pseudo_token_learning.py) checkpoint; expected a "
            "stage 1 (train_adapt.py) checkpoint")):
        TokenStage().build_model(cfg)


def test_other_pickled_classes_are_refused(tmp_path, capsys):
    path = tmp_path / "namespace.pth"
    torch.save({"model": reference_clip(openai_state()),
                "config": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"cannot read checkpoint {path}: ")
    assert "argparse.Namespace" in message and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        test_entry.main(["--checkpoint", str(path), "device=cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argparse.Namespace" in err and "Traceback" not in err
