"""Truncated images (``data.load_truncated_images``): loaded as far as their data go, as the
paper's code lets PIL do, or refused; named in the log, listed by ``datasets.check``."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import datasets as data_registry
from datasets import base, check
from datasets.base import (
    EvalSet,
    ImageListDataset,
    PairDataset,
    TrainSample,
    check_image,
    image_problem,
    read_image,
)
from engine.evaluation import encode_images
from engine.stages import stage_for
from utils.config import load_config
from utils.errors import DatasetError

SIZE = (48, 64)  # width, height


def _noise(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), np.uint8)
    return Image.fromarray(pixels)


def _intact(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(seed).save(path)
    return path


def _truncated(path: Path, seed: int = 1) -> Path:
    """A real image file cut after half of its bytes."""
    _intact(path, seed)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.fixture(autouse=True)
def _fresh_log_memory():
    """Each test sees the once-per-path log afresh."""
    base._reported_truncated.clear()
    yield
    base._reported_truncated.clear()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # PIL's global flag never left on


@pytest.fixture
def images(tmp_path):
    return {"intact": _intact(tmp_path / "intact.jpg"),
            "jpeg": _truncated(tmp_path / "cut.jpg"),
            "png": _truncated(tmp_path / "cut.png"),
            "garbage": _garbage(tmp_path / "garbage.jpg")}


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8 garbage, not a photo")
    return path


# ----------------------------------------------------------------------------
# read_image and the readability check
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_image_loads_at_full_size_and_is_logged_once(images, caplog, kind):
    with caplog.at_level(logging.WARNING, logger="datasets.base"):
        image = read_image(images[kind])
        again = read_image(images[kind], load_truncated_images=True)
    assert image.size == again.size == SIZE and image.mode == "RGB"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(images[kind]) in warnings[0].getMessage()
    assert "truncated image" in warnings[0].getMessage()
    # The rows that were there decode as in the whole file.
    whole = read_image(_intact(images[kind].with_name(f"whole{images[kind].suffix}"), seed=1))
    top = np.asarray(image)[:8].astype(int) - np.asarray(whole)[:8]
    assert np.abs(top).max() <= 1


def test_truncated_image_is_unreadable_without_the_key(images, caplog):
    with caplog.at_level(logging.WARNING, logger="datasets.base"):
        with pytest.raises(DatasetError) as error:
            read_image(images["jpeg"], load_truncated_images=False)
    message = str(error.value)
    assert message.startswith(f"corrupt or unreadable image: {images['jpeg']}")
    assert "truncated" in message and "data.load_truncated_images=true" in message
    assert "data.skip_bad_images=true" in message and "\n" not in message
    assert not caplog.records


def test_intact_and_unreadable_images_are_as_before(images, caplog):
    with caplog.at_level(logging.WARNING, logger="datasets.base"):
        assert read_image(images["intact"]).size == SIZE
        with pytest.raises(DatasetError, match="corrupt or unreadable image: .*garbage.jpg"):
            read_image(images["garbage"])
        with pytest.raises(DatasetError, match="image not found"):
            read_image(images["intact"].with_name("absent.jpg"))
    assert not caplog.records
    assert check_image(images["intact"]) == (None, False)
    assert check_image(images["garbage"]).problem and not check_image(images["garbage"]).truncated
    found = check_image(images["jpeg"])
    assert found.truncated and "truncated" in found.problem
    assert image_problem(images["jpeg"]) is None
    assert "truncated" in image_problem(images["jpeg"], load_truncated_images=False)


def test_threads_never_borrow_each_others_setting(images):
    """Lenient and strict reads of the same truncated file at once, in many threads: the
    strict ones always fail, the lenient ones always load."""
    outcomes, lock = [], threading.Lock()

    def read(lenient: bool):
        for _ in range(15):
            try:
                read_image(images["jpeg"], load_truncated_images=lenient)
                result = "loaded"
            except DatasetError:
                result = "refused"
            read_image(images["intact"], load_truncated_images=lenient)
            with lock:
                outcomes.append((lenient, result))

    threads = [threading.Thread(target=read, args=(i % 2 == 0,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 8 * 15
    assert {result for lenient, result in outcomes if lenient} == {"loaded"}
    assert {result for lenient, result in outcomes if not lenient} == {"refused"}


def test_scans_count_truncated_images(images, caplog):
    paths = list(images.values())
    with caplog.at_level(logging.WARNING, logger="datasets.base"):
        scan = base.scan_images(paths + paths)
    assert scan.truncated == {images["jpeg"], images["png"]}
    assert scan.unreadable == {images["garbage"]}
    assert caplog.text.count("truncated image") == 2
    strict = base.scan_images(paths, load_truncated_images=False)
    assert strict.truncated == set()
    assert strict.unreadable == {images["jpeg"], images["png"], images["garbage"]}


# ----------------------------------------------------------------------------
# The setting reaches training and evaluation
# ----------------------------------------------------------------------------

def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((8, 16)), dtype=np.float32)).permute(2, 0, 1)


def test_pair_dataset_and_image_list_follow_the_setting(images):
    sample = TrainSample(0, (images["jpeg"],), images["png"], ("a man",))
    item = PairDataset([sample], _to_tensor, _to_tensor)[0]  # default: the paper's choice
    assert item["photo"].shape == item["sketch"].shape == (3, 16, 8)
    with pytest.raises(DatasetError, match="cut.jpg"):
        PairDataset([sample], _to_tensor, _to_tensor, load_truncated_images=False)[0]
    listed = ImageListDataset([images["intact"], images["jpeg"]], _to_tensor)
    assert listed[1][0].shape == (3, 16, 8)
    with pytest.raises(DatasetError, match="cut.jpg"):
        ImageListDataset([images["jpeg"]], _to_tensor, load_truncated_images=False)[0]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_encode_images_follows_the_setting(images, num_workers):
    paths = [images["intact"], images["jpeg"], images["png"]]
    def encode(batch):  # [B, 3, 16, 8] -> [B, 2]
        return batch.mean(dim=(2, 3))[:, :2]
    feats = encode_images(encode, paths, _to_tensor, torch.device("cpu"), batch_size=2,
                          num_workers=num_workers)
    assert feats.shape == (3, 2) and torch.isfinite(feats).all()
    with pytest.raises(DatasetError, match="cut.jpg"):
        encode_images(encode, paths, _to_tensor, torch.device("cpu"), batch_size=2,
                      load_truncated_images=False)


def _cfg(*overrides):
    return load_config(None, ["data.dataset=mask1k", "model.image_size=[32,16]", *overrides])


def test_training_set_of_a_stage_follows_the_key(images, monkeypatch, caplog):
    samples = [TrainSample(0, (images["jpeg"], images["intact"]), images["intact"]),
               TrainSample(1, (images["intact"],), images["png"])]
    monkeypatch.setattr(data_registry, "train_samples", lambda cfg, trial=None: list(samples))
    stage = stage_for("token")
    loaded = stage.train_dataset(_cfg())
    assert loaded.load_truncated_images and loaded[1]["sketch"].shape[-2:] == (32, 16)
    refused = stage.train_dataset(_cfg("data.load_truncated_images=false"))
    with pytest.raises(DatasetError, match="cut.png"):
        refused[1]
    # The skip_bad_images scan counts them, or skips them as unreadable without the key.
    with caplog.at_level(logging.WARNING):
        kept = stage.train_dataset(_cfg("data.skip_bad_images=true"))
    assert [s.photos for s in kept.samples] == [s.photos for s in samples]
    assert "training set: 2 truncated image(s) load as far as their data go" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        strict = stage.train_dataset(_cfg("data.skip_bad_images=true",
                                          "data.load_truncated_images=false"))
    assert [s.photos for s in strict.samples] == [(images["intact"],)]
    assert "training set: skipped 2 unreadable image(s)" in caplog.text


def test_evaluation_sets_of_a_stage_follow_the_key(images, monkeypatch, caplog):
    def eval_sets(cfg, split, trial=None):
        return [EvalSet("toy", [images["intact"], images["jpeg"]], [1, 2],
                        sketch_paths=[images["png"], images["intact"]], sketch_ids=[2, 1],
                        feedback=["a man", "a woman"])]
    monkeypatch.setattr(data_registry, "eval_sets", eval_sets)
    with caplog.at_level(logging.WARNING):
        (kept,) = stage_for("token").eval_sets(_cfg("data.skip_bad_images=true"), "test")
    assert kept.gallery_paths == [images["intact"], images["jpeg"]] and kept.sketch_ids == [2, 1]
    assert "toy: 2 truncated image(s)" in caplog.text
    (strict,) = stage_for("token").eval_sets(
        _cfg("data.skip_bad_images=true", "data.load_truncated_images=false"), "test")
    assert strict.gallery_paths == [images["intact"]] and strict.sketch_ids == [1]
    assert strict.feedback == ["a woman"]


# ----------------------------------------------------------------------------
# datasets.check: a warning with the key, a problem without
# ----------------------------------------------------------------------------

@pytest.fixture
def pedes(tmp_path):
    """A two-person CUHK-PEDES in TBPS-CLIP's files, one training photo truncated."""
    folder = tmp_path / "CUHK-PEDES"
    entries = {"train": [{"id": 1, "file_path": "train/1.jpg", "captions": ["a man"]},
                         {"id": 2, "file_path": "train/2.jpg", "captions": ["a woman"]}],
               "test": [{"id": 3, "file_path": "test/3.jpg", "captions": ["a child"]}]}
    for split, items in entries.items():
        (folder / f"{split}_reid.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}_reid.json").write_text(json.dumps(items))
        for number, entry in enumerate(items):
            _intact(folder / "imgs" / entry["file_path"], number)
            _intact(folder / "imgs-sketch" / entry["file_path"], 10 + number)
    _truncated(folder / "imgs" / "train" / "2.jpg")
    return tmp_path


def test_check_lists_truncated_images_as_warnings(pedes, tmp_path, capsys):
    argv = [f"data.root={pedes}", "data.dataset=cuhk-pedes", "--workers", "1"]
    assert check.main([*argv, "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "warnings: 1" in out and "truncated images, loaded as far as their data go" in out
    assert "CUHK-PEDES/imgs/train/2.jpg (CUHK-PEDES train photo): OSError" in out
    assert "truncated (loaded as far as their data go): 1" in out
    assert "no problems: training would work" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["exit_status"] == 0 and not any(report["problems"].values())
    assert len(report["warnings"]["truncated"]) == 1

    assert check.main([*argv, "data.load_truncated_images=false",
                       "--json", str(tmp_path / "s.json")]) == 1
    out = capsys.readouterr().out
    assert "unreadable images (1):" in out and "CUHK-PEDES/imgs/train/2.jpg" in out
    assert "warnings:" not in out and "training would fail" in out
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["problems"]["unreadable"]) == 1 and not report["warnings"]["truncated"]
