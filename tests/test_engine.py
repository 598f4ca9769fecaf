"""Pure pieces of the training loop: schedule, optimizer groups, sample order."""
from __future__ import annotations

import math

import numpy as np
import torch
from easydict import EasyDict

from datasets.sampler import EpochSampler, sample_seed
from engine.trainer import build_optimizer
from utils.precision import training_dtype
from utils.schedule import learning_rate


def reference_schedule(total, warmup, peak, start, end):
    """The paper's code's schedule as one array (misc/build.py, ``cosine_scheduler``): the
    warm-up as evenly spaced points from start to peak, both ends included, then a cosine
    over the remaining steps."""
    warm = np.linspace(start, peak, warmup) if warmup > 0 else np.array([])
    steps = np.arange(total - warmup)
    decay = end + 0.5 * (peak - end) * (1 + np.cos(np.pi * steps / max(1, len(steps))))
    return np.concatenate((warm, decay))


def test_schedule_is_the_paper_codes_step_for_step():
    for total, warmup in ((100, 10), (37, 0), (5, 5), (12, 1), (12, 2), (1, 1)):
        expected = reference_schedule(total, warmup, 1e-4, 1e-6, 5e-6)
        assert len(expected) == total
        for step in range(total):
            assert math.isclose(learning_rate(step, total, warmup, 1e-4, 1e-6, 5e-6),
                                expected[step], rel_tol=1e-12), (total, warmup, step)


def test_schedule_landmarks():
    assert learning_rate(0, 100, 10, 1e-4, 1e-6, 0.0) == 1e-6
    # The peak is reached at the last warm-up step, W - 1, and held at W (cosine start).
    assert math.isclose(learning_rate(9, 100, 10, 1e-4, 1e-6, 0.0), 1e-4)
    assert learning_rate(8, 100, 10, 1e-4, 1e-6, 0.0) < 1e-4
    assert learning_rate(10, 100, 10, 1e-4, 1e-6, 0.0) == 1e-4
    assert math.isclose(learning_rate(55, 100, 10, 1e-4, 1e-6, 0.0), 5e-5)
    assert learning_rate(100, 100, 10, 1e-4, 1e-6, 2e-6) == 2e-6
    assert learning_rate(0, 100, 1, 1e-4, 1e-6, 0.0) == 1e-6  # one warm-up step: the start


def test_optimizer_groups():
    model = torch.nn.ModuleDict({"clip": torch.nn.Linear(4, 4), "img2text": torch.nn.Linear(4, 2),
                                 "norm": torch.nn.LayerNorm(4)})
    model.register_parameter("logit_scale", torch.nn.Parameter(torch.tensor(1.0)))
    frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)
    model.register_parameter("frozen", frozen)
    cfg = EasyDict(train={"weight_decay": 0.02, "lr": 1e-4, "betas": [0.9, 0.98], "eps": 1e-8})
    optimizer = build_optimizer(model, cfg, {"img2text.": 10.0})
    groups = {(g["lr_scale"], g["weight_decay"]): {id(p) for p in g["params"]}
              for g in optimizer.param_groups}
    assert groups[(1.0, 0.02)] == {id(model["clip"].weight)}
    assert groups[(10.0, 0.02)] == {id(model["img2text"].weight)}
    assert groups[(10.0, 0.0)] == {id(model["img2text"].bias)}
    assert groups[(1.0, 0.0)] == {id(model["clip"].bias), id(model["norm"].weight),
                                  id(model["norm"].bias), id(model.logit_scale)}
    assert all(id(frozen) not in params for params in groups.values())
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-8


