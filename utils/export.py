"""Write a checkpoint's weights alone, fit to share: no optimizer, scaler or random states.

    python -m utils.export outputs/Market_finetune --out market.pth
    python -m utils.export outputs/Market_finetune/checkpoint_best.pth --out market.safetensors
    python -m utils.export outputs/TriPEDES_pretrain --out stage1.pth --half

The file holds the model state, the resolved config, the stage, the epoch and trial, and
the run's ``results.json`` when there is one beside the checkpoint. A ``.pth`` loads with
``torch.load(weights_only=True)``; a ``.safetensors`` (needs the safetensors package) comes
with ``<name>.json`` for everything but the tensors. ``test.py``, ``search.py``, ``app.py``
and ``model.init_from`` take either. ``--half`` stores floating-point tensors as float16
(half the size; they are widened back to float32 on loading, so numbers move slightly).
Nothing is ever overwritten.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from utils.checkpoint import load_checkpoint, save_atomic, sidecar
from utils.errors import UserError, exit_on_user_error

SUFFIXES = (".pth", ".pt", ".safetensors")


def weights_of(checkpoint: dict, results: dict | None = None, half: bool = False) -> dict:
    """The shareable part of a checkpoint: stage, model state (contiguous CPU tensors,
    float16 with ``half``), config, epoch, trial and ``results``."""
    state = {}
    for key, tensor in checkpoint["model"].items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.contiguous()
    exported = {"stage": checkpoint["stage"], "model": state, "config": checkpoint["config"],
                "epoch": checkpoint.get("epoch"), "trial": checkpoint.get("trial"),
                "exported": {"half": half}}
    if results is not None:
        exported["results"] = results
    return exported


def source_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoint_best.pth``."""
    if path.is_dir():
        best = path / "checkpoint_best.pth"
        if best.is_file():
            return best
        if any(path.glob("trial_*/checkpoint_best.pth")):
            raise UserError(f"{path} is a run folder of trials: export each "
                            f"{path / 'trial_<t>' / 'checkpoint_best.pth'} on its own")
        raise UserError(f"{path} holds no checkpoint_best.pth; give a checkpoint file")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def write(exported: dict, out: Path) -> list:
    """Write ``exported`` to ``out`` (``.pth``/``.pt`` or ``.safetensors`` + ``.json``);
    refuse before writing anything if a target exists. Returns the files written."""
    if out.suffix not in SUFFIXES:
        raise UserError(f"--out {out}: the name must end in {', '.join(SUFFIXES)}")
    targets = [out, sidecar(out)] if out.suffix == ".safetensors" else [out]
    existing = [target for target in targets if target.exists()]
    if existing:
        raise UserError(f"{existing[0]} exists; exports never overwrite, choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".safetensors":
        save_atomic(exported, out)
        return targets
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("writing .safetensors needs the safetensors package (pip install "
                        "safetensors), or export to a .pth") from None
    meta = {key: value for key, value in exported.items() if key != "model"}
    temporary = out.with_name(f".{out.name}.tmp")
    save_file(exported["model"], str(temporary))
    sidecar(out).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    temporary.replace(out)
    return targets


@exit_on_user_error
def main(argv=None) -> list:
    parser = argparse.ArgumentParser(prog="python -m utils.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run folder (its checkpoint_best.pth) or checkpoint file")
    parser.add_argument("--out", required=True, help="file to write: .pth or .safetensors")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = parser.parse_args(argv)
    source = source_checkpoint(Path(args.source))
    checkpoint = load_checkpoint(source)
    results_path = source.parent / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) \
        if results_path.is_file() else None
    written = write(weights_of(checkpoint, results, args.half), Path(args.out))
    before = source.stat().st_size
    after = sum(path.stat().st_size for path in written)
    print(f"wrote {', '.join(map(str, written))}: {after / 2 ** 20:.1f} MiB "
          f"(from {before / 2 ** 20:.1f} MiB: {source})")
    return written


if __name__ == "__main__":
    main()
