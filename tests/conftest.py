"""Shared fixtures: tiny random-weight CLIP checkpoints in OpenAI's layout, synthetic data,
one-epoch runs of both stages, and a gallery of photos to search."""
from __future__ import annotations

import logging
import shutil

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
              "data.num_workers": 0, "train.batch_size": 8, "train.global_batch": 0,
              "train.epochs": 1,
              "log.every_steps": 1000, "test.batch_size": 64}
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def run_token(tiny_clip_path, synthetic_root, out, stage1_run, config="Market_finetune", **extra):
    """Stage 2 for one epoch with the tiny CLIP, from ``stage1_run``'s best checkpoint."""
    import train_token
    values = {"model.init_from": str(stage1_run / "checkpoint_best.pth"), "model.middle_dim": 32,
              "train.warmup_epochs": 0.5, **extra}
    return train_token.main(["--config", f"config/{config}.yaml",
                             *tiny_overrides(tiny_clip_path, synthetic_root, out, **values)])


@pytest.fixture(scope="session")
def stage1_run(tiny_clip_path, synthetic_root, tmp_path_factory):
    """A one-epoch stage-1 run folder (RSTPReid, tiny CLIP)."""
    import train_adapt
    out = tmp_path_factory.mktemp("stage1")
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                      *tiny_overrides(tiny_clip_path, synthetic_root, out,
                                      **{"data.dataset": "rstpreid"})])
    return out


@pytest.fixture(scope="session")
def market_run(tiny_clip_path, synthetic_root, stage1_run, tmp_path_factory):
    """A one-epoch stage-2 run folder (Market-Sketch-1K) from ``stage1_run``."""
    out = tmp_path_factory.mktemp("market")
    run_token(tiny_clip_path, synthetic_root, out, stage1_run)
    return out


# ----------------------------------------------------------------- searching a gallery
@pytest.fixture
def gallery(synthetic_root, tmp_path):
    """A folder of photos to search: the synthetic Market-Sketch-1K query photos (35)."""
    folder = tmp_path / "gallery"
    shutil.copytree(synthetic_root / "Market-Sketch-1K" / "photo" / "query", folder / "cam")
    return folder


@pytest.fixture
def sketch(synthetic_root):
    return sorted((synthetic_root / "Market-Sketch-1K" / "sketch" / "A" / "query").iterdir())[0]


@pytest.fixture
def embedded(monkeypatch):
    """Records how many image files a PyTorch model embeds (one entry per call)."""
    import engine.models
    counts = []
    original = engine.models.encode_images

    def counting(encode, paths, *args, **kwargs):
        counts.append(len(paths))
        return original(encode, paths, *args, **kwargs)

    monkeypatch.setattr(engine.models, "encode_images", counting)
    return counts


@pytest.fixture
def restore_logging():
    """An entry point's ``setup_logging`` adds a handler on the (captured) standard output
    and sets levels; put them back afterwards, so that later tests do not log to a closed
    stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def served_once(monkeypatch):
    """``app.main`` with a server that stops as soon as it serves: the dict records the
    retriever it was given (``"retriever"``) and whether it was closed (``"closed"``)."""
    import app
    served = {}

    class StoppedAtOnce:
        url = "http://127.0.0.1:1234/"

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            served["closed"] = True

    def make_server(retriever, host, port, verbose):
        served["retriever"] = retriever
        return StoppedAtOnce()

    monkeypatch.setattr(app, "make_server", make_server)
    return served
