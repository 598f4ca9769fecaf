"""Checkpoints written by the paper's public code, read as checkpoints of this project.

The authors' code (github.com/littlexinyi/InteractReID, built on TBPS-CLIP) saves
``{"model": state_dict, "optimizer": ..., "config": EasyDict of its YAML}``; a file may also
hold the state dict alone, and every key may start with ``module.`` (saved from a
DistributedDataParallel wrapper). ``from_reference`` turns such a file into the dict that
``utils.checkpoint.load_checkpoint`` returns for our own files, so ``test.py --checkpoint``
and ``model.init_from`` take either.

The two layouts, and where their weights go here:

Stage 1 (their ``knowledge_adaptation.py``): the CLIP at the top level of the state dict.
    ``visual.*``         the ViT image tower, named as in OpenAI's CLIP  -> ``clip.visual.*``
    ``encode_text.*``    the text tower (token and position embeddings, ``transformer``,
                         ``ln_final``, ``text_projection``), named as in OpenAI's CLIP but
                         one level down                                  -> ``clip.*``
    ``logit_scale``                                                      -> ``clip.logit_scale``
    Heads of losses that were switched on (``simclr_mlp``, ``classifier``, ``cross_attn``,
    ``cross_modal_transformer``, ``ln_pre_t``, ``ln_pre_i``, ``ln_post``, ``mlm_head``) play
    no part in retrieval and are left out, with a log line naming them.

Stage 2 (their ``pseudo_token_learning.py``): the stage-1 layout under ``tbps_clip.``, plus
the mapping network at the top level under ``mapping.``:
    MLP:    block i (i = 0 .. n_layer-1) is Linear, Dropout, ReLU in its own Sequential,
            ``mapping.layers.<i>.0.{weight,bias}``          -> ``img2text.layers.<3i>.*``;
            then ``mapping.fc_out.{weight,bias}``           -> ``img2text.fc_out.*``
    Linear: one Linear, ``mapping.{weight,bias}``           -> ``img2text.fc_out.*``

What the shapes cannot tell comes from the stored config when there is one: the input size
(``experiment.input_resolution``; without it the position grid must be square), the
mapping network's dropout (``model.dropout``), the dataset (``data.dataset``) and the
PKU-Sketch trial (``data.trial``).
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from utils.config import defaults, merge, to_plain
from utils.errors import UserError

log = logging.getLogger(__name__)

# Their data.dataset names -> ours.
DATASET_NAMES = {"Tri-PEDES": "tri-pedes", "CUHK-PEDES": "cuhk-pedes", "ICFG-PEDES": "icfg-pedes",
                 "RSTPReid": "rstpreid", "MaSk1K": "mask1k", "PKUSketch": "pku-sketch"}
# Heads of their auxiliary losses (SimCLR, identity, masked language modelling).
AUXILIARY_HEADS = ("simclr_mlp.", "classifier.", "cross_attn.", "cross_modal_transformer.",
                   "ln_pre_t.", "ln_pre_i.", "ln_post.", "mlm_head.")
STAGE2_CLIP = "tbps_clip."
MAPPING = "mapping."
# The scripts that write each layout, for messages.
SCRIPT_NAMES = {"adapt": "stage 1 (the reference's knowledge_adaptation.py)",
                "token": "stage 2 (the reference's pseudo_token_learning.py)"}
LAYOUTS = ("stage 1: visual.*, encode_text.* and logit_scale; stage 2: the same under "
           "tbps_clip. plus mapping.*")
_MLP_BLOCK = re.compile(r"layers\.(\d+)\.0\.(weight|bias)")


def from_reference(raw, path: str | Path) -> dict | None:
    """A project checkpoint (``stage``, ``model``, ``config``, ...) equivalent to ``raw``, the
    object read from ``path``; None when ``raw`` is not in the reference layout."""
    state, their_config = _state_and_config(raw)
    if state is None:
        return None
    if f"{STAGE2_CLIP}visual.conv1.weight" in state:
        stage = "token"
    elif "visual.conv1.weight" in state and "encode_text.token_embedding.weight" in state:
        stage = "adapt"
    else:
        return None

    clip_prefix = STAGE2_CLIP if stage == "token" else ""
    model, mapping, dropped, unknown = {}, {}, [], []
    for key, value in state.items():
        inner = key[len(clip_prefix):]
        if stage == "token" and key.startswith(MAPPING):
            mapping[key[len(MAPPING):]] = value
        elif not key.startswith(clip_prefix):
            unknown.append(key)
        elif _clip_key(inner) is not None:
            model[_clip_key(inner)] = value
        elif inner.startswith(AUXILIARY_HEADS):
            dropped.append(key)
        else:
            unknown.append(key)

    mapping_cfg = {}
    if stage == "token":
        if not mapping:
            raise UserError(f"{path}: a stage-2 checkpoint of the reference code without its "
                            "mapping network (no mapping.* keys)")
        mapping_state, mapping_cfg, unknown_mapping = _mapping(mapping, path)
        model.update(mapping_state)
        unknown += unknown_mapping
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)"
                                          if len(unknown) > 8 else "")
        raise UserError(f"{path}: unexpected keys for a checkpoint of the reference code: "
                        f"{shown} (it reads {LAYOUTS}; auxiliary heads "
                        f"{', '.join(head.rstrip('.') for head in AUXILIARY_HEADS)} are left out)")
    if dropped:
        heads = sorted({key.removeprefix(STAGE2_CLIP).split(".")[0] for key in dropped})
        log.info("%s: left out the reference's auxiliary heads %s (not used for retrieval)",
                 path, ", ".join(heads))

    needed = ("visual.conv1.weight", "visual.positional_embedding",
              "encode_text.positional_embedding")
    missing = [name for name in needed if _clip_key(name) not in model]
    if missing:
        raise UserError(f"{path}: a checkpoint of the reference code without "
                        f"{', '.join(missing)}")
    updates = {"model": {"image_size": _image_size(model, their_config, path),
                         # Rows of the text position table: the text length it was trained at.
                         "context_length": int(model["clip.positional_embedding"].shape[0]),
                         **mapping_cfg},
               # Their optional heads are not carried over, so their losses are off here.
               "loss": {"id": 0.0, "ss": 0.0}}
    dropout = _get(their_config, "model", "dropout")
    if stage == "token" and isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
        updates["model"]["mapping_dropout"] = float(dropout)
    their_dataset = _get(their_config, "data", "dataset")
    trial = None
    if their_dataset in DATASET_NAMES:
        updates["data"] = {"dataset": DATASET_NAMES[their_dataset]}
        if their_dataset == "PKUSketch" and isinstance(_get(their_config, "data", "trial"), int):
            trial = _get(their_config, "data", "trial")
    elif their_dataset is not None:
        log.warning("%s: the reference's dataset %r is not one of %s; give data.dataset=...",
                    path, their_dataset, ", ".join(DATASET_NAMES))
    config = merge(defaults(), updates, f"{path} (reference checkpoint)")
    log.info("%s: read as a %s checkpoint", path, SCRIPT_NAMES[stage])
    return {"stage": stage, "model": model, "config": config, "epoch": None, "step": None,
            "trial": trial, "source": "reference"}


def _state_and_config(raw) -> tuple:
    """(state dict without ``module.``, their config as plain dicts) or (None, {})."""
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        state, their_config = raw["model"], raw.get("config")
    else:
        state, their_config = raw, None  # a bare state dict
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor)
            for key, value in state.items()):
        return None, {}
    state = {key.removeprefix("module."): value for key, value in state.items()}
    return state, to_plain(their_config) if isinstance(their_config, Mapping) else {}


def _clip_key(key: str) -> str | None:
    """Their CLIP key (without ``tbps_clip.``) -> ours, or None if it is not part of CLIP."""
    if key.startswith("visual."):
        return "clip." + key
    if key.startswith("encode_text."):
        return "clip." + key[len("encode_text."):]
    if key == "logit_scale":
        return "clip.logit_scale"
    return None


def _mapping(mapping: dict, path) -> tuple:
    """Their ``mapping.*`` (prefix removed) -> (our ``img2text.*`` state, ``model.*``
    settings, keys that fit neither layout)."""
    if set(mapping) == {"weight", "bias"}:
        return ({"img2text.fc_out.weight": mapping["weight"],
                 "img2text.fc_out.bias": mapping["bias"]}, {"mapping_type": "Linear"}, [])
    state, blocks, unknown = {}, set(), []
    for key, value in mapping.items():
        block = _MLP_BLOCK.fullmatch(key)
        if block:
            index = int(block.group(1))
            blocks.add(index)
            state[f"img2text.layers.{3 * index}.{block.group(2)}"] = value  # Linear of block i
        elif key in ("fc_out.weight", "fc_out.bias"):
            state[f"img2text.{key}"] = value
        else:
            unknown.append(MAPPING + key)
    if unknown:
        return {}, {}, unknown
    if blocks != set(range(len(blocks))) or "img2text.fc_out.weight" not in state:
        raise UserError(f"{path}: the reference's mapping network is incomplete: expected "
                        "mapping.layers.<i>.0.* for i = 0, 1, ... and mapping.fc_out.*, "
                        f"found {', '.join(MAPPING + key for key in sorted(mapping))}")
    settings = {"mapping_type": "MLP", "n_layer": len(blocks),
                "middle_dim": int(state["img2text.fc_out.weight"].shape[1])}
    return state, settings, []


def _image_size(model: dict, their_config: dict, path) -> list:
    """[H, W] of the stored position grid: the configured input size, else a square grid."""
    conv, positions = model["clip.visual.conv1.weight"], model["clip.visual.positional_embedding"]
    patch, cells = int(conv.shape[-1]), int(positions.shape[0]) - 1
    resolution = _get(their_config, "experiment", "input_resolution")
    if isinstance(resolution, int):
        resolution = [resolution, resolution]
    if isinstance(resolution, list) and len(resolution) == 2:
        grid = (int(resolution[0]) // patch, int(resolution[1]) // patch)
        if grid[0] * grid[1] != cells:
            raise UserError(f"{path}: its config says input_resolution {resolution} "
                            f"({grid[0]}x{grid[1]} patches of {patch}), but "
                            f"visual.positional_embedding holds {cells} patch positions")
    else:
        side = math.isqrt(cells)
        if side * side != cells:
            raise UserError(f"{path}: visual.positional_embedding holds {cells} patch "
                            "positions, not a square grid, and the file has no config "
                            "(experiment.input_resolution) to tell its height and width")
        grid = (side, side)
    return [grid[0] * patch, grid[1] * patch]


def _get(tree: dict, *keys):
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree
