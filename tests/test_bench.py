"""The benchmarks run end to end on tiny settings and print well-formed JSON lines.
Timings are only checked to be positive and finite, never compared."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import common, fastreid_cython
from bench import epoch as bench_epoch
from bench import eval as bench_eval
from bench import loader as bench_loader
from bench import train_step as bench_train_step
from model.clip import SelfAttention
from model.random_clip import PRESETS, random_clip_state_dict
from tests.peers import missing_peer, peer_file

TRAIN_STEP_KEYS = {"bench", "stage", "device", "image_size", "batch_size", "step_ms",
                   "step_ms_min", "samples_per_s", "peak_mem_mb", "params_trainable",
                   "tflop_per_step", "mfu", "config"}


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-clip") / "tiny.pt"
    torch.save(random_clip_state_dict(PRESETS["tiny"]), path)
    return path


def last_json_line(capsys) -> dict:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    return json.loads(lines[-1])


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def tiny_step_args(stage: str, clip_file, *extra) -> list:
    args = ["--stage", stage, "--steps", "2", "--batch-size", "4", "device=cpu",
            f"model.pretrained={clip_file}", "model.image_size=[32,16]", *extra]
    if stage == "token":
        args += ["model.init_from=null", "model.middle_dim=32"]
    return args


@pytest.mark.parametrize("stage", ["adapt", "token"])
def test_train_step_prints_one_sane_json_line(stage, clip_file, capsys):
    returned = bench_train_step.main(tiny_step_args(stage, clip_file))
    record = last_json_line(capsys)
    assert record == returned
    assert TRAIN_STEP_KEYS <= set(record)
    assert record["bench"] == "train_step" and record["stage"] == stage
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    assert record["image_size"] == [32, 16] and record["batch_size"] == 4
    for key in ("step_ms", "step_ms_min", "samples_per_s", "peak_mem_mb", "params_trainable",
                "tflop_per_step"):
        assert positive(record[key]), key
    assert record["step_ms_min"] <= record["step_ms"]
    assert record["mfu"] is None  # no peak to compare with on the CPU
    assert record["config"]["model.image_size"] == [32, 16]
    assert math.isfinite(record["loss"])


def test_accumulated_step_reports_the_contrastive_batch(clip_file, capsys):
    # One step from the same start, dropout off: the loss of the step before it updates.
    first = ("--warmup", "0", "--steps", "1", "model.text_dropout=0", "model.mapping_dropout=0")
    record = bench_train_step.main(tiny_step_args("adapt", clip_file, "--accum-steps", "3",
                                                  *first))
    assert record["accum_steps"] == 3 and record["batch_size"] == 4
    assert record["contrastive_batch"] == 12
    assert positive(record["peak_mem_mb"]) and math.isfinite(record["loss"])
    plain = bench_train_step.main(tiny_step_args("adapt", clip_file, "--batch-size", "12",
                                                 *first))
    # The same 12 samples, model and seed: the same loss, one contrastive batch either way.
    assert plain["contrastive_batch"] == 12
    assert abs(plain["loss"] - record["loss"]) < 1e-3


def test_reference_style_step_runs_without_touching_the_library(clip_file, capsys):
    original = SelfAttention.__dict__["forward"]
    record = bench_train_step.main(tiny_step_args(
        "adapt", clip_file, "loss.separate_soft_target_pass=true", "--reference-attention"))
    assert record["reference_attention"] is True
    assert record["separate_soft_target_pass"] is True
    assert positive(record["step_ms"])
    assert SelfAttention.__dict__["forward"] is original


@pytest.mark.parametrize("causal", [False, True])
def test_reference_attention_equals_fused_attention(causal):
    import copy
    torch.manual_seed(0)
    attention = SelfAttention(64, 4)
    torch.nn.init.normal_(attention.in_proj_weight, std=64 ** -0.5)
    torch.nn.init.normal_(attention.in_proj_bias, std=0.1)
    x = torch.randn(3, 11, 64, requires_grad=True)
    block = torch.nn.Sequential(copy.deepcopy(attention))
    assert common.use_explicit_attention(block) == 1
    assert type(block[0]) is common.ExplicitAttention and type(attention) is SelfAttention

    fused = attention(x, causal)
    (fused_grad,) = torch.autograd.grad(fused.square().sum(), x)
    explicit = block[0](x, causal)
    (explicit_grad,) = torch.autograd.grad(explicit.square().sum(), x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit_grad, fused_grad, atol=1e-5, rtol=1e-5)


def test_flop_count_of_vit_b16_matches_the_usual_figure():
    # ViT-B/16 at 224x224 is about 17.6 G multiply-adds per image.
    flops = common.image_tower_flops(PRESETS["vit-b-16"], (224, 224), images=1, pooled=False)
    assert 34e9 < flops < 36e9
    # the last block at the class token only: about 2.3 GFLOPs less
    pooled = common.image_tower_flops(PRESETS["vit-b-16"], (224, 224), images=1)
    assert 2.2e9 < flops - pooled < 2.5e9


def test_loader_reports_samples_per_second(tmp_path, capsys):
    from datasets.synthetic import generate
    generate(tmp_path, scale=0.1, datasets=["rstpreid"])
    records = bench_loader.main(["--workers", "0", "--batches", "2", "--batch-size", "4",
                                 f"data.root={tmp_path}", "data.dataset=rstpreid",
                                 "model.image_size=[32,16]"])
    record = last_json_line(capsys)
    assert records == [record]
    assert record["bench"] == "loader" and record["workers"] == 0
    assert record["dataset"] == "rstpreid" and record["batch_size"] == 4
    for key in ("samples_per_s", "batch_ms", "first_batch_ms", "samples"):
        assert positive(record[key]), key


def test_epoch_times_the_loader_the_step_and_both(clip_file, tmp_path, capsys, monkeypatch):
    """The trainer's own loader and step: the step alone on one group used again, then
    the loader feeding the step with a fresh group each time."""
    from datasets.synthetic import generate
    from engine.trainer import Trainer
    generate(tmp_path, scale=0.1, datasets=["rstpreid"])
    seen, train_on = [], Trainer.train_on

    def recording(self, group, loss_inputs):
        seen.append(group[0]["photo"])  # held, so that no two can share an address
        return train_on(self, group, loss_inputs)

    monkeypatch.setattr(Trainer, "train_on", recording)
    records = bench_epoch.main(["--workers", "0", "--steps", "3", "--warmup", "1", "device=cpu",
                                f"data.root={tmp_path}", "data.dataset=rstpreid",
                                f"model.pretrained={clip_file}", "model.image_size=[32,16]",
                                "train.batch_size=4", "train.global_batch=8"])
    record = last_json_line(capsys)
    assert records == [record]
    assert record["bench"] == "epoch" and record["workers"] == 0
    assert (record["batch_size"], record["accum_steps"], record["contrastive_batch"]) == (4, 2, 8)
    for key in ("loader_samples_per_s", "step_samples_per_s", "both_samples_per_s",
                "both_over_step"):
        assert positive(record[key]), key
    assert len(seen) == 8  # (1 warm-up + 3) alone, (1 + 3) fed by the loader
    alone, fed = {id(photo) for photo in seen[:4]}, {id(photo) for photo in seen[4:]}
    assert len(alone) == 1 and len(fed) == 4


def test_eval_with_encoders_keeps_its_fields_and_adds_throughput(clip_file, capsys):
    returned = bench_eval.main(["--queries", "40", "--gallery", "200", "--repeats", "1",
                                "--encoders", "--clip", str(clip_file), "--image-size", "32",
                                "16", "--encoder-batch", "8", "--encoder-repeats", "1"])
    record = last_json_line(capsys)
    assert record == returned
    for key in ("bench", "queries", "gallery", "dim", "device", "match_ms", "rank_metrics_ms",
                "peak_mem_mb", "R1", "mAP", "mINP"):
        assert key in record, key
    assert record["encoder_image_size"] == [32, 16] and record["encoder_batch"] == 8
    for key in ("encode_image_per_s", "encode_text_per_s", "encode_image_ms", "encode_text_ms"):
        assert positive(record[key]), key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_step_on_cuda_reports_gpu_memory_and_mfu(clip_file):
    record = bench_train_step.main(["--stage", "adapt", "--steps", "2", "--batch-size", "4",
                                    "device=cuda", f"model.pretrained={clip_file}",
                                    "model.image_size=[32,16]"])
    assert record["precision"] in ("bf16", "fp16")
    assert positive(record["peak_mem_mb"]) and positive(record["achieved_tflops"])
    assert record["mfu"] is None or 0 < record["mfu"] < 1


# --------------------------------------------------------------------------
# bench.eval --reference: fast-reid's compiled evaluator, or its Python one.
# --------------------------------------------------------------------------
TINY_REFERENCE = ["--queries", "40", "--gallery", "200", "--repeats", "1", "--reference"]


def rank_cy_source():
    """fast-reid's rank_cy.pyx once Cython and a C compiler are there (otherwise the test
    skips, or fails under CI, as for a missing peer)."""
    pyx = peer_file("fastreid", "evaluation/rank_cylib/rank_cy.pyx")
    try:
        fastreid_cython.check_tools()
    except fastreid_cython.BuildError as error:
        missing_peer(f"{error}: pip install -r requirements-dev.txt")
    return pyx


@pytest.fixture
def without_cython(monkeypatch, tmp_path):
    """Cython not importable and an empty build cache, so nothing compiled earlier is found."""
    peer_file("fastreid", "evaluation/rank.py")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "Cython", None)


@pytest.mark.parametrize("dim", [16, 1])  # 1: every score ties, so the re-check runs
def test_eval_reference_compiles_fastreids_cython_evaluator_and_agrees(dim, capsys):
    pyx = rank_cy_source()
    # The first call compiles (about 10 s) into the user's cache; later ones reuse it.
    returned = bench_eval.main([*TINY_REFERENCE, "--dim", str(dim)])
    record = last_json_line(capsys)
    assert record == returned
    assert record["reference_impl"] == "fast-reid cython (compiled here)"
    assert record["agree"] and record["max_abs_diff"] < record["agree_tol"] == 1e-5
    assert record.get("ties_rechecked", False) == (dim == 1)
    assert positive(record["reference_ms"]) and positive(record["speedup"])
    # Built outside the installed package.
    assert not [path.name for path in pyx.parent.iterdir()
                if path.suffix in (".c", ".so", ".pyd") or path.name == "build"]


def test_eval_reference_impl_python_times_fastreids_python_evaluator(capsys):
    peer_file("fastreid", "evaluation/rank.py")
    record = bench_eval.main([*TINY_REFERENCE, "--reference-impl", "python"])
    assert record["reference_impl"] == "fast-reid python"
    assert record["agree"] and record["agree_tol"] == 1e-9
    assert positive(record["reference_ms"])
    assert capsys.readouterr().err == ""


def test_eval_reference_falls_back_to_python_with_one_line(without_cython, capsys):
    record = bench_eval.main(TINY_REFERENCE)
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1]) == record
    assert record["reference_impl"] == "fast-reid python" and record["agree"]
    assert captured.err.splitlines() == [
        "Cython not installed (pip install 'cython>=3.0'); "
        "timing fast-reid's pure-Python evaluator instead"]


def test_eval_reference_impl_cython_exits_when_it_cannot_build(without_cython, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_eval.main([*TINY_REFERENCE, "--reference-impl", "cython"])
    assert exit_info.value.code == ("--reference-impl cython: Cython not installed "
                                    "(pip install 'cython>=3.0')")
    assert capsys.readouterr().out == ""


def test_eval_reference_impl_needs_reference(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_eval.main(["--queries", "4", "--gallery", "8", "--reference-impl", "python"])
    assert exit_info.value.code == 2
    assert "--reference-impl needs --reference" in capsys.readouterr().err


def test_failed_cython_build_is_one_line_and_leaves_no_build(tmp_path):
    rank_cy_source()
    broken = tmp_path / "rank_cy.pyx"
    broken.write_text("cpdef evaluate_cy(:\n", encoding="utf-8")
    cache = tmp_path / "cache"
    with pytest.raises(fastreid_cython.BuildError) as error:
        fastreid_cython.load_evaluate_cy(broken, cache)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("building rank_cy.pyx with Cython failed: src/rank_cy.pyx:1:")
    # Only the log stays: no half-built folder that a later run would take for a build.
    assert [path.suffix for path in cache.iterdir()] == [".log"]


# --------------------------------------------------------------------------
# bench.eval --rerank: ours, and fast-reid's dense re_ranking where it fits.
# --------------------------------------------------------------------------
TINY_RERANK = ["--queries", "30", "--gallery", "120", "--dim", "16", "--ids", "20",
               "--repeats", "1", "--rerank"]


def test_eval_rerank_times_ours_and_fastreids_and_agrees(capsys):
    peer_file("fastreid", "evaluation/rerank.py")
    returned = bench_eval.main(TINY_RERANK)
    out = capsys.readouterr().out
    record = json.loads(out.splitlines()[-1])
    assert record == returned
    assert (record["rerank_k1"], record["rerank_k2"], record["rerank_lambda"]) == (20, 6, 0.3)
    for key in ("rerank_s", "dense_mb", "reference_rerank_s"):
        assert positive(record[key]), key
    # Memory that a tiny problem takes may already be there (the peak need not rise).
    for key in ("rerank_peak_mb", "rerank_output_mb", "reference_rerank_peak_mb"):
        assert record[key] >= 0, key
    assert record["dense_mb"] == pytest.approx(20 * 150 ** 2 / 2**20, abs=0.1)
    assert record["reference_rerank_max_abs_diff"] < 1e-5
    assert record["reference_rerank_same_metrics"] is True
    assert all(0 <= record[f"rerank_{key}"] <= 100 for key in bench_eval.KEYS)
    table = out.splitlines()[:-1]
    assert table[0].startswith("k-reciprocal re-ranking, 30 queries x 120 gallery, dim 16")
    assert [line.split("  ")[0] for line in table[3:]] == [
        "cosine, no re-ranking", "ours (sparse)", "fast-reid re_ranking (dense)",
        "dense arrays would need"]


def test_eval_rerank_leaves_fastreid_out_over_the_dense_limit(capsys):
    record = bench_eval.main([*TINY_RERANK, "--dense-limit-gb", "0", "--rerank-k1", "7",
                              "--rerank-k2", "3", "--rerank-lambda", "0.5"])
    assert record["reference_rerank_s"] is None
    assert record["reference_rerank_skipped"] == ("its dense arrays need 0.0 GB, over "
                                                  "--dense-limit-gb 0")
    assert (record["rerank_k1"], record["rerank_k2"], record["rerank_lambda"]) == (7, 3, 0.5)
    assert positive(record["rerank_s"])
    assert "not run" in capsys.readouterr().out


def test_eval_rerank_refuses_bad_parameters(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_eval.main([*TINY_RERANK, "--rerank-k2", "30"])
    assert exit_info.value.code == 2
    assert "--rerank: k2=30 must be an integer from 1 to k1 (20)" in capsys.readouterr().err


def test_peak_memory_counts_only_the_block():
    """A large allocation freed before the block is not in its peak; one inside is."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the resident-memory peak can be reset only on Linux (/proc/self/clear_refs)")
    before = np.ones(300 * 2 ** 20 // 8)  # 300 MB, touched
    del before
    with common.PeakMemory(torch.device("cpu")) as quiet:
        pass
    with common.PeakMemory(torch.device("cpu")) as busy:
        inside = np.ones(200 * 2 ** 20 // 8)
        del inside
    assert quiet.mb < 50 and busy.mb > 150, (quiet.mb, busy.mb)
    assert busy.peak_mb - quiet.peak_mb > 150
