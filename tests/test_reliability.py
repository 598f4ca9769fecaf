"""Reliability: atomic checkpoints under kill -9, preemption, non-finite losses, and one clear
line (exit 2, no traceback, nothing on disk changed) for every kind of bad input."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import test as test_entry
import train_adapt
import train_token
from tests.conftest import tiny_overrides
from utils.checkpoint import save_atomic
from utils.config import REPO_ROOT


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path):
    """kill -9 at random moments of a stream of saves: the file is always a whole checkpoint."""
    path = tmp_path / "checkpoint_last.pth"
    save_atomic({"version": 0, "weights": torch.zeros(1)}, path)
    script = (f"import torch, sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
              "from utils.checkpoint import save_atomic\n"
              "big = torch.randn(4_000_000)\n"
              "for version in range(1, 10**6):\n"
              f"    save_atomic({{'version': version, 'weights': big}}, {str(path)!r})\n")
    for delay in (0.3, 0.45, 0.6, 0.8):
        process = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoint = torch.load(path, weights_only=True)  # never half-written
        assert checkpoint["version"] >= 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [path.name]


def _start(overrides: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train_adapt.py", "--config",
                             "config/TriPEDES_pretrain.yaml", *overrides], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _final_weights(folder: Path) -> dict:
    return torch.load(folder / "checkpoint_last.pth", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("workers, save_every, accum", [(2, 3, 1), (0, 2, 2)])
def test_mid_epoch_resume_with_workers_is_exact(tiny_clip_path, synthetic_root, tmp_path,
                                                workers, save_every, accum):
    """kill -9 after a mid-epoch save (data loading in worker processes; or accumulated
    micro-batches, with the text tower's dropout on), resume: the same weights as an
    unbroken run (max abs difference 0)."""
    extra = {"data.dataset": "rstpreid", "train.epochs": 2, "train.batch_size": 4 // accum,
             "train.accum_steps": accum, "data.num_workers": workers,
             "train.save_every_steps": save_every, "model.text_dropout": 0.1}
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                      *tiny_overrides(tiny_clip_path, synthetic_root, tmp_path / "whole",
                                      **extra)])
    broken = tmp_path / "broken"
    process = _start(tiny_overrides(tiny_clip_path, synthetic_root, broken, **extra))
    _wait_for(broken / "checkpoint_last.pth", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(broken / "checkpoint_last.pth", weights_only=True)
    assert killed_at["epoch"] == 0 and killed_at["step"] > 0  # killed in the middle of epoch 1
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                      *tiny_overrides(tiny_clip_path, synthetic_root, broken, **extra,
                                      **{"train.resume": "true"})])
    whole, resumed = _final_weights(tmp_path / "whole"), _final_weights(broken)
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) == 0


def test_sigterm_saves_at_the_current_step_and_exits(tiny_clip_path, synthetic_root, tmp_path):
    out = tmp_path / "run"
    extra = {"data.dataset": "rstpreid", "train.epochs": 50, "train.batch_size": 2,
             "train.save_every_steps": 2}
    process = _start(tiny_overrides(tiny_clip_path, synthetic_root, out, **extra))
    _wait_for(out / "checkpoint_last.pth", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    checkpoint = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert checkpoint["step"] > 0 and checkpoint["epoch"] < 50


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_clip_path,
                                                                  synthetic_root, tmp_path,
                                                                  capsys):
    out = tmp_path / "run"
    extra = {"data.dataset": "rstpreid"}
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                      *tiny_overrides(tiny_clip_path, synthetic_root, out, **extra)])
    good = (out / "checkpoint_last.pth").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *tiny_overrides(
            tiny_clip_path, synthetic_root, out, **extra,
            **{"train.resume": "true", "train.epochs": 3, "train.lr": "1e30",
               "train.lr_start": "1e30", "train.lr_end": "1e30"})])
    assert exit_info.value.code == 2
    assert "the loss is not finite" in capsys.readouterr().err
    assert (out / "checkpoint_last.pth").read_bytes() == good


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def pedes_copy(synthetic_root, tmp_path):
    """A private copy of the synthetic RSTPReid set that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "RSTPReid", root / "RSTPReid")
    return root


def _damage(root: Path, problem: str) -> str:
    """Break the dataset copy; return the message the error must contain."""
    folder = root / "RSTPReid"  # the dataset's own annotation file, data_captions.json
    annotations = folder / "data_captions.json"
    entries = json.loads(annotations.read_text())
    first = folder / "imgs" / next(e for e in entries if e["split"] == "train")["img_path"]
    if problem == "malformed-json":
        annotations.write_text('[{"id": 1, "img_path": "a.jpg",\n "captions": [}]')
        return "data_captions.json: malformed JSON at line 2"
    if problem == "missing-image":
        first.unlink()
        return "points at a missing photo: " + str(first)
    if problem == "corrupt-image":
        first.write_bytes(b"\xff\xd8 garbage")
        return "corrupt or unreadable image: " + str(first)
    if problem == "empty-split":
        annotations.write_text(json.dumps([e for e in entries if e["split"] != "test"]))
        return "data_captions.json: the test split is empty"
    if problem == "missing-folder":
        shutil.rmtree(folder)
        return "rstpreid folder not found: " + str(folder)
    raise ValueError(problem)


