"""Helpers shared by the benchmarks: timing, memory, JSON output, FLOP counts, and the
reference-style attention used for comparisons.

FLOP model (``transformer_forward_flops``): a multiply-add is 2 FLOPs and only matrix
products are counted (norms, activations, softmax and the optimizer are left out). One
pre-norm block of width D over a sequence of L tokens, per sequence:

    q/k/v + output projections   2 * L * 4 D^2
    MLP (D -> 4D -> D)           2 * L * 8 D^2
    Q K^T and A V                2 * 2 * L^2 D    (full L x L, causal masks included)
    -------------------------------------------
    per block                    24 L D^2 + 4 L^2 D

Only one output per sequence is used (the class token, the end-of-text token), so the
last block computes only that one (``model.clip.Transformer``): keys and values over L
(2 * L * 2 D^2), the query, output projection and MLP at one position (2 * 10 D^2), and
one query's attention (2 * 2 * L D): 4 L D^2 + 20 D^2 + 4 L D (``pooled=True``).

The image tower adds the patch embedding (2 * P * 3 p^2 D for P patches of side p) and
the output projection (2 D E); the text tower adds its projection (2 D E). Training
costs forward + backward, where the backward is one forward's worth for the gradient
of the inputs plus one more for the gradient of the weights: 3x the forward for a
trained tower, 2x for a frozen tower that gradients still flow through (stage 2's text
tower, which passes gradients to the pseudo-word), 1x for work done without gradients.
``train_step_flops`` counts the useful work of a step only: the extra no-grad pass of
``loss.separate_soft_target_pass`` and recomputation by ``model.grad_checkpointing`` are
overhead, so a configuration that does them shows a lower MFU, not more FLOPs.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.clip import SelfAttention

# Dense bf16 tensor-core peak (FLOP/s) by GPU name; MFU is reported against this.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 80GB HBM3", 989e12),  # SXM
    ("H100 SXM", 989e12),
    ("A100", 312e12),
)

CAPTIONS = (
    "A woman with long black hair wears a red coat, blue jeans and white shoes.",
    "The man is wearing a grey hoodie, black trousers and carries a brown backpack.",
    "A young girl in a yellow dress with a white hat and black sandals.",
    "He has short hair and wears a white shirt, dark shorts and a black bag on his shoulder.",
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn, device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1000.0


def summarize_ms(times: list) -> dict:
    return {"median": statistics.median(times), "min": min(times)}


class PeakMemory:
    """Peak memory inside a ``with`` block, in MB: ``.peak_mb`` the highest reached and
    ``.mb`` how far it rose above the start. On CUDA, torch's allocations (the peak is reset
    on entry); on the CPU, the process's resident memory, whose high-water mark Linux resets
    on entry through ``/proc/self/clear_refs``, so that nothing the process did before (or
    a parent it was forked from) counts. Both None where that reset is not possible."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.mb, self.peak_mb = device, None, None, None

    @staticmethod
    def _status_mb(field: str) -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2 ** 20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current
            self.start = self._status_mb("VmRSS")
        except (OSError, AttributeError):
            self.start = None
        return self

    def __exit__(self, *exc_info):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        elif self.start is not None:
            self.peak_mb = self._status_mb("VmHWM")
        if self.peak_mb is not None:
            self.mb = self.peak_mb - self.start
        return False


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, or None for the CPU or a GPU not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def emit(record: dict, jsonl: str | None = None) -> dict:
    """Print ``record`` as one JSON line (and append it to ``jsonl`` when given)."""
    line = json.dumps(record)
    print(line, flush=True)
    if jsonl:
        path = Path(jsonl)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return record


def finite_round(value: float, digits: int = 3):
    return round(value, digits) if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------ FLOPs
def transformer_forward_flops(width: int, layers: int, length: int, sequences: int,
                              pooled: bool = True) -> float:
    """Forward matmul FLOPs of ``layers`` blocks over ``sequences`` sequences of ``length``;
    ``pooled``: the last block computes one output position per sequence."""
    per_block = 24 * length * width ** 2 + 4 * length ** 2 * width
    last = (4 * length * width ** 2 + 20 * width ** 2 + 4 * length * width) if pooled \
        else per_block
    return float(sequences * ((layers - 1) * per_block + last))