def test_sampler_shares_each_global_batch_between_processes():
    single = EpochSampler(50, batch_size=8, seed=3)
    ranks = [EpochSampler(50, batch_size=4, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in (single, *ranks):
        sampler.set_epoch(2)
    order = [i for i, _ in single]
    parts = [[i for i, _ in sampler] for sampler in ranks]
    assert len(order) == 48 and len(parts[0]) == len(parts[1]) == 24
    for batch in range(6):  # global batch k = rank 0's slice + rank 1's slice
        assert order[batch * 8:batch * 8 + 8] == parts[0][batch * 4:batch * 4 + 4] + \
            parts[1][batch * 4:batch * 4 + 4]
    seeds = dict(single)
    assert seeds[order[0]] == sample_seed(3, 2, order[0])
    single.set_epoch(3)
    assert [i for i, _ in single] != order  # a new order every epoch
    single.set_epoch(2, start_batch=4)  # resume after 4 batches of epoch 2
    assert [i for i, _ in single] == order[32:] and len(single) == 16


def test_cpu_trains_in_fp32():
    assert training_dtype(torch.device("cpu"),
                          EasyDict(train={"amp": True, "amp_dtype": "float16"})) is None


def test_to_cpu_keeps_the_structure():
    from engine.trainer import to_cpu
    state = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), 3)], "c": "x"}
    moved = to_cpu(state)
    assert moved["c"] == "x" and moved["b"][1][1] == 3 and isinstance(moved["b"][1], tuple)
    assert torch.equal(moved["a"], state["a"]) and moved["a"].device.type == "cpu"


def test_one_precision_policy():
    """Training and inference read the same dtype key; the CPU is always float32; a bad
    name is refused."""
    import pytest

    from utils.errors import ConfigError
    from utils.precision import autocast_dtype, inference_dtype
    cfg = EasyDict(train={"amp": True, "amp_dtype": "bfloat16"}, test={"amp": True})
    assert inference_dtype(torch.device("cpu"), cfg) is None
    assert autocast_dtype(torch.device("cpu"), True, "float16") is None
    with pytest.raises(ConfigError, match="train.amp_dtype='half' is not one of"):
        autocast_dtype(torch.device("cpu"), True, "half")


def test_fused_adamw_is_used_on_the_cpu_and_updates_as_foreach_does(monkeypatch):
    """build_optimizer takes the fused kernel where torch has it (the CPU here); a few steps
    of it give the weights foreach gives, to float tolerance. Where it is missing, foreach."""
    cfg = EasyDict(train={"weight_decay": 0.2, "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6})

    def run(kernel):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                    torch.nn.Linear(16, 4))
        optimizer = build_optimizer(model, cfg, {"2.": 10.0})
        for group in optimizer.param_groups:
            group.update(kernel)
        for step in range(5):
            optimizer.zero_grad(set_to_none=True)
            model(torch.randn(6, 8, generator=torch.Generator().manual_seed(step))).square() \
                .mean().backward()
            optimizer.step()
        return optimizer, [p.detach().clone() for p in model.parameters()]

    optimizer, _ = run({})
    assert all(group["fused"] for group in optimizer.param_groups)
    _, fused = run({"fused": True, "foreach": None})
    _, foreach = run({"fused": None, "foreach": True})
    for a, b in zip(fused, foreach):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    real_adamw = torch.optim.AdamW

    def without_fused(params, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real_adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", without_fused)
    fallback = build_optimizer(torch.nn.Linear(3, 3), cfg)
    assert all(group["foreach"] and not group["fused"] for group in fallback.param_groups)


def test_resume_keeps_the_kernel_chosen_now():
    """A checkpoint's optimizer groups carry the kernel of the run that saved it; loading
    keeps the one build_optimizer chose (and the state)."""
    from engine.trainer import load_optimizer_state

    cfg = EasyDict(train={"weight_decay": 0.2, "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6})
    model = torch.nn.Linear(4, 4)
    old = build_optimizer(model, cfg)
    for group in old.param_groups:
        group.update(fused=None, foreach=True)
    model(torch.randn(2, 4)).sum().backward()
    old.step()
    optimizer = build_optimizer(model, cfg)
    load_optimizer_state(optimizer, old.state_dict())
    assert all(group["fused"] and not group["foreach"] for group in optimizer.param_groups)
    assert int(optimizer.state[model.weight]["step"]) == 1
