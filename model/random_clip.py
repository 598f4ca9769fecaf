"""Write a random-weight CLIP checkpoint in OpenAI's key layout.

No CLIP weights can be downloaded in some places (and tests must not), so tests and the
CPU demo start from a randomly initialised CLIP saved exactly like OpenAI's state dicts:

    python -m model.random_clip --out checkpoint/tiny-random.pt --preset tiny
    python -m model.random_clip --out /tmp/vitb16-random.pt --preset vit-b-16

``--gelu`` writes a GELU model as open_clip saves its LAION ones (the same keys, without
OpenAI's metadata scalars); name it ``.bin`` or ``.safetensors`` and load it with
``model.quick_gelu=false``:

    python -m model.random_clip --out /tmp/open_clip_pytorch_model.bin --preset tiny --gelu
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from model.clip import ARCHIVE_METADATA_KEYS, CLIP, ClipArchitecture

VOCAB_SIZE = 49408  # CLIP's BPE vocabulary
PRESETS = {
    # A few hundred thousand parameters per tower: trains on a laptop CPU in minutes.
    "tiny": ClipArchitecture(embed_dim=64, patch_size=8, vision_width=64, vision_layers=2,
                             pretrained_grid=(4, 4), text_width=64, text_layers=2,
                             vocab_size=VOCAB_SIZE, pretrained_context_length=77,
                             quick_gelu=True),
    # The CPU demo's (demo.sh): the tiny towers twice as deep, patches of 4 pixels for its
    # 32x16 input, so that line drawings keep their detail in 8x4 patches.
    "demo": ClipArchitecture(embed_dim=64, patch_size=4, vision_width=64, vision_layers=4,
                             pretrained_grid=(8, 8), text_width=64, text_layers=4,
                             vocab_size=VOCAB_SIZE, pretrained_context_length=77,
                             quick_gelu=True),
    # The shapes of OpenAI's ViT-B/16 (and of open_clip's ViT-B-16).
    "vit-b-16": ClipArchitecture(embed_dim=512, patch_size=16, vision_width=768, vision_layers=12,
                                 pretrained_grid=(14, 14), text_width=512, text_layers=12,
                                 vocab_size=VOCAB_SIZE, pretrained_context_length=77,
                                 quick_gelu=True),
}


def random_clip_state_dict(arch: ClipArchitecture, seed: int = 0) -> dict:
    """A CLIP state dict with CLIP's random initialisation, plus OpenAI's metadata entries.

    The weights do not depend on ``arch.quick_gelu``: the activation is not in a state dict.
    """
    torch.manual_seed(seed)
    grid = arch.pretrained_grid
    model = CLIP(arch, (grid[0] * arch.patch_size, grid[1] * arch.patch_size),
                 arch.pretrained_context_length)
    state_dict = dict(model.state_dict())
    state_dict["input_resolution"] = torch.tensor(grid[0] * arch.patch_size)
    state_dict["context_length"] = torch.tensor(arch.pretrained_context_length)
    state_dict["vocab_size"] = torch.tensor(arch.vocab_size)
    return state_dict


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="file to write (refuses to overwrite)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, help="override the layer count of both towers")
    parser.add_argument("--width", type=int, help="override width and embed dim of both towers")
    parser.add_argument("--patch", type=int, help="override the patch size")
    parser.add_argument("--gelu", action="store_true",
                        help="a GELU model in open_clip's form (load with model.quick_gelu=false)")
    args = parser.parse_args(argv)
    arch = PRESETS[args.preset]
    if args.gelu:
        arch = dataclasses.replace(arch, quick_gelu=False)
    if args.layers:
        arch = dataclasses.replace(arch, vision_layers=args.layers, text_layers=args.layers)
    if args.width:
        arch = dataclasses.replace(arch, vision_width=args.width, text_width=args.width,
                                   embed_dim=args.width)
    if args.patch:
        arch = dataclasses.replace(arch, patch_size=args.patch)
    out = Path(args.out)
    if out.exists():
        parser.exit(2, f"error: {out} already exists; choose another --out or remove it\n")
    state_dict = random_clip_state_dict(arch, args.seed)
    if args.gelu:  # open_clip's files have no metadata scalars
        state_dict = {key: value for key, value in state_dict.items()
                      if key not in ARCHIVE_METADATA_KEYS}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            parser.exit(2, "error: writing .safetensors needs the safetensors package "
                           "(pip install safetensors)\n")
        save_file(state_dict, str(out))
    else:
        torch.save(state_dict, out)
    activation = ("GELU: load it with model.quick_gelu=false" if args.gelu
                  else "QuickGELU, as OpenAI's")
    print(f"wrote random {args.preset} CLIP ({arch.vision_layers}+{arch.text_layers} layers, "
          f"{activation}) to {out}")


if __name__ == "__main__":
    main()
