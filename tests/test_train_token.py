"""Stage 2 end to end on synthetic Market-Sketch-1K and PKU-Sketch with a tiny random CLIP:
token learning from a stage-1 checkpoint, the test tasks, rounds, multi-query, pictures,
PKU trials and the paper-table script."""
from __future__ import annotations

import json
import os
import statistics
import subprocess

import pytest
import torch

import test as test_entry
from tests.conftest import run_token
from utils.config import REPO_ROOT


def test_market_run_and_test_tasks(market_run, stage1_run, synthetic_root, tmp_path):
    checkpoint = torch.load(market_run / "checkpoint_best.pth", weights_only=True)
    assert checkpoint["stage"] == "token"
    assert any(key.startswith("img2text.") for key in checkpoint["model"])
    # The text tower is frozen: its weights are those of the stage-1 checkpoint.
    stage1 = torch.load(stage1_run / "checkpoint_best.pth", weights_only=True)["model"]
    for key in ("clip.token_embedding.weight", "clip.text_projection",
                "clip.transformer.resblocks.0.attn.in_proj_weight", "clip.logit_scale"):
        assert torch.equal(checkpoint["model"][key], stage1[key]), key
    assert not torch.equal(checkpoint["model"]["clip.visual.proj"], stage1["clip.visual.proj"])

    out = tmp_path / "eval"
    results = test_entry.main(["--checkpoint", str(market_run / "checkpoint_best.pth"),
                               f"output_dir={out}", "test.rounds=3", "test.multi_query=true",
                               "test.visualize=2"])
    assert set(results["tasks"]) == {"interactive", "sketch_only", "text_only",
                                     "interactive_mq", "sketch_only_mq"}
    assert [entry["round"] for entry in results["rounds"]] == [0, 1, 2, 3]
    saved = json.loads((out / "results.json").read_text())
    assert saved["rounds"][3]["R1"] == results["rounds"][3]["R1"]
    assert (out / "rounds.png").is_file()
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["query_000.png", "query_001.png"]
    # The evaluation during training and test.py agree.
    record = json.loads((market_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test"]["tasks"]["interactive"] == results["tasks"]["interactive"]
    assert "queries" not in record["test"]

    # queries.json: each query's sketch, person and the exact texts that were encoded.
    from datasets import market_sketch
    asked = json.loads((out / "queries.json").read_text())
    assert asked["dataset"] == "mask1k"
    eval_set = market_sketch.eval_set(synthetic_root, "test")
    assert [q["image"] for q in asked["queries"]] == [str(p) for p in eval_set.sketch_paths]
    assert [q["person_id"] for q in asked["queries"]] == eval_set.sketch_ids
    attributes = market_sketch.read_attributes(
        synthetic_root / "Market-Sketch-1K" / "market_attribute.mat")
    for query in asked["queries"]:
        sentence = market_sketch.feedback_sentence(attributes[query["person_id"]])
        assert query["texts"]["text_only"] == sentence
        assert query["texts"]["interactive"] == f"a photo of * , and {sentence}"
        assert query["texts"]["rounds"][0] == "a photo of *"
        assert len(query["texts"]["rounds"]) == 4  # rounds 0..3: a growing prefix
        assert query["texts"]["interactive"].startswith(query["texts"]["rounds"][-1])


def test_stage2_refuses_a_stage2_checkpoint_as_init(tiny_clip_path, synthetic_root, market_run,
                                                    tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_token(tiny_clip_path, synthetic_root, tmp_path / "x", market_run)
    assert exit_info.value.code == 2
    assert "is a stage 2 (train_token.py) checkpoint; expected a stage 1" in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoint_last.pth").exists()


@pytest.mark.slow
def test_pku_trials_and_their_mean(tiny_clip_path, synthetic_root, stage1_run, market_run,
                                   tmp_path):
    out = tmp_path / "pku"
    run_token(tiny_clip_path, synthetic_root, out, stage1_run, config="PKU_finetune",
              **{"data.trials": "[1,2]", "train.batch_size": 4})
    assert (out / "trial_1" / "checkpoint_best.pth").is_file()
    assert (out / "trial_2" / "checkpoint_best.pth").is_file()
    results = test_entry.main(["--checkpoint", str(out)])
    assert [trial["trial"] for trial in results["trials"]] == [1, 2]
    for metric in ("R1", "mAP"):
        values = [trial["tasks"]["interactive"][metric] for trial in results["trials"]]
        assert results["tasks"]["interactive"][metric] == pytest.approx(sum(values) / 2)
        # The sample standard deviation of exactly these per-trial values (n - 1 divisor).
        assert results["std"]["interactive"][metric] == pytest.approx(statistics.stdev(values))
    assert (out / "results.json").is_file()

    # model_test.sh: zero-shot CLIP, every table of the paper, then one Markdown table.
    env = {**os.environ, "ADAPT_RUN": str(stage1_run), "MARKET_RUN": str(market_run),
           "PKU_RUN": str(out), "OUT": str(tmp_path), "CLIP": str(tiny_clip_path)}
    subprocess.run(["bash", "model_test.sh", "device=cpu", f"data.root={synthetic_root}",
                    "model.image_size=[32,16]"], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    table = (tmp_path / "results.md").read_text()
    assert "| tri-pedes (zero_shot) | cuhk-pedes text_to_image |" in table
    assert "| rstpreid (" in table and "| mask1k (" in table and "| pku-sketch (" in table
    assert "±" in table  # PKU-Sketch: mean ± std over trials
