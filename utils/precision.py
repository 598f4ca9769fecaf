"""Numeric precision of training and evaluation: one place decides the autocast dtype."""
from __future__ import annotations

import contextlib

import torch

from utils.errors import ConfigError

AMP_DTYPES = ("float16", "bfloat16")


def autocast_dtype(device: torch.device, enabled: bool, name: str = "float16"):
    """The autocast dtype on CUDA (``name``: float16 | bfloat16), or None for float32: on
    the CPU, or when ``enabled`` is false. bfloat16 falls back to float16 on GPUs without it."""
    if name not in AMP_DTYPES:
        raise ConfigError(f"train.amp_dtype={name!r} is not one of {', '.join(AMP_DTYPES)}")
    if device.type != "cuda" or not enabled:
        return None
    if name == "bfloat16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return getattr(torch, name)


def autocast(device: torch.device, dtype):
    """Autocast to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def training_dtype(device: torch.device, cfg):
    """Autocast dtype of training (``train.amp``, ``train.amp_dtype``)."""
    return autocast_dtype(device, cfg.train.amp, cfg.train.amp_dtype)


def inference_dtype(device: torch.device, cfg):
    """Autocast dtype of evaluation and search (``test.amp``, ``train.amp_dtype``; off:
    float32, as the paper's code evaluates)."""
    return autocast_dtype(device, cfg.test.amp, cfg.train.amp_dtype)


@contextlib.contextmanager
def full_float32():
    """Float32 matrix products and convolutions on CUDA at full precision (TF32 off) inside,
    the previous settings restored after. Training turns TF32 on for speed; evaluation,
    which picks the best checkpoint, runs without it, as the paper's code evaluates."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
