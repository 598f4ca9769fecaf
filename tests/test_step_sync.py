"""The training step reads nothing back from the device between log lines; torch.compile is
on by default on CUDA and falls back to eager in one line; a batch's tokens are cut to a
few fixed lengths on the host without changing the features or the loss.

A read back from the device is a call, from the project's own code, of what waits for the
device: ``Tensor.item``, ``tolist``, ``numpy``, ``bool``/``int``/``float`` of a tensor (an
``if`` on a tensor). On the CPU nothing waits, so they are counted where they are called;
``tests/test_cuda.py`` checks the same step under CUDA's sync-debug mode.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import pytest
import torch

from engine import trainer as T
from engine.stages import AdaptStage, TokenStage
from tests.conftest import tiny_overrides
from utils.config import REPO_ROOT, load_config

# Code whose reads back from the device would stall a step: the loop, the models, the
# losses and the process group helpers (data preparation runs on the host anyway).
WATCHED = [REPO_ROOT / "engine" / "trainer.py", REPO_ROOT / "model",
           REPO_ROOT / "utils" / "distributed.py", REPO_ROOT / "utils" / "precision.py"]
READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
# Functions that read host tensors only (they refuse a device tensor), so never wait.
HOST_SIDE = {"trim_to_bucket"}


@contextlib.contextmanager
def count_reads(watched=tuple(WATCHED)):
    """Yield a list that collects (file:line, method) of every read back from the device
    made by the ``watched`` code (files or folders) while the block runs."""
    found = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            path = Path(caller.f_code.co_filename)
            if caller.f_code.co_name not in HOST_SIDE and any(
                    path == place or place in path.parents for place in watched):
                found.append((f"{path.relative_to(REPO_ROOT)}:{caller.f_lineno}", name))
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield found
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _trainer(stage, tmp_path, tiny_clip_path, synthetic_root, config, **extra):
    overrides = tiny_overrides(tiny_clip_path, synthetic_root, tmp_path / "run",
                               **{"data.dataset": "rstpreid", **extra})
    cfg = load_config(REPO_ROOT / "config" / config, overrides)
    return T.Trainer(cfg, stage)


def _epoch_reads(trainer, watched=tuple(WATCHED)) -> tuple:
    """(reads, steps) of one epoch of ``trainer`` (no evaluation)."""
    with count_reads(watched) as found:
        assert trainer._train_epoch(T.PreemptionGuard())
    return found, trainer.steps_per_epoch


@pytest.mark.parametrize("accumulate", [False, True])
def test_a_stage_1_epoch_reads_the_device_only_at_its_end(accumulate, tmp_path, tiny_clip_path,
                                                           synthetic_root):
    extra = {"train.global_batch": 16} if accumulate else {}
    trainer = _trainer(AdaptStage(), tmp_path, tiny_clip_path, synthetic_root,
                       "TriPEDES_pretrain.yaml", **extra)
    assert trainer.accum_steps == (2 if accumulate else 1)
    found, steps = _epoch_reads(trainer)
    assert steps >= 3
    # one read: the loss check at the end of the epoch (LossWatch.check)
    assert [method for _, method in found] == ["__int__"], found
    assert "engine/trainer.py" in found[0][0]


def test_a_stage_2_epoch_reads_the_device_only_at_its_end(tmp_path, tiny_clip_path,
                                                          synthetic_root, stage1_run):
    overrides = tiny_overrides(tiny_clip_path, synthetic_root, tmp_path / "run", **{
        "model.init_from": str(stage1_run / "checkpoint_best.pth"), "model.middle_dim": 32})
    cfg = load_config(REPO_ROOT / "config" / "Market_finetune.yaml", overrides)
    trainer = T.Trainer(cfg, TokenStage())
    # the prompt "a photo of *" is cut once, when the model is built
    assert trainer.model.prompt_tokens.shape[1] < cfg.model.context_length
    found, steps = _epoch_reads(trainer)
    assert steps >= 2 and [method for _, method in found] == ["__int__"], found


def test_the_old_step_is_caught(tmp_path, tiny_clip_path, synthetic_root, monkeypatch):
    """The counter finds an ``if`` on the loss and a cut of full-length tokens in the model:
    the two reads every step made before."""
    trainer = _trainer(AdaptStage(), tmp_path, tiny_clip_path, synthetic_root,
                       "TriPEDES_pretrain.yaml")
    trainer.text_buckets = (77,)  # full-length rows: the model cuts them itself

    class CheckEveryStep(T.LossWatch):
        def update(self, loss, losses):
            if not torch.isfinite(loss):
                raise AssertionError("not finite")

    trainer.loss_watch = CheckEveryStep(trainer.device, 0)
    found, steps = _epoch_reads(trainer, (*WATCHED, Path(__file__)))
    bools = [where for where, method in found if method == "__bool__"]
    cuts = [where for where, method in found
            if method == "__int__" and where.startswith("model/clip.py")]
    assert len(bools) == steps and all(w.startswith("tests/test_step_sync.py") for w in bools)
    assert len(cuts) == steps


def test_a_non_finite_loss_is_still_caught_at_the_next_check(tmp_path, tiny_clip_path,
                                                               synthetic_root):
    trainer = _trainer(AdaptStage(), tmp_path, tiny_clip_path, synthetic_root,
                       "TriPEDES_pretrain.yaml")
    watch = T.LossWatch(torch.device("cpu"), allowed=2)
    good, bad = torch.tensor(1.0), torch.tensor(float("nan"))
    for loss in (good, bad, bad, good, bad, bad):  # never more than 2 in a row
        watch.update(loss, {"nitc_loss": loss})
    watch.check(6, 0, Path("last.pth"))
    watch.update(bad, {"nitc_loss": bad})  # the run of 2 goes on across the check: 3
    with pytest.raises(T.TrainingError, match=r"\(3 step\(s\) in a row by epoch 1 step 7; "
                                              r"nitc_loss=nan\); stopped, last.pth holds"):
        watch.check(7, 0, Path("last.pth"))
    assert trainer.loss_watch.allowed == 0  # fp32 on the CPU: none allowed


# ----------------------------------------------------------------------- compile
def _cfg(**values):
    return load_config(None, [f"{key}={value}" for key, value in values.items()])


def test_compile_is_on_by_default_on_cuda_only(monkeypatch, caplog):
    monkeypatch.setattr(T, "compile_unavailable", lambda device: None)
    assert T.compile_choice(_cfg(), torch.device("cpu")) is None
    assert T.compile_choice(_cfg(), torch.device("cuda")) == "default"
    assert T.compile_choice(_cfg(**{"train.compile": "false"}), torch.device("cuda")) is None
    assert T.compile_choice(_cfg(**{"train.compile": "true"}), torch.device("cpu")) == "default"
    assert T.compile_choice(_cfg(**{"train.compile_mode": "reduce-overhead"}),
                            torch.device("cuda")) == "reduce-overhead"
    monkeypatch.setattr(T, "compile_unavailable", lambda device: "Triton is not installed")
    with caplog.at_level(logging.WARNING):
        assert T.compile_choice(_cfg(), torch.device("cuda")) is None
    assert "train.compile: running eagerly (Triton is not installed)" in caplog.text
    for bad in ({"train.compile": "2"}, {"train.compile_mode": "fast"}):
        with pytest.raises(T.ConfigError, match=next(iter(bad))):
            T.compile_choice(_cfg(**bad), torch.device("cuda"))


class _Wrapped(torch.nn.Module):
    """What torch.compile gives for a module: a module around it."""

    def __init__(self, inner, call):
        super().__init__()
        self.inner, self.call = inner, call

    def forward(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def _fake_compile(run):
    """A stand-in for torch.compile: the compiled callable (a module for a module) calls
    ``run(fn, args, kwargs)``."""
    def compile_(fn, mode=None):
        def call(*args, **kwargs):
            return run(fn, args, kwargs)
        return _Wrapped(fn, call) if isinstance(fn, torch.nn.Module) else call
    return compile_


def _failing_compile(calls):
    """Compiled callables that fail on their call, as a missing compiler or an unsupported
    operation makes them."""
    def run(fn, args, kwargs):
        raise RuntimeError("backend compiler failed\nmore lines of the trace")

    fake = _fake_compile(run)

    def compile_(fn, mode=None):
        calls.append(mode)
        return fake(fn, mode)
    return compile_


@pytest.mark.parametrize("accumulate", [False, True])
def test_a_failing_compiled_step_falls_back_to_the_eager_one(accumulate, tmp_path,
                                                              tiny_clip_path, synthetic_root,
                                                              monkeypatch, caplog):
    """The run goes on eagerly, with one line saying why, and trains exactly as an eager
    run: the same weights after an epoch."""
    extra = {"train.global_batch": 16} if accumulate else {}
    eager = _trainer(AdaptStage(), tmp_path / "eager", tiny_clip_path, synthetic_root,
                     "TriPEDES_pretrain.yaml", **extra)
    assert eager.compile_mode is None
    eager._train_epoch(T.PreemptionGuard())
    calls = []
    monkeypatch.setattr(torch, "compile", _failing_compile(calls))
    # the same token lengths as the eager run (compiled, they would be cut to buckets)
    compiled = _trainer(AdaptStage(), tmp_path / "compiled", tiny_clip_path, synthetic_root,
                        "TriPEDES_pretrain.yaml", **{"train.compile": "true",
                                                     "train.text_buckets": "[]", **extra})
    assert calls == ["default", "default"]  # the step, and the features of accumulation
    with caplog.at_level(logging.WARNING):
        compiled._train_epoch(T.PreemptionGuard())
    warnings = [r.getMessage() for r in caplog.records if "train.compile" in r.getMessage()]
    assert warnings == ["train.compile: the compiled step failed (RuntimeError: backend "
                        "compiler failed); running eagerly"]
    assert compiled.compile_mode is None and compiled.train_model is compiled.eager_model
    for (name, ours), (_, theirs) in zip(compiled.model.state_dict().items(),
                                         eager.model.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_accumulation_runs_the_compiled_features(tmp_path, tiny_clip_path, synthetic_root,
                                                 monkeypatch):
    """Both passes of a feature-caching step go through the compiled ``features``."""
    used = []

    def run(fn, args, kwargs):
        used.append(getattr(fn, "__name__", type(fn).__name__))
        return fn(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", _fake_compile(run))
    trainer = _trainer(AdaptStage(), tmp_path, tiny_clip_path, synthetic_root,
                       "TriPEDES_pretrain.yaml", **{"train.compile": "true",
                                                    "train.global_batch": 16})
    trainer._train_epoch(T.PreemptionGuard())
    assert used and set(used) == {"features"}
    assert len(used) == 2 * trainer.accum_steps * trainer.steps_per_epoch


# ----------------------------------------------------------------------- buckets
def test_text_buckets(tmp_path):
    assert T.text_buckets(_cfg(), compiled=False) == ()
    assert T.text_buckets(_cfg(), compiled=True) == (16, 32, 48, 64, 77)
    assert T.text_buckets(_cfg(**{"train.text_buckets": "[77,24]"}), compiled=False) == (24, 77)
    assert T.text_buckets(_cfg(**{"model.context_length": 40}), compiled=True) == (16, 32, 40)
    for bad in ("[1]", "[78]", "[true]"):
        with pytest.raises(T.ConfigError, match="train.text_buckets"):
            T.text_buckets(_cfg(**{"train.text_buckets": bad}), compiled=False)


def test_bucketed_tokens_give_the_loss_and_gradients_of_exactly_cut_ones(tmp_path,
                                                                        tiny_clip_path,
                                                                        synthetic_root):
    """A stage-1 batch cut to a bucket and cut exactly: the same losses and gradients (the
    padding after the longest text changes nothing under the causal mask)."""
    trainer = _trainer(AdaptStage(), tmp_path, tiny_clip_path, synthetic_root,
                       "TriPEDES_pretrain.yaml", **{"model.text_dropout": 0})
    model = trainer.model
    batch = next(iter(trainer.loader))
    exact = T.trim_to_bucket(batch["tokens"])
    assert exact.shape[1] < 64
    results = []
    for tokens in (exact, T.trim_to_bucket(batch["tokens"], (64, 77))):
        model.zero_grad(set_to_none=True)
        losses = model({**batch, "tokens": tokens}, alpha=0.4)
        sum(losses.values()).backward()
        results.append(({k: v.detach() for k, v in losses.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert tokens.shape[1] == 64 and losses_a.keys() == losses_b.keys()
    for name in losses_a:
        assert torch.allclose(losses_a[name], losses_b[name], rtol=1e-5, atol=1e-6), name
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        scale = grad.norm().clamp(min=1e-12)
        assert ((grad - grads_b[name]).norm() / scale) < 1e-4, name
