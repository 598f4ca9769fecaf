"""What the models of both stages share: CLIP, its normalised encoders and the contrast
temperature (``logit_scale``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import CLIP
from model.losses import LOGIT_SCALE_CLAMPS, clamped_logit_scale
from utils.errors import ConfigError


class RetrievalModel(nn.Module):
    """CLIP with L2-normalised ``encode_image`` / ``encode_text`` and the capped
    ``logit_scale`` of the contrastive losses (``loss.logit_scale_max``,
    ``loss.logit_scale_clamp``)."""

    def __init__(self, clip: CLIP, loss_cfg):
        super().__init__()
        self.clip = clip
        self.logit_scale_max = float(loss_cfg.logit_scale_max)
        self.logit_scale_clamp = loss_cfg.logit_scale_clamp
        if self.logit_scale_clamp not in LOGIT_SCALE_CLAMPS:
            raise ConfigError(f"loss.logit_scale_clamp={self.logit_scale_clamp!r} is not one of "
                              f"{', '.join(LOGIT_SCALE_CLAMPS)}")

    def logit_scale(self) -> torch.Tensor:
        return clamped_logit_scale(self.clip.logit_scale, self.logit_scale_max,
                                   self.logit_scale_clamp)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image (photo or sketch) features [B, E] of images [B, 3, H, W]."""
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised text features [B, E] of tokens [B, L]."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)
