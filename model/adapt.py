"""Stage 1, task-oriented knowledge adaptation: CLIP learns one space for photos, sketches
and texts of people. Photos and sketches share the image tower."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import CLIP
from model.losses import (cyclic_loss, nt_xent_loss, reverse_kl_loss, soft_contrastive_loss)
from utils.distributed import gather_no_grad, gather_with_grad

MAX_LOGIT_SCALE = 100.0


class AdaptModel(nn.Module):
    """CLIP plus the optional heads of the auxiliary losses; ``forward(batch)`` returns the
    weighted losses as ``{"<name>_loss": tensor}`` for the trainer to sum."""

    stage = "adapt"

    def __init__(self, clip: CLIP, loss_cfg, num_classes: int):
        super().__init__()
        self.clip = clip
        self.weights = {name: float(loss_cfg[name]) for name in ("nitc", "nisc", "ritc", "id",
                                                                 "citc", "ss")}
        self.ritc_eps = loss_cfg.ritc_eps
        self.citc_lambdas = (loss_cfg.citc_lambda1, loss_cfg.citc_lambda2)
        self.ss_temperature = loss_cfg.ss_temperature
        self.separate_soft_target_pass = loss_cfg.separate_soft_target_pass
        embed_dim = clip.arch.embed_dim
        self.num_classes = num_classes
        if self.weights["id"] > 0:
            self.id_classifier = nn.Linear(embed_dim, num_classes)
            nn.init.normal_(self.id_classifier.weight, std=0.001)
            nn.init.zeros_(self.id_classifier.bias)
        if self.weights["ss"] > 0:
            self.ss_head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                         nn.Linear(embed_dim, embed_dim))

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def forward(self, batch: dict, alpha: float = 0.0) -> dict:
        """batch: photo [B,3,H,W], sketch [B,3,H,W], tokens [B,L], label [B] (+ photo_view
        for SS). ``alpha``: share of soft targets in N-ITC/N-ISC (ramped by the trainer)."""
        batch_size = batch["photo"].shape[0]
        # One pass of the image tower for photos and sketches together.
        image_feats = self.encode_image(torch.cat([batch["photo"], batch["sketch"]]))
        photo_feats, sketch_feats = image_feats[:batch_size], image_feats[batch_size:]
        text_feats = self.encode_text(batch["tokens"])

        # Contrast over the global batch: features of every process, gradients to our slice.
        labels = gather_no_grad(batch["label"])
        photos, sketches, texts = (gather_with_grad(feats) for feats in
                                   (photo_feats, sketch_feats, text_feats))
        soft_photos = soft_sketches = soft_texts = None
        if self.separate_soft_target_pass and alpha > 0:
            soft_photos, soft_sketches, soft_texts = self._soft_target_features(batch)
        scale = self.logit_scale()
        w = self.weights
        losses = {}
        if w["nitc"] > 0:
            losses["nitc_loss"] = w["nitc"] * soft_contrastive_loss(
                photos, texts, labels, scale, alpha, soft_photos, soft_texts)
        if w["nisc"] > 0:
            losses["nisc_loss"] = w["nisc"] * soft_contrastive_loss(
                photos, sketches, labels, scale, alpha, soft_photos, soft_sketches)
        if w["ritc"] > 0:
            losses["ritc_loss"] = w["ritc"] * reverse_kl_loss(photos, texts, labels, scale,
                                                             self.ritc_eps)
        if w["citc"] > 0:
            losses["citc_loss"] = w["citc"] * cyclic_loss(photos, texts, *self.citc_lambdas)
        if w["id"] > 0:
            logits = self.id_classifier(torch.cat([photo_feats, text_feats]))
            targets = batch["label"].repeat(2)
            losses["id_loss"] = w["id"] * F.cross_entropy(logits, targets)
        if w["ss"] > 0:
            view_feats = self.encode_image(batch["photo_view"])
            projected = F.normalize(self.ss_head(torch.cat([photo_feats, view_feats])), dim=-1)
            view_a, view_b = projected[:batch_size], projected[batch_size:]
            losses["ss_loss"] = w["ss"] * nt_xent_loss(gather_with_grad(view_a),
                                                       gather_with_grad(view_b),
                                                       self.ss_temperature)
        return losses

    @torch.no_grad()
    def _soft_target_features(self, batch: dict) -> tuple:
        """The reference implementation's extra no-grad pass (kept for ablations)."""
        photo = gather_no_grad(self.encode_image(batch["photo"]))
        sketch = gather_no_grad(self.encode_image(batch["sketch"]))
        text = gather_no_grad(self.encode_text(batch["tokens"]))
        return photo, sketch, text
