"""Several seeds: one run each in output_dir/seed_<s>/, results.json with their mean and std,
test.py over the folder, stage 2 paired with stage 1's seeds, resume that skips finished
seeds, results.md with ±, and engine.compare."""
from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import test as test_entry
import train_adapt
from engine import compare, report
from engine.results import combine, summarize
from tests.conftest import run_token, tiny_overrides
from utils.config import REPO_ROOT

STAGE1 = {"data.dataset": "rstpreid", "train.batch_size": 4}


def train(clip_path, data_root, out, **extra):
    return train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                             *tiny_overrides(clip_path, data_root, out, **{**STAGE1, **extra})])


@pytest.fixture(scope="module")
def two_seeds(tiny_clip_path, synthetic_root, tmp_path_factory):
    """A stage-1 run of seeds 1 and 2, and what training returned."""
    out = tmp_path_factory.mktemp("seeds")
    results = train(tiny_clip_path, synthetic_root, out, seeds="[1,2]")
    return out, results


def best_record(run_dir: Path) -> dict:
    best = torch.load(run_dir / "checkpoint_best.pth", weights_only=True)["epoch"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["epoch"] == best][-1]["test"]


def test_a_multi_seed_run_and_its_results(two_seeds):
    out, returned = two_seeds
    assert not (out / "checkpoint_best.pth").exists()
    for seed in (1, 2):
        assert (out / f"seed_{seed}" / "checkpoint_best.pth").is_file()
        stored = yaml.safe_load((out / f"seed_{seed}" / "config.yaml").read_text())
        assert stored["seed"] == seed and stored["seeds"] == []
        assert stored["output_dir"] == str(out / f"seed_{seed}")
    one = torch.load(out / "seed_1" / "checkpoint_last.pth", weights_only=True)["model"]
    two = torch.load(out / "seed_2" / "checkpoint_last.pth", weights_only=True)["model"]
    assert any(not torch.equal(one[key], two[key]) for key in one)  # the seeds differ

    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(returned))
    assert results["dataset"] == "rstpreid"
    assert [entry["seed"] for entry in results["seeds"]] == [1, 2]
    for seed, entry in zip((1, 2), results["seeds"]):
        assert entry["tasks"] == best_record(out / f"seed_{seed}")["tasks"]
    for task in ("text_to_image", "sketch_to_image"):
        for metric in ("R1", "R5", "R10", "mAP", "mINP"):
            values = [entry["tasks"][task][metric] for entry in results["seeds"]]
            assert results["tasks"][task][metric] == pytest.approx(statistics.fmean(values))
            assert results["std"][task][metric] == pytest.approx(statistics.stdev(values))


def test_test_py_over_a_multi_seed_folder(two_seeds, tmp_path):
    out, trained = two_seeds
    results = test_entry.main(["--checkpoint", str(out), f"output_dir={tmp_path}"])
    assert [entry["seed"] for entry in results["seeds"]] == [1, 2]
    # The same models on the same data: the numbers training recorded at its best epoch.
    for ours, theirs in zip(results["seeds"], trained["seeds"]):
        for task, metrics in theirs["tasks"].items():
            for metric, value in metrics.items():
                assert ours["tasks"][task][metric] == pytest.approx(value, abs=1e-6)
    assert set(results["std"]) == {"text_to_image", "sketch_to_image"}
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["seeds"] == results["seeds"]
    queries = json.loads((tmp_path / "queries.json").read_text())
    assert [entry["seed"] for entry in queries["seeds"]] == [1, 2]
    assert queries["seeds"][0]["queries"][0]["task"] == "text_to_image"


def test_results_md_shows_mean_and_std(two_seeds, tmp_path):
    out, _ = two_seeds
    table = report.main([str(out / "results.json"), "--out", str(tmp_path / "results.md")])
    rows = [line for line in table.splitlines() if "_to_image" in line]
    assert len(rows) == 2
    for row in rows:
        assert "mean ± std of 2 seeds" in row
        assert row.count("±") == 1 + 5  # the label, and every metric's cell


def test_one_seed_in_the_list_keeps_the_single_layout(tiny_clip_path, synthetic_root, tmp_path):
    out = tmp_path / "one"
    train(tiny_clip_path, synthetic_root, out, seeds="[7]")
    assert (out / "checkpoint_best.pth").is_file() and not list(out.glob("seed_*"))
    assert not (out / "results.json").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 7


