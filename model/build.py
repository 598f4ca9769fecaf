"""Building the models: their CLIP from OpenAI's or open_clip's file (start of stage 1) or
from a project checkpoint (start of stage 2), and whole models from a checkpoint (test.py,
search).

The CLIP's activation (``model.quick_gelu``) is resolved once, from the weights file and
the key, and written back into the config, so that the run's ``config.yaml`` and every
checkpoint record it."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from model.adapt import AdaptModel
from model.clip import CLIP, CheckpointError, build_clip, load_clip, load_state_dict_strict
from model.token import TokenModel

CLIP_PREFIX = "clip."


def configure_clip(clip: CLIP, model_cfg) -> CLIP:
    """Apply the training options of ``model.*`` to a freshly built CLIP."""
    if model_cfg.freeze_patch_embed:
        clip.freeze_patch_embedding()
    clip.set_text_dropout(model_cfg.text_dropout)
    clip.set_grad_checkpointing(model_cfg.grad_checkpointing)
    return clip


def clip_from_pretrained(cfg) -> CLIP:
    """CLIP from ``model.pretrained`` (OpenAI's or open_clip's file) at the configured input
    size; the activation it was built with goes into ``cfg.model.quick_gelu``."""
    clip = load_clip(cfg.model.pretrained, cfg.model.image_size, cfg.model.context_length,
                     quick_gelu=cfg.model.quick_gelu)
    cfg.model.quick_gelu = clip.arch.quick_gelu
    return configure_clip(clip, cfg.model)


def clip_from_project_state(model_state: Mapping[str, torch.Tensor], stored_cfg, cfg,
                            source: str = "the checkpoint") -> CLIP:
    """The CLIP inside a project checkpoint's model state, rebuilt at ``cfg``'s input size.

    ``stored_cfg`` is the config the checkpoint was trained with: its image size gives the
    position grid of the stored weights (which may be non-square), its ``model.quick_gelu``
    the activation (missing or null in configs that predate the key: QuickGELU, which every
    such checkpoint used). That activation goes into ``cfg.model.quick_gelu``; a different
    value given there is an error, since it would change the trained network.
    """
    clip_state = {key[len(CLIP_PREFIX):]: value for key, value in model_state.items()
                  if key.startswith(CLIP_PREFIX)}
    patch = clip_state["visual.conv1.weight"].shape[-1]
    stored_size = stored_cfg["model"]["image_size"]
    grid = (stored_size[0] // patch, stored_size[1] // patch)
    stored_quick_gelu = stored_cfg["model"].get("quick_gelu")
    quick_gelu = True if stored_quick_gelu is None else bool(stored_quick_gelu)
    if cfg.model.quick_gelu is not None and bool(cfg.model.quick_gelu) != quick_gelu:
        raise CheckpointError(
            f"model.quick_gelu={_yaml_value(cfg.model.quick_gelu)} does not fit {source}, "
            f"whose CLIP was trained with {'QuickGELU' if quick_gelu else 'GELU'} (its config: "
            f"model.quick_gelu={_yaml_value(stored_quick_gelu)}); leave the key out")
    clip = build_clip(clip_state, cfg.model.image_size, cfg.model.context_length,
                      source_grid=grid, quick_gelu=quick_gelu)
    cfg.model.quick_gelu = quick_gelu
    return configure_clip(clip, cfg.model)


def _yaml_value(value) -> str:
    return "null" if value is None else str(value).lower()


def _load_besides_clip(model, state: Mapping[str, torch.Tensor], source: str):
    """Load a checkpoint's state into ``model`` whose CLIP was already rebuilt from it (and
    possibly resampled to a new input size): strictly, keeping that CLIP."""
    clip_state = {k: v for k, v in model.state_dict().items() if k.startswith(CLIP_PREFIX)}
    load_state_dict_strict(model, {**state, **clip_state}, source)
    return model


def adapt_model_from_checkpoint(checkpoint: dict, cfg, source: str) -> AdaptModel:
    """The stage-1 model of a checkpoint, at ``cfg``'s input size (with the identity head
    when the checkpoint has one)."""
    state = checkpoint["model"]
    classifier = state.get("id_classifier.weight")
    clip = clip_from_project_state(state, checkpoint["config"], cfg, source)
    model = AdaptModel(clip, cfg.loss, classifier.shape[0] if classifier is not None else 0)
    return _load_besides_clip(model, state, source)


def token_model_from_checkpoint(checkpoint: dict, cfg, source: str) -> TokenModel:
    """The stage-2 model of a checkpoint, at ``cfg``'s input size."""
    clip = clip_from_project_state(checkpoint["model"], checkpoint["config"], cfg, source)
    return _load_besides_clip(TokenModel(clip, cfg.model, cfg.loss), checkpoint["model"], source)
