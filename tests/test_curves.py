"""Training curves: output_dir/train.jsonl, optional TensorBoard events, curves.png."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from PIL import Image

import train_adapt
from engine import report, training_log
from tests.conftest import tiny_overrides
from utils.config import load_config
from utils.errors import ConfigError


def _train(tiny_clip_path, synthetic_root, out, **extra):
    values = {"data.dataset": "rstpreid", "log.every_steps": 2, **extra}
    return train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                             *tiny_overrides(tiny_clip_path, synthetic_root, out, **values)])


def test_train_jsonl_and_curves(tiny_clip_path, synthetic_root, tmp_path):
    out = tmp_path / "run"
    _train(tiny_clip_path, synthetic_root, out)
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    steps = torch.load(out / "checkpoint_last.pth", weights_only=True)["step"]  # one epoch
    assert [r["step"] for r in records] == list(range(2, steps + 1, 2)) and len(records) >= 2
    first = records[0]
    assert set(first) == {"step", "epoch", "loss", "losses", "lr", "logit_scale",
                          "samples_per_s"}
    assert set(first["losses"]) == {"nitc_loss", "nisc_loss", "ritc_loss"}
    assert first["loss"] == pytest.approx(sum(first["losses"].values()), rel=1e-5)
    assert set(first["lr"]) == {"model", "model/no_decay"}
    assert first["epoch"] == pytest.approx(2 / steps, abs=1e-4)
    assert first["samples_per_s"] > 0 and first["logit_scale"] > 1
    picture = report.main([str(out)])
    with Image.open(picture) as image:
        assert image.size == (640, 4 * 300)  # loss, learning rate, test R1, test mAP


def test_resume_drops_lines_after_the_saved_step(tmp_path):
    path = tmp_path / training_log.FILE
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (2, 4, 6, 8)))
    training_log.keep_until(path, 5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]


def test_tensorboard_events(tiny_clip_path, synthetic_root, tmp_path, monkeypatch):
    """The scalars go to a SummaryWriter in output_dir/tensorboard (a stand-in writer here:
    the tensorboard package is optional)."""
    written = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            written.append(("dir", log_dir))

        def add_scalar(self, name, value, step):
            written.append((name, step))

        def close(self):
            written.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=Writer))
    out = tmp_path / "run"
    _train(tiny_clip_path, synthetic_root, out, **{"log.tensorboard": "true"})
    names = {name for name, _ in written}
    assert ("dir", str(out / "tensorboard")) in written and ("closed", None) in written
    assert {"loss/total", "loss/nitc_loss", "lr/model", "logit_scale", "samples_per_s"} <= names
    assert "test/rstpreid/text_to_image/R1" in names or "test/text_to_image/R1" in names


def test_tensorboard_missing_is_one_line(tiny_clip_path, synthetic_root, tmp_path, monkeypatch,
                                         capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        _train(tiny_clip_path, synthetic_root, out, **{"log.tensorboard": "true"})
    assert exit_info.value.code == 2
    assert "log.tensorboard=true needs the tensorboard package" in capsys.readouterr().err
    assert not out.exists()


def test_renamed_key():
    assert load_config(None, [], base={"train": {"log_every": 7}}).log.every_steps == 7
    with pytest.raises(ConfigError, match="'train.log_every' is now 'log.every_steps'"):
        load_config(None, ["train.log_every=3"])


def test_report_refuses_a_folder_without_logs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])
    assert "holds neither train.jsonl nor metrics.jsonl" in capsys.readouterr().err
