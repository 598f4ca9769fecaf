"""Where a training step's time goes: one step under ``torch.profiler``, its operators'
own (self) time sorted into categories, and the matrix-product peak of the same machine.

Categories, by the operator's name and the region it ran in:

    data              host-to-device copy of the batch (the region ``DATA_REGION``)
    optimizer         everything inside the optimizer's step and zero_grad (and the
                      grad scaler's unscaling), whatever the operator
    matrix products   mm, addmm, bmm, linear, convolutions and their backward
    attention         the fused scaled-dot-product attention kernels, forward and backward
    copies            copy_, casts (to/_to_copy), clone, contiguous, cat/stack, fill_/zero_
                      and the CUDA runtime's memcpy/memset
    element-wise      every other tensor operator (activations, norms, adds, multiplies,
                      reductions, softmax ...)
    framework         autograd nodes, record_function ranges and Python: what the profiler
                      does not attribute to an operator (the rest of the wall time on the CPU)

On the CPU the self CPU time of each operator is counted; on CUDA the time of the GPU
kernels each operator launched, and what the GPU spends waiting is ``idle``.
"""
from __future__ import annotations

import time
import warnings

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

DATA_REGION = "bench.data"
OPTIMIZER_REGIONS = ("Optimizer.step", "Optimizer.zero_grad")
CATEGORIES = ("matrix products", "attention", "element-wise", "copies", "optimizer", "data",
              "framework")
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "matmul", "linear",
              "dot", "convolution", "_convolution", "convolution_backward",
              "mkldnn_convolution", "cudnn_convolution", "_scaled_mm"}
COPY_OPS = {"copy_", "to", "_to_copy", "clone", "contiguous", "cat", "stack", "fill_", "zero_",
            "zeros", "zeros_like", "full", "_foreach_copy_"}
AMP_OPS = ("_amp_foreach_non_finite_check_and_unscale_", "_amp_update_scale_")


def operator_category(name: str) -> str:
    """The category of one operator by its name (``aten::mm``, ``Memcpy HtoD`` ...)."""
    lowered = name.lower()
    if lowered.startswith(("memcpy", "memset")):
        return "copies"
    if not name.startswith("aten::"):
        return "framework"
    op = name[len("aten::"):]
    if any(op.startswith(amp) for amp in AMP_OPS):
        return "optimizer"
    if "attention" in op:
        return "attention"
    if op in MATMUL_OPS:
        return "matrix products"
    if op in COPY_OPS:
        return "copies"
    return "element-wise"


def _region(event) -> str | None:
    """The data or optimizer region an event ran inside, if any."""
    while event is not None:
        if event.name == DATA_REGION:
            return "data"
        if event.name.startswith(OPTIMIZER_REGIONS):
            return "optimizer"
        event = event.cpu_parent
    return None


def categorize(events, on_device: bool) -> dict:
    """Milliseconds per category from a profiler's events: self CPU time, or on CUDA the
    self device (kernel) time."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        if getattr(event, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue  # a kernel: its time is counted with the operator that launched it
        micros = event.self_device_time_total if on_device else event.self_cpu_time_total
        if micros <= 0:
            continue
        category = _region(event) or operator_category(event.name)
        totals[category] += micros / 1000.0
    return totals


def profile_step(step, device: torch.device) -> dict:
    """Run ``step`` twice under the profiler (the first warms it up) and sort the second's
    time: milliseconds per category and the step's wall time. On the CPU the wall time
    the operators do not account for (Python) is framework time; on CUDA the time the
    GPU runs no kernel is ``idle``."""
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    wall_ms, traced = 0.0, []
    with warnings.catch_warnings(), profile(
            activities=activities, schedule=schedule(wait=0, warmup=1, active=1),
            on_trace_ready=lambda done: traced.append(done.events())) as prof:
        warnings.simplefilter("ignore")  # "the profiler clears events at the end of each cycle"
        for _ in range(2):
            if on_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if on_cuda:
                torch.cuda.synchronize(device)
            wall_ms = (time.perf_counter() - start) * 1000.0
            prof.step()
    totals = categorize(traced[-1], on_cuda)
    counted = sum(totals.values())
    if on_cuda:
        totals["idle"] = max(wall_ms - counted, 0.0)
    else:
        totals["framework"] += max(wall_ms - counted, 0.0)
    return {"wall_ms": wall_ms, "ms": totals}


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None,
                      repeats: int | None = None) -> float:
    """The best FLOP/s of a square matrix product in ``dtype`` on ``device``, measured
    here: the peak the step's achieved rate is compared with."""
    on_cuda = device.type == "cuda"
    size = size or (8192 if on_cuda else 2048)
    repeats = repeats or (20 if on_cuda else 5)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    best = float("inf")
    for index in range(repeats + 2):  # two warm-ups
        if on_cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if on_cuda:
            torch.cuda.synchronize(device)
        if index >= 2:
            best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def format_profile(result: dict, achieved_flops: float, peak: float) -> str:
    """The profile as a small table, then the achieved rate (of the timed steps) against
    the measured peak."""
    wall = result["wall_ms"]
    lines = [f"{'category':<18}{'ms':>10}{'share':>9}"]
    for category, ms in result["ms"].items():
        lines.append(f"{category:<18}{ms:>10.1f}{100.0 * ms / wall:>8.1f}%")
    lines.append(f"{'step (wall)':<18}{wall:>10.1f}")
    lines.append(f"achieved {achieved_flops / 1e12:.3f} TFLOP/s of a measured matmul peak of "
                 f"{peak / 1e12:.3f} TFLOP/s ({100.0 * achieved_flops / peak:.1f}%)")
    return "\n".join(lines)
