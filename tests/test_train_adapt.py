"""Stage 1 end to end on synthetic data with a tiny random CLIP: training, run folder,
test.py, resume, multi-process training."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import test as test_entry
import train_adapt
from datasets.captions import pre_caption
from tests.conftest import tiny_overrides
from utils.config import REPO_ROOT


def run_train(clip_path, data_root, output_dir, **extra):
    overrides = tiny_overrides(clip_path, data_root, output_dir, **extra)
    return train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *overrides])


def test_train_writes_the_run_folder_and_test_reproduces_it(tiny_clip_path, synthetic_root,
                                                            tmp_path):
    out = tmp_path / "run"
    record = run_train(tiny_clip_path, synthetic_root, out, **{"data.dataset": "cuhk-pedes"})
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "checkpoint_last.pth",
                 "checkpoint_best.pth"):
        assert (out / name).is_file(), name
    checkpoint = torch.load(out / "checkpoint_best.pth", weights_only=True)
    assert checkpoint["stage"] == "adapt" and checkpoint["epoch"] == 1
    assert checkpoint["config"]["data"]["dataset"] == "cuhk-pedes"
    assert any(key.startswith("clip.visual.") for key in checkpoint["model"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # The shipped stage-1 config picks on the test split, as the paper's code does.
    assert len(lines) == 1 and json.loads(lines[0])["select"]["split"] == "test"

    results = test_entry.main(["--checkpoint", str(out / "checkpoint_best.pth")])
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "cuhk-pedes"
    assert set(saved["tasks"]) == {"text_to_image", "sketch_to_image"}
    for metrics in saved["tasks"].values():
        assert set(metrics) == {"R1", "R5", "R10", "mAP", "mINP"}
        assert all(0 <= value <= 100 for value in metrics.values())
    # test.py rebuilds the same model: the same numbers as the evaluation during training.
    assert results["tasks"] == record["test"]["tasks"]
    # queries.json: every caption query, cleaned as it was encoded, with its photo and id.
    from datasets import pedes
    entries = pedes.read_annotations(synthetic_root, "cuhk-pedes", "test")
    asked = json.loads((out / "queries.json").read_text())["queries"]
    expected = [(str(synthetic_root / "CUHK-PEDES" / "imgs" / e["file_path"]), e["id"],
                 pre_caption(caption)) for e in entries for caption in e["captions"]]
    assert [(q["image"], q["person_id"], q["text"]) for q in asked] == expected
    assert {q["task"] for q in asked} == {"text_to_image"}
    assert all(q["text"] == q["text"].lower() and "." not in q["text"] for q in asked)


def test_tri_pedes_reports_every_test_set(tiny_clip_path, synthetic_root, tmp_path):
    out = tmp_path / "tri"
    run_train(tiny_clip_path, synthetic_root, out, **{"train.select_on": "test"})
    results = test_entry.main(["--checkpoint", str(out), "output_dir=" + str(tmp_path / "eval")])
    assert set(results["datasets"]) == {"cuhk-pedes", "icfg-pedes", "rstpreid"}
    assert (tmp_path / "eval" / "results.json").is_file()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["select"]["split"] == "test" and "val" not in record


def test_a_new_run_never_overwrites_an_old_one(tiny_clip_path, synthetic_root, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_clip_path, synthetic_root, out, **{"data.dataset": "rstpreid"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        run_train(tiny_clip_path, synthetic_root, out, **{"data.dataset": "rstpreid"})
    assert exit_info.value.code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _encodings(path: Path) -> dict:
    """Image and text features of fixed inputs under the model of a checkpoint."""
    from engine.stages import AdaptStage
    from model.tokenizer import tokenize
    from utils.config import load_config
    checkpoint = torch.load(path, weights_only=True)
    model = AdaptStage().model_from_checkpoint(checkpoint, load_config(
        None, base=checkpoint["config"]), str(path)).eval()
    images = torch.randn(4, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return {"image": model.encode_image(images),
                "text": model.encode_text(tokenize(["a red coat", "blue shorts and a bag"]))}


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_resume_after_sigkill_is_exact(tiny_clip_path, synthetic_root, tmp_path):
    """Kill -9 after the first epoch, resume: the same final weights as an unbroken run."""
    extra = {"data.dataset": "rstpreid", "train.epochs": 2, "train.batch_size": 4}
    run_train(tiny_clip_path, synthetic_root, tmp_path / "whole", **extra)

    broken = tmp_path / "broken"
    overrides = tiny_overrides(tiny_clip_path, synthetic_root, broken, **extra)
    process = subprocess.Popen([sys.executable, "train_adapt.py", "--config",
                                "config/TriPEDES_pretrain.yaml", *overrides], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (broken / "checkpoint_last.pth").exists() and process.poll() is None:
        assert time.time() < deadline, "the first epoch did not finish in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_train(tiny_clip_path, synthetic_root, broken, **extra, **{"train.resume": "true"})
    whole, resumed = _weights(tmp_path / "whole" / "checkpoint_last.pth"), \
        _weights(broken / "checkpoint_last.pth")
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_global_batch(tiny_clip_path, synthetic_root,
                                                               tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 4 each == 1 process with batch 8; and
    2 processes x 2 accumulated micro-batches of 2 (gradients averaged by the feature-
    caching step, not by DDP) == the same."""
    # Dropout off: processes draw their own masks, so runs would differ by design.
    common = {"data.dataset": "tri-pedes", "train.select_on": "test", "model.text_dropout": 0}
    run_train(tiny_clip_path, synthetic_root, tmp_path / "one", **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, extra in (("two", {"train.batch_size": 4}),
                        ("accum", {"train.batch_size": 2, "train.accum_steps": 2})):
        overrides = tiny_overrides(tiny_clip_path, synthetic_root, tmp_path / name, **common,
                                   **extra)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "train_adapt.py", "--config",
                        "config/TriPEDES_pretrain.yaml", *overrides], cwd=REPO_ROOT, env=env,
                       check=True, capture_output=True, timeout=300)
    # Compare what the models compute: Adam turns float noise in gradients that are zero in
    # exact arithmetic (e.g. key biases) into lr-sized steps of weights that change nothing.
    # Exact gradient equality is checked in tests/test_losses.py and tests/test_accumulation.py.
    one, two, accum = (_encodings(tmp_path / name / "checkpoint_last.pth")
                       for name in ("one", "two", "accum"))
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), name
        assert torch.allclose(one[name], accum[name], atol=1e-4), name
    assert "contrastive batch 8 = 2 per process x 2 process(es) x 2 accumulation step(s)" in \
        (tmp_path / "accum" / "log.txt").read_text()
    results = test_entry.main(["--checkpoint", str(tmp_path / "two" / "checkpoint_best.pth")])
    assert set(results["datasets"]) == {"cuhk-pedes", "icfg-pedes", "rstpreid"}


def test_selection_split(synthetic_root):
    """select_on: auto takes val where the dataset has one; the shipped stage-1 config asks
    for test (the paper's code picks its checkpoint on CUHK-PEDES test)."""
    from engine.stages import AdaptStage, TokenStage
    from utils.config import load_config
    from utils.errors import ConfigError

    def split(stage, *overrides):
        cfg = load_config(None, [f"data.root={synthetic_root}", *overrides])
        return stage.selection_split(cfg)

    assert split(AdaptStage(), "data.dataset=cuhk-pedes") == "val"
    assert split(AdaptStage(), "data.dataset=cuhk-pedes", "train.select_on=test") == "test"
    assert split(TokenStage(), "data.dataset=mask1k") == "test"
    with pytest.raises(ConfigError, match="has no val split"):
        split(TokenStage(), "data.dataset=mask1k", "train.select_on=val")
    shipped = load_config(REPO_ROOT / "config" / "TriPEDES_pretrain.yaml")
    assert shipped.train.select_on == "test"
