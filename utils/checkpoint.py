"""Project checkpoints: atomic writes, safe reads, and the random states for exact resume.

A checkpoint is a dict of tensors and plain Python values only, so it always loads with
``torch.load(weights_only=True)``:
``{"stage", "model", "config", "epoch", "step", "optimizer", "scaler", "best_score",
"rng", ...}``. Checkpoints of the paper's own code are read too and converted on the fly
(``utils.reference_checkpoint``); their config is an ``easydict.EasyDict``, which is read as
plain dicts without running any code from the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from utils.errors import UNREADABLE_FILE_ERRORS, UserError
from utils.reference_checkpoint import LAYOUTS, SCRIPT_NAMES, from_reference

CHECKPOINT_NAMES = ("checkpoint_last.pth", "checkpoint_best.pth")
STAGE_NAMES = {"adapt": "stage 1 (train_adapt.py)", "token": "stage 2 (train_token.py)"}
# The reference code pickles its config as an easydict.EasyDict (a dict subclass whose
# pickle sets items, which the weights-only reader allows on plain dict types only): it is
# read as an OrderedDict instead, never constructed, so easydict need not even be installed.
# Naming a stand-in for a global takes torch >= 2.6.
READ_AS = [(OrderedDict, "easydict.EasyDict")]


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
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path, expected_stage: str | None = None) -> dict:
    """Read a project checkpoint, or one of the reference code converted to ours (weights
    only); errors name the file and what was expected."""
    path = Path(path)
    if path.is_dir():
        seeds = sorted(path.glob("seed_*/checkpoint_best.pth"))
        example = seeds[0] if seeds and not (path / "checkpoint_best.pth").exists() \
            else path / "checkpoint_best.pth"
        raise UserError(f"{path} is a folder; give a checkpoint file such as {example}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _check_stage(read_safetensors_checkpoint(path), path, expected_stage)
    try:
        with _reference_config_readable():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as error:
        raise UserError(f"cannot read checkpoint {path}: {_why_unreadable(error)}") from None
    if not isinstance(checkpoint, dict) or not {"model", "config", "stage"} <= checkpoint.keys():
        checkpoint = from_reference(checkpoint, path)
    if checkpoint is None:
        raise UserError(f"{path} is not a checkpoint of this project (a dict with 'model', "
                        "'config' and 'stage') nor of the paper's reference code "
                        f"({LAYOUTS}); an OpenAI CLIP file goes in model.pretrained")
    return _check_stage(checkpoint, path, expected_stage)


def checkpoint_progress(path: str | Path) -> dict | None:
    """How far the run of a project checkpoint got, ``{"stage", "epoch", "step", "trial",
    "best_score"}``, read without loading its tensors (memory-mapped); None when ``path``
    is missing or is not a readable project checkpoint."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UNREADABLE_FILE_ERRORS:
        return None
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        return None
    return {key: checkpoint.get(key) for key in ("stage", "epoch", "step", "trial",
                                                  "best_score")}


def _check_stage(checkpoint: dict, path: Path, expected_stage: str | None) -> dict:
    if expected_stage is not None and checkpoint["stage"] != expected_stage:
        names = SCRIPT_NAMES if checkpoint.get("source") == "reference" else STAGE_NAMES
        raise UserError(f"{path} is a {names.get(checkpoint['stage'], checkpoint['stage'])} "
                        f"checkpoint; expected a {STAGE_NAMES[expected_stage]} checkpoint")
    return checkpoint


def sidecar(path: Path) -> Path:
    """The JSON file that carries a ``.safetensors`` checkpoint's stage, config and results."""
    return Path(path).with_suffix(".json")


def read_safetensors_checkpoint(path: Path) -> dict:
    """A checkpoint exported as ``<name>.safetensors`` (the weights) + ``<name>.json``."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path}: reading .safetensors needs the safetensors package "
                        "(pip install safetensors)") from None
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise UserError(f"{path}: its config file {meta_path} is missing (python -m "
                        "engine.export writes both)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        state = load_file(str(path), device="cpu")
    except (json.JSONDecodeError, SafetensorError, OSError) as error:
        raise UserError(f"cannot read {path}: {str(error).splitlines()[0][:200]}") from None
    if not isinstance(meta, dict) or not {"stage", "config"} <= meta.keys():
        raise UserError(f"{meta_path} does not describe an exported checkpoint (expected "
                        "'stage' and 'config')")
    return {**meta, "model": state}


def _reference_config_readable():
    """Context in which ``torch.load(weights_only=True)`` reads EasyDict configs as dicts."""
    version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if version < (2, 6):
        return contextlib.nullcontext()
    return torch.serialization.safe_globals(READ_AS)


def _why_unreadable(error: Exception) -> str:
    """One line out of torch.load's many-line error."""
    message = str(error)
    refused = re.search(r"GLOBAL ([\w.]+) was not an allowed global", message)
    if refused:
        hint = (" (reading the reference code's EasyDict config needs torch >= 2.6)"
                if refused.group(1) == "easydict.EasyDict" else "")
        return (f"it holds a pickled {refused.group(1)}, and only tensors, plain Python values "
                f"and EasyDict configs are read from checkpoints (reading other classes could "
                f"run code from the file){hint}")
    detail = re.search(r"WeightsUnpickler error: *\n*(.+)", message)
    if detail:
        return f"not readable as weights only ({detail.group(1).strip()[:200]})"
    return message.splitlines()[0][:200] if message else type(error).__name__


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