def image_tower_flops(arch, image_size, images: int, pooled: bool = True) -> float:
    """Forward FLOPs of the ViT on ``images`` images of ``image_size`` [H, W]."""
    patches = (image_size[0] // arch.patch_size) * (image_size[1] // arch.patch_size)
    width = arch.vision_width
    embed = 2 * patches * 3 * arch.patch_size ** 2 * width
    project = 2 * width * arch.embed_dim
    return images * (embed + project) + transformer_forward_flops(
        width, arch.vision_layers, patches + 1, images, pooled)


def text_tower_flops(arch, context_length: int, texts: int) -> float:
    """Forward FLOPs of the text transformer on ``texts`` texts of ``context_length`` tokens."""
    project = 2 * arch.text_width * arch.embed_dim
    return texts * project + transformer_forward_flops(arch.text_width, arch.text_layers,
                                                       context_length, texts)


def _forward_flops(stage: str, cfg, arch, batch_size: int,
                   text_length: int | None = None) -> tuple:
    """(trained, frozen): forward FLOPs of a step's model over ``batch_size`` samples in
    the parts that get gradients and in those that do not (stage 2's text tower)."""
    image_size = cfg.model.image_size
    length = text_length or cfg.model.context_length
    if stage == "adapt":
        images = 2 * batch_size + (batch_size if cfg.loss.ss > 0 else 0)  # photo, sketch (+view)
        return (image_tower_flops(arch, image_size, images)
                + text_tower_flops(arch, length, batch_size)), 0
    # Stage 2: sketches and photos through the trained image tower, the mapping network,
    # and the composed prompt through the frozen text tower.
    widths = ([arch.embed_dim] + [cfg.model.middle_dim] * cfg.model.n_layer
              if cfg.model.mapping_type == "MLP" else [arch.embed_dim])
    widths.append(arch.text_width)
    mapping = sum(2 * a * b for a, b in zip(widths, widths[1:])) * batch_size
    return (image_tower_flops(arch, image_size, 2 * batch_size) + mapping,
            text_tower_flops(arch, length, batch_size))


def train_step_flops(stage: str, cfg, arch, batch_size: int,
                     text_length: int | None = None) -> float:
    """Useful FLOPs of one training step (forward + backward) of ``stage``; see the module
    docstring for the model. ``text_length``: the tokens the text tower runs on (the batch's
    longest text; padding after it is not computed), ``model.context_length`` if not given.
    Trained parts cost 3x their forward; the frozen text tower of stage 2, 2x (its
    backward reaches the pseudo-word but no weight gradient)."""
    trained, frozen = _forward_flops(stage, cfg, arch, batch_size, text_length)
    return 3 * trained + 2 * frozen


def forward_pass_flops(stage: str, cfg, arch, batch_size: int,
                       text_length: int | None = None) -> float:
    """FLOPs of one gradient-free forward pass of a step's model over ``batch_size``
    samples: the extra work a step executes beyond ``train_step_flops`` when it caches
    features for accumulation (its first pass) or computes soft targets in a pass of their
    own (stage 1)."""
    return sum(_forward_flops(stage, cfg, arch, batch_size, text_length))


def executed_step_flops(stage: str, cfg, arch, batch_size: int, accum_steps: int,
                        text_length: int | None = None) -> float:
    """All the FLOPs a training step runs: the useful ones (``train_step_flops``), plus
    the first, gradient-free pass of feature-caching accumulation (``accum_steps`` > 1)
    and stage 1's separate soft-target pass (``loss.separate_soft_target_pass``)."""
    extra = 0
    if accum_steps > 1:
        extra += 1
    if stage == "adapt" and cfg.loss.separate_soft_target_pass:
        extra += 1
    return (train_step_flops(stage, cfg, arch, batch_size, text_length)
            + extra * forward_pass_flops(stage, cfg, arch, batch_size, text_length))


# ------------------------------------------------------------- reference-style attention
class ExplicitAttention(SelfAttention):
    """``SelfAttention`` computed the way ``nn.MultiheadAttention(need_weights=True)`` does
    it: softmax(Q K^T / sqrt(d) + mask) materialised as a [B, H, L, L] tensor, then A V, and
    the head-averaged weights computed (and, as by the callers, thrown away). The same
    parameters and the same result as the fused kernel; only the cost differs. Where the
    block asks for one output position per sequence (the last block), all queries are still
    computed and one row kept."""

    def forward(self, x: torch.Tensor, causal: bool,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, d]
        scores = (query * head_dim ** -0.5) @ key.transpose(-2, -1)  # [B, H, L, L]
        if causal:
            mask = torch.full((length, length), float("-inf"), device=x.device,
                              dtype=scores.dtype).triu_(1)
            scores = scores + mask
        weights = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        out = weights @ value  # [B, H, L, d]
        weights.mean(dim=1)  # the [B, L, L] average need_weights=True returns
        out = out.transpose(1, 2).reshape(batch, length, width)
        if positions is not None:  # every query computed, as the reference does; one kept
            out = out[torch.arange(batch, device=x.device), positions]
        return self.out_proj(out)


def use_explicit_attention(model: torch.nn.Module) -> int:
    """Turn every ``SelfAttention`` inside ``model`` (this instance only) into an
    ``ExplicitAttention`` with the same parameters; returns how many."""
    attentions = [module for module in model.modules() if type(module) is SelfAttention]
    for module in attentions:
        module.__class__ = ExplicitAttention
    return len(attentions)
