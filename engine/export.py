"""Export a model: its weights alone, fit to share (no optimizer, scaler or random states),
or its encoders as ONNX graphs for clients without PyTorch.

    python -m engine.export outputs/Market_finetune --out market.pth
    python -m engine.export outputs/Market_finetune/checkpoint_best.pth --out market.safetensors
    python -m engine.export outputs/TriPEDES_pretrain --out stage1.pth --half
    python -m engine.export outputs/Market_finetune --format onnx --out market_onnx
    python -m engine.export checkpoint/ViT-B-16.pt --format onnx --out clip_onnx

Weights (``--format weights``, the default): the file holds the model state, the resolved
config, the stage, the epoch and trial, and the run's ``results.json`` when there is one
beside the checkpoint. A ``.pth`` loads with ``torch.load(weights_only=True)``; a
``.safetensors`` (needs the safetensors package) comes with ``<name>.json`` for everything
but the tensors. ``test.py``, ``search.py``, ``app.py`` and ``model.init_from`` take either.
``--half`` stores floating-point tensors as float16 (half the size; they are widened back to
float32 on loading, so numbers move slightly).

ONNX (``--format onnx``, needs ``pip install onnx onnxruntime``): ``--out`` names a new
folder that receives ``image_encoder.onnx``, ``text_encoder.onnx``, for a stage-2 model
``query_encoder.onnx`` (a raw sketch feature and the tokens of "a photo of * , and ..." ->
the composed query), ``config.json`` and the tokenizer's vocabulary (``engine.onnx_export``
describes them). The source may also be a file of CLIP weights; ``KEY=VALUE`` overrides
its config (e.g. ``model.image_size=[384,128]``, ``model.quick_gelu=false``). The export
runs every graph with onnxruntime against PyTorch and prints the largest difference;
``engine.onnx_runtime.OnnxEncoders`` runs the folder.

Nothing is ever overwritten.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.models import checkpoint_file, load_for_inference
from engine.onnx_export import check_out_folder, export_onnx
from engine.onnx_runtime import import_onnxruntime
from utils.checkpoint import load_checkpoint, save_atomic, sidecar
from utils.errors import UserError, exit_on_user_error

SUFFIXES = (".pth", ".pt", ".safetensors")
FORMATS = ("weights", "onnx")
STAGE_NAMES = {"token": "the stage-2 model", "adapt": "the stage-1 model",
               "clip": "the CLIP weights"}


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
    parser = argparse.ArgumentParser(prog="python -m engine.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run folder (its checkpoint_best.pth) or checkpoint file "
                                       "(--format onnx: or a file of CLIP weights)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides (--format onnx)")
    parser.add_argument("--format", choices=FORMATS, default="weights",
                        help="weights: one .pth/.safetensors file; onnx: a folder of encoders")
    parser.add_argument("--out", required=True,
                        help="file to write (.pth or .safetensors), or with --format onnx a "
                             "new folder")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    if args.format == "onnx":
        return export_onnx_folder(args)
    if args.overrides:
        raise UserError(f"{args.overrides[0]}: KEY=VALUE overrides apply to --format onnx only")
    source = checkpoint_file(Path(args.source))
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


def export_onnx_folder(args) -> list:
    """``--format onnx``: the encoders of any model ``load_for_inference`` reads, into the
    new folder ``--out``; prints each file's size and its largest difference from PyTorch."""
    if args.half:
        raise UserError("--half applies to --format weights; ONNX graphs are exported in "
                        "float32")
    import_onnxruntime(for_export=True)
    out = Path(args.out)
    check_out_folder(out)  # before the model is loaded
    source = checkpoint_file(Path(args.source))
    loaded = load_for_inference(source, args.overrides)
    stage = "clip" if loaded.zero_shot else loaded.stage.name
    differences = export_onnx(loaded.model, loaded.cfg, stage, source, out)
    written = sorted(out.iterdir())
    for name, difference in differences.items():
        print(f"{out / name}: {(out / name).stat().st_size / 2 ** 20:.1f} MiB, max |onnxruntime "
              f"- PyTorch| = {difference:.1e}")
    print(f"wrote {out}: {len(written)} files, the encoders of {STAGE_NAMES[stage]} {source}")
    return written


if __name__ == "__main__":
    main()