BAD_OVERRIDES = [
    (["train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["train.epochs=many"], "'train.epochs' must be int"),
    (["data.dataset=market"], "data.dataset='market' is not one of: tri-pedes, cuhk-pedes"),
    (["data.root=/nonexistent/data"], "data.root not found: /nonexistent/data"),
    (["model.pretrained=/nonexistent/ViT-B-16.pt"],
     "CLIP checkpoint not found: /nonexistent/ViT-B-16.pt"),
    (["train.select_metric=R2"], "train.select_metric='R2' is not one of R1, R5, R10"),
]


@pytest.mark.parametrize("overrides, message", BAD_OVERRIDES)
def test_train_bad_values(tiny_clip_path, synthetic_root, tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                          *tiny_overrides(tiny_clip_path, synthetic_root, out,
                                          **{"data.dataset": "rstpreid"}), *overrides])
    _assert_one_line(exit_info, capsys, message)
    assert not out.exists()


@pytest.mark.parametrize("problem", ["malformed-json", "missing-image", "corrupt-image",
                                     "empty-split", "missing-folder"])
def test_train_bad_data_leaves_an_existing_run_untouched(tiny_clip_path, synthetic_root,
                                                         pedes_copy, tmp_path, capsys, problem):
    out = tmp_path / "run"
    extra = {"data.dataset": "rstpreid"}
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                      *tiny_overrides(tiny_clip_path, pedes_copy, out, **extra)])
    before = snapshot(out)
    message = _damage(pedes_copy, problem)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *tiny_overrides(
            tiny_clip_path, pedes_copy, out, **extra, **{"train.resume": "true",
                                                          "train.epochs": 2})])
    _assert_one_line(exit_info, capsys, message)
    after = snapshot(out)
    if problem == "corrupt-image":
        # Found only when the image is loaded, during training: the log has grown, the
        # checkpoints and everything else are as they were.
        before.pop("log.txt"), after.pop("log.txt")
    assert after == before


def test_skip_bad_images_skips_and_counts(tiny_clip_path, pedes_copy, tmp_path, capsys):
    _damage(pedes_copy, "corrupt-image")
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *tiny_overrides(
        tiny_clip_path, pedes_copy, tmp_path / "run", **{"data.dataset": "rstpreid",
                                                         "data.skip_bad_images": "true"})])
    assert "training set: skipped 1 unreadable image(s)" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoint_best.pth").is_file()


def test_bad_config_files(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1\n")
    for config, message in ((tmp_path / "missing.yaml", "config file not found"),
                            (broken, "broken.yaml:3: YAML syntax error")):
        with pytest.raises(SystemExit) as exit_info:
            train_adapt.main(["--config", str(config)])
        _assert_one_line(exit_info, capsys, message)


def test_garbage_clip_checkpoint(synthetic_root, tmp_path, capsys):
    garbage = tmp_path / "ViT-B-16.pt"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(SystemExit) as exit_info:
        train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *tiny_overrides(
            garbage, synthetic_root, tmp_path / "run", **{"data.dataset": "rstpreid"})])
    _assert_one_line(exit_info, capsys, f"cannot read CLIP checkpoint {garbage}")


def test_wrong_stage_and_missing_checkpoints(stage1_run, market_run, tiny_clip_path,
                                             synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_token.main(["--config", "config/Market_finetune.yaml", *tiny_overrides(
            tiny_clip_path, synthetic_root, tmp_path / "run",
            **{"model.init_from": str(market_run / "checkpoint_best.pth")})])
    _assert_one_line(exit_info, capsys, "is a stage 2 (train_token.py) checkpoint; expected a "
                                        "stage 1 (train_adapt.py) checkpoint")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        test_entry.main(["--checkpoint", str(empty)])
    _assert_one_line(exit_info, capsys, f"{empty} holds no checkpoint_best.pth")
    with pytest.raises(SystemExit) as exit_info:
        test_entry.main(["--checkpoint", str(tmp_path / "missing.pth")])
    _assert_one_line(exit_info, capsys, "checkpoint not found")
    # A file that is neither a checkpoint nor CLIP weights (CLIP weights are run zero-shot).
    stranger = tmp_path / "stranger.pt"
    torch.save({"weights": torch.zeros(3)}, stranger)
    with pytest.raises(SystemExit) as exit_info:
        test_entry.main(["--checkpoint", str(stranger)])
    _assert_one_line(exit_info, capsys, "is not a checkpoint of this project")


def test_debug_shows_the_traceback(capsys):
    from utils.errors import ConfigError
    with pytest.raises(ConfigError):
        train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", "train.lrr=1", "--debug"])


def _assert_one_line(exit_info, capsys, message: str) -> None:
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    # One error (a missing dataset also shows the expected layout below it).
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1
