"""``bench.train_step --profile``: the step's time sorted into categories, and the achieved
rate against a matmul peak measured on the same machine. Only the sorting is checked
exactly; times are checked to be positive and finite, never compared."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from bench import profile as bench_profile
from bench import train_step as bench_train_step
from model.random_clip import PRESETS, random_clip_state_dict


@pytest.mark.parametrize(("name", "category"), [
    ("aten::mm", "matrix products"), ("aten::addmm", "matrix products"),
    ("aten::bmm", "matrix products"), ("aten::convolution_backward", "matrix products"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::_scaled_dot_product_efficient_attention_backward", "attention"),
    ("aten::copy_", "copies"), ("aten::_to_copy", "copies"), ("aten::fill_", "copies"),
    ("aten::cat", "copies"), ("Memcpy HtoD (Pinned -> Device)", "copies"),
    ("Memset (Device)", "copies"), ("aten::mul", "element-wise"),
    ("aten::silu_backward", "element-wise"), ("aten::native_layer_norm", "element-wise"),
    ("aten::_amp_foreach_non_finite_check_and_unscale_", "optimizer"),
    ("AddmmBackward0", "framework"), ("autograd::engine::evaluate_function: X", "framework"),
])
def test_operators_are_sorted_by_name(name, category):
    assert bench_profile.operator_category(name) == category


def event(name, parent=None, cpu_us=0.0, device_us=0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, self_cpu_time_total=cpu_us,
                           self_device_time_total=device_us)


def test_regions_win_over_operator_names():
    """Whatever runs inside the optimizer's step or the data region counts there."""
    step = event("Optimizer.step#AdamW.step", cpu_us=100)
    data = event(bench_profile.DATA_REGION)
    events = [step, event("aten::_fused_adamw_", step, 4000, 70),
              event("aten::copy_", event("aten::to", data), 500, 30),
              event("aten::mm", cpu_us=3000, device_us=900), event("aten::mul", cpu_us=1000),
              event("aten::copy_", cpu_us=250), event("AddmmBackward0", cpu_us=50),
              # a kernel's own event: its time is the launching operator's already
              SimpleNamespace(name="void gemm_kernel", cpu_parent=None, self_cpu_time_total=0,
                              self_device_time_total=900, device_type=DeviceType.CUDA)]
    on_cpu = bench_profile.categorize(events, on_device=False)
    assert on_cpu == {"matrix products": 3.0, "attention": 0.0, "element-wise": 1.0,
                      "copies": 0.25, "optimizer": 4.1, "data": 0.5, "framework": 0.05}
    on_device = bench_profile.categorize(events, on_device=True)
    assert on_device["matrix products"] == 0.9 and on_device["optimizer"] == 0.07
    assert on_device["data"] == 0.03 and on_device["element-wise"] == 0.0


def test_matmul_peak_is_measured():
    peak = bench_profile.matmul_peak_flops(torch.device("cpu"), torch.float32, size=128,
                                           repeats=2)
    assert math.isfinite(peak) and peak > 0


@pytest.mark.parametrize("stage", ["adapt", "token"])
def test_profile_prints_the_categories_and_the_achieved_rate(stage, tmp_path, capsys):
    clip_file = tmp_path / "tiny.pt"
    torch.save(random_clip_state_dict(PRESETS["tiny"]), clip_file)
    args = ["--stage", stage, "--steps", "1", "--batch-size", "4", "--profile", "device=cpu",
            f"model.pretrained={clip_file}", "model.image_size=[32,16]"]
    if stage == "token":
        args += ["model.init_from=null", "model.middle_dim=32"]
    record = bench_train_step.main(args)
    out = capsys.readouterr().out
    for category in bench_profile.CATEGORIES:
        assert category in out
    assert "TFLOP/s of a measured matmul peak" in out
    assert json.loads(out.strip().splitlines()[-1]) == record
    assert set(record["profile_ms"]) == set(bench_profile.CATEGORIES)
    assert record["profile_ms"]["matrix products"] > 0
    assert record["profile_ms"]["optimizer"] > 0
    total = sum(record["profile_ms"].values())
    assert total == pytest.approx(record["profile_step_ms"], rel=0.01)
    assert record["matmul_peak_tflops"] > 0 and record["of_matmul_peak"] > 0
    # the text tower runs up to the longest text, which the FLOP count follows
    assert 3 < record["text_length"] < 77


def test_ab_runs_both_checkouts_in_turn_and_reports_the_median_ratio(capsys):
    """bench.ab against this same checkout: one line per run, then the medians and ratios."""
    from pathlib import Path

    from bench import ab

    here = Path(ab.__file__).resolve().parent.parent
    summary = ab.main(["--before", str(here), "--rounds", "2", "--bench", "bench.eval",
                       "--metric", "rank_metrics_ms", "--", "--queries", "40",
                       "--gallery", "400", "--ids", "10", "--repeats", "1"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out[:4]] == [
        ["round", "1", "before"], ["round", "1", "after"],
        ["round", "2", "before"], ["round", "2", "after"]]
    assert json.loads(out[-1]) == summary
    assert summary["rounds"] == 2 and len(summary["ratios"]) == 2
    assert summary["ratio_min"] <= summary["ratio_median"] <= summary["ratio_max"]
    assert summary["before_median"] > 0 and summary["after_median"] > 0
    assert summary["peak_mem_ratio"] > 0


def test_ab_refuses_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    from bench import ab

    with pytest.raises(SystemExit, match="has no bench.train_step"):
        ab.main(["--before", str(tmp_path), "--rounds", "1", "--", "--steps", "1"])
