"""The method learns: on synthetic data a tiny CLIP from random weights learns photo<->text
retrieval far above chance within seconds (stage 1), and composed sketch+text queries beat
sketch-only ones after stage 2."""
from __future__ import annotations

import pytest

import test as test_entry
import train_adapt
import train_token
from datasets.synthetic import generate
from tests.conftest import tiny_overrides

FROM_SCRATCH = {"train.lr": "1e-3", "train.lr_start": "1e-5", "train.lr_end": "1e-5",
                "model.freeze_patch_embed": "false", "model.image_size": "[64,32]",
                "train.batch_size": 16, "train.eval_every": 100, "train.select_on": "test"}


@pytest.mark.slow
def test_stage1_then_stage2_learn(tiny_clip_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("learn_data")
    generate(root, seed=1, scale=0.6)
    stage1 = tmp_path_factory.mktemp("learn_stage1")
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *tiny_overrides(
        tiny_clip_path, root, stage1, **FROM_SCRATCH,
        **{"data.dataset": "tri-pedes", "train.epochs": 12, "train.select_task": "text_to_image"})])
    results = test_entry.main(["--checkpoint", str(stage1 / "checkpoint_best.pth")])
    # 13 to 17 test people with two photos each: chance R1 is below 8. Measured with the
    # paper's recipe: 17.5 / 29.4 / 33.9 (it moves by about 10 with small changes).
    r1 = {name: block["tasks"]["text_to_image"]["R1"]
          for name, block in results["datasets"].items()}
    assert all(value >= 12 for value in r1.values()), r1
    assert sum(r1.values()) / len(r1) >= 20, r1

    stage2 = tmp_path_factory.mktemp("learn_stage2")
    train_token.main(["--config", "config/Market_finetune.yaml", *tiny_overrides(
        tiny_clip_path, root, stage2, **{**FROM_SCRATCH, "train.lr": "1e-4"},
        **{"model.init_from": str(stage1 / "checkpoint_best.pth"), "model.middle_dim": 64,
           "train.epochs": 5, "train.warmup_epochs": 1})])
    results = test_entry.main(["--checkpoint", str(stage2 / "checkpoint_best.pth"),
                               "test.rounds=6"])
    tasks = results["tasks"]
    # Measured: mAP 17.9 vs 6.0, R5 41 vs 10, R1 4.8-7.5 vs 2.1 (R1 moves with small
    # changes at this size; the demo, 4x longer, shows R1 +9).
    interactive, sketch_only = tasks["interactive"], tasks["sketch_only"]
    assert interactive["mAP"] >= sketch_only["mAP"] + 5, tasks
    assert interactive["R5"] >= sketch_only["R5"] + 10, tasks
    assert interactive["R1"] > sketch_only["R1"], tasks
    rounds = [entry["mAP"] for entry in results["rounds"]]
    assert rounds[-1] >= rounds[0] + 5, rounds
