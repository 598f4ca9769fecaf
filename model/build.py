"""Building the models: their CLIP from OpenAI's file (start of stage 1) or from a project
checkpoint (start of stage 2), and whole models from a checkpoint (test.py, search)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from model.adapt import AdaptModel
from model.clip import CLIP, build_clip, load_clip, load_state_dict_strict
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
    """CLIP from ``model.pretrained`` (an OpenAI checkpoint) at the configured input size."""
    clip = load_clip(cfg.model.pretrained, cfg.model.image_size, cfg.model.context_length)
    return configure_clip(clip, cfg.model)


def clip_from_project_state(model_state: Mapping[str, torch.Tensor], stored_cfg, cfg) -> CLIP:
    """The CLIP inside a project checkpoint's model state, rebuilt at ``cfg``'s input size.

    ``stored_cfg`` is the config the checkpoint was trained with: its image size gives the
    position grid of the stored weights (which may be non-square).
    """
    clip_state = {key[len(CLIP_PREFIX):]: value for key, value in model_state.items()
                  if key.startswith(CLIP_PREFIX)}
    patch = clip_state["visual.conv1.weight"].shape[-1]
    stored_size = stored_cfg["model"]["image_size"]
    grid = (stored_size[0] // patch, stored_size[1] // patch)
    clip = build_clip(clip_state, cfg.model.image_size, cfg.model.context_length,
                      source_grid=grid)
    return configure_clip(clip, cfg.model)


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
    clip = clip_from_project_state(state, checkpoint["config"], cfg)
    model = AdaptModel(clip, cfg.loss, classifier.shape[0] if classifier is not None else 0)
    return _load_besides_clip(model, state, source)


def token_model_from_checkpoint(checkpoint: dict, cfg, source: str) -> TokenModel:
    """The stage-2 model of a checkpoint, at ``cfg``'s input size."""
    clip = clip_from_project_state(checkpoint["model"], checkpoint["config"], cfg)
    return _load_besides_clip(TokenModel(clip, cfg.model, cfg.loss), checkpoint["model"], source)