@pytest.mark.parametrize("extra, message", [
    ({"seeds": "[1,1]"}, "names a seed twice"),
    ({"seeds": "[1,two]"}, "must be a list of integers"),
])
def test_bad_seed_lists(tiny_clip_path, synthetic_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_clip_path, synthetic_root, tmp_path / "bad", **extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_layouts_do_not_mix(two_seeds, stage1_run, tiny_clip_path, synthetic_root, capsys):
    with pytest.raises(SystemExit):
        train(tiny_clip_path, synthetic_root, stage1_run, seeds="[1,2]")
    assert "holds a single-seed run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train(tiny_clip_path, synthetic_root, two_seeds[0], **{"train.resume": "true"})
    assert "holds a multi-seed run" in capsys.readouterr().err


def test_a_multi_seed_folder_given_as_a_checkpoint_names_a_seed(two_seeds):
    from utils.checkpoint import load_checkpoint
    from utils.errors import UserError
    with pytest.raises(UserError, match="such as .*seed_1/checkpoint_best.pth"):
        load_checkpoint(two_seeds[0])


def test_stage2_pairs_each_seed_with_stage1s(two_seeds, tiny_clip_path, synthetic_root,
                                             tmp_path, caplog):
    stage1 = two_seeds[0]
    out = tmp_path / "market"
    with caplog.at_level("INFO"):
        results = run_token(tiny_clip_path, synthetic_root, out, stage1, seeds="[1,2]")
    for seed in (1, 2):
        stored = yaml.safe_load((out / f"seed_{seed}" / "config.yaml").read_text())
        assert stored["model"]["init_from"] == str(stage1 / f"seed_{seed}" / "checkpoint_best.pth")
        assert f"stage 2 starts from {stage1 / f'seed_{seed}' / 'checkpoint_best.pth'}" \
            in caplog.text
    assert [entry["seed"] for entry in results["seeds"]] == [1, 2]
    assert set(results["tasks"]) >= {"interactive", "sketch_only", "text_only"}


def test_stage2_takes_the_checkpoint_the_user_names(two_seeds, tiny_clip_path, synthetic_root,
                                                    tmp_path):
    named = two_seeds[0] / "seed_2" / "checkpoint_best.pth"
    out = tmp_path / "market"
    import train_token
    train_token.main(["--config", "config/Market_finetune.yaml", *tiny_overrides(
        tiny_clip_path, synthetic_root, out, seeds="[1,2]", **{
            "model.init_from": str(named), "model.middle_dim": 32})])
    for seed in (1, 2):
        stored = yaml.safe_load((out / f"seed_{seed}" / "config.yaml").read_text())
        assert stored["model"]["init_from"] == str(named)


def test_stage2_seed_missing_from_stage1(two_seeds, tiny_clip_path, synthetic_root, tmp_path,
                                         capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_token(tiny_clip_path, synthetic_root, tmp_path / "x", two_seeds[0], seed=0)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "multi-seed stage-1 run (seeds 1, 2) without seed 0" in error
    assert "seeds=[1, 2]" in error and error.count("\n") == 1


@pytest.mark.slow
def test_pku_seeds_times_trials(two_seeds, tiny_clip_path, synthetic_root, tmp_path):
    out = tmp_path / "pku"
    results = run_token(tiny_clip_path, synthetic_root, out, two_seeds[0], config="PKU_finetune",
                        seeds="[1,2]", **{"data.trials": "[1,2]", "train.batch_size": 4})
    for seed in (1, 2):
        for trial in (1, 2):
            assert (out / f"seed_{seed}" / f"trial_{trial}" / "checkpoint_best.pth").is_file()
    for entry in results["seeds"]:
        assert [trial["trial"] for trial in entry["trials"]] == [1, 2]
        values = [trial["tasks"]["interactive"]["R1"] for trial in entry["trials"]]
        assert entry["tasks"]["interactive"]["R1"] == pytest.approx(statistics.fmean(values))
    means = [entry["tasks"]["interactive"]["R1"] for entry in results["seeds"]]
    assert results["tasks"]["interactive"]["R1"] == pytest.approx(statistics.fmean(means))
    assert results["std"]["interactive"]["R1"] == pytest.approx(statistics.stdev(means))
    tested = test_entry.main(["--checkpoint", str(out)])
    assert [entry["seed"] for entry in tested["seeds"]] == [1, 2]
    assert [t["trial"] for t in tested["seeds"][1]["trials"]] == [1, 2]
    assert "2 seeds × 2 trials" in report.markdown_table([("pku", tested)])


@pytest.mark.slow
def test_resume_skips_finished_seeds_and_continues_the_killed_one(two_seeds, tiny_clip_path,
                                                                  synthetic_root, tmp_path,
                                                                  capsys):
    """Seeds [1, 2]: kill -9 in the middle of seed 2, resume. Seed 1 is not trained again
    (its files untouched); seed 2 ends with the weights of the unbroken run."""
    whole = two_seeds[0]
    extra = {"train.save_every_steps": 2, "seeds": "[1,2]"}
    broken = tmp_path / "broken"
    process = subprocess.Popen(
        [sys.executable, "train_adapt.py", "--config", "config/TriPEDES_pretrain.yaml",
         *tiny_overrides(tiny_clip_path, synthetic_root, broken, **{**STAGE1, **extra})],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (broken / "seed_2" / "checkpoint_last.pth").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "seed 2 did not save in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(broken / "seed_2" / "checkpoint_last.pth", weights_only=True)
    assert killed_at["epoch"] == 0 and killed_at["step"] > 0  # in the middle of seed 2
    seed1_files = {path.name: path.stat().st_mtime_ns for path in (broken / "seed_1").iterdir()}
    capsys.readouterr()

    results = train(tiny_clip_path, synthetic_root, broken, **extra, **{"train.resume": "true"})
    assert "seed 1: already trained (all 1 epoch(s)), skipped" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns
            for path in (broken / "seed_1").iterdir()} == seed1_files
    for seed in (1, 2):
        ours = torch.load(broken / f"seed_{seed}" / "checkpoint_last.pth", weights_only=True)
        theirs = torch.load(whole / f"seed_{seed}" / "checkpoint_last.pth", weights_only=True)
        assert ours["step"] == theirs["step"]
        difference = max((ours["model"][k] - theirs["model"][k]).abs().max().item()
                         for k in ours["model"])
        assert difference == 0, (seed, difference)
    assert results["seeds"] == json.loads((whole / "results.json").read_text())["seeds"]


# ----------------------------------------------------------------------- engine.compare
def seeds_results(dataset: str, r1_values: list, task: str = "interactive") -> dict:
    runs = [(seed, None, {"tasks": {task: {"R1": r1, "R5": 80.0, "R10": 90.0, "mAP": r1 - 10,
                                           "mINP": 20.0}}})
            for seed, r1 in enumerate(r1_values, start=1)]
    return {"dataset": dataset, **combine(runs)}


def write(path: Path, results: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    return path


def test_compare_marks_differences_beyond_the_spread(tmp_path, capsys):
    # A: R1 50 +- 1; B: R1 51 +- 1 (within 2 std) and mAP 40 -> 46 (beyond 2 std).
    a = write(tmp_path / "a", seeds_results("mask1k", [49.0, 50.0, 51.0]))
    b_results = seeds_results("mask1k", [50.0, 51.0, 52.0])
    for entry in b_results["seeds"]:
        entry["tasks"]["interactive"]["mAP"] += 5.0
    b_results.update(summarize(b_results["seeds"]))
    b = write(tmp_path / "b", b_results)
    rows = compare.main([str(a), str(b / "results.json"), "--out", str(tmp_path / "c.md")])
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["R1"]["delta"] == pytest.approx(1.0)
    assert by_metric["R1"]["verdict"] == compare.WITHIN
    assert by_metric["mAP"]["delta"] == pytest.approx(6.0)
    assert by_metric["mAP"]["verdict"] == compare.BEYOND
    assert by_metric["R5"]["verdict"] == compare.WITHIN  # equal, no spread: not beyond
    screen = capsys.readouterr().out
    assert "1 of 5 differences beyond 2 × the larger std" in screen
    markdown = (tmp_path / "c.md").read_text()
    assert "| interactive | R1 | 50.00 ± 1.00 | 51.00 ± 1.00 | +1.00 | within spread |" in markdown
    assert "| interactive | mAP | 40.00 ± 1.00 | 46.00 ± 1.00 | +6.00 | beyond spread |" \
        in markdown
    # A wider factor takes the mAP difference back inside.
    rows = compare.main([str(a), str(b), "--factor", "7"])
    assert all(row["verdict"] == compare.WITHIN for row in rows)


def test_compare_single_runs_and_tri_pedes(tmp_path, capsys):
    block = {"tasks": {"text_to_image": {m: 10.0 for m in ("R1", "R5", "R10", "mAP", "mINP")}}}
    one = write(tmp_path / "one", {"dataset": "tri-pedes", "datasets": {"cuhk-pedes": block}})
    seeded = {"dataset": "tri-pedes", **combine([(1, None, {"datasets": {"cuhk-pedes": block}}),
                                                 (2, None, {"datasets": {"cuhk-pedes": block}})])}
    two = write(tmp_path / "two", seeded)
    rows = compare.main([str(one), str(two)])
    assert {row["row"] for row in rows} == {"cuhk-pedes text_to_image"}
    assert all(row["verdict"] == compare.NO_SPREAD and row["delta"] == 0 for row in rows)
    assert "no spread to judge by" in capsys.readouterr().out
    # A multi-seed Tri-PEDES result keeps its std inside each dataset.
    assert seeded["datasets"]["cuhk-pedes"]["std"]["text_to_image"]["R1"] == 0.0


@pytest.mark.parametrize("second, message", [
    ({"dataset": "pku-sketch", "tasks": {}}, "A was tested on mask1k and B on pku-sketch"),
    (None, "results not found"),
])
def test_compare_refuses(tmp_path, capsys, second, message):
    a = write(tmp_path / "a", seeds_results("mask1k", [1.0, 2.0]))
    b = tmp_path / "b"
    if second is not None:
        write(b, second)
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(a), str(b)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
