"""Shared fixtures: tiny random-weight CLIP checkpoints in OpenAI's layout."""
from __future__ import annotations

import pytest
import torch

from model.clip import load_clip
from model.random_clip import PRESETS, random_clip_state_dict


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    """A random tiny CLIP (patch 8, width 64, 2+2 layers) saved like OpenAI's state dicts."""
    path = tmp_path_factory.mktemp("clip") / "tiny-random.pt"
    torch.save(random_clip_state_dict(PRESETS["tiny"], seed=0), path)
    return path


@pytest.fixture
def tiny_clip(tiny_clip_path):
    return load_clip(tiny_clip_path, image_size=(32, 32))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """All five synthetic datasets, small (scale 0.2), generated once per test session."""
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("data")
    generate(root, seed=0, scale=0.2)
    return root


def tiny_overrides(clip_path, data_root, output_dir, **extra):
    """KEY=VALUE overrides for a seconds-long CPU run with the tiny CLIP."""
    values = {"device": "cpu", "model.pretrained": str(clip_path), "data.root": str(data_root),
              "output_dir": str(output_dir), "model.image_size": "[32,16]",
              "data.num_workers": 0, "train.batch_size": 8, "train.epochs": 1,
              "train.log_every": 1000, "test.batch_size": 64}
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]
