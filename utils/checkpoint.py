"""Project checkpoints: atomic writes, safe reads, and the random states for exact resume.

A checkpoint is a dict of tensors and plain Python values only, so it always loads with
``torch.load(weights_only=True)``:
``{"stage", "model", "config", "epoch", "step", "optimizer", "scaler", "best_score",
"rng", ...}``.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from model.clip import UNREADABLE_FILE_ERRORS
from utils.errors import UserError

CHECKPOINT_NAMES = ("checkpoint_last.pth", "checkpoint_best.pth")
STAGE_NAMES = {"adapt": "stage 1 (train_adapt.py)", "token": "stage 2 (train_token.py)"}


def save_atomic(state: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash at any moment leaves either the old or the new checkpoint, never half of one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path, expected_stage: str | None = None) -> dict:
    """Read a project checkpoint (weights only); errors name the file and what was expected."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a checkpoint file such as "
                        f"{path / 'checkpoint_best.pth'}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as error:
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0][:200]}"
                        ) from None
    if not isinstance(checkpoint, dict) or not {"model", "config", "stage"} <= checkpoint.keys():
        raise UserError(f"{path} is not a checkpoint of this project (expected a dict with "
                        "'model', 'config' and 'stage'; an OpenAI CLIP file goes in "
                        "model.pretrained)")
    if expected_stage is not None and checkpoint["stage"] != expected_stage:
        raise UserError(f"{path} is a {STAGE_NAMES.get(checkpoint['stage'], checkpoint['stage'])} "
                        f"checkpoint; expected a {STAGE_NAMES[expected_stage]} checkpoint")
    return checkpoint


def random_states() -> dict:
    """Python, numpy and torch (CPU and CUDA) generator states, as tensors and plain types."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                        "position": int(position), "has_gauss": int(has_gauss),
                        "cached": float(cached)},
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
