"""Stage 1, task-oriented knowledge adaptation: CLIP learns one space for photos, sketches
and texts of people. Photos and sketches share the image tower.

A step is split in two so that a large contrastive batch can be built from several
micro-batches (``engine.trainer``'s gradient accumulation): ``features`` runs the towers on
one micro-batch, ``losses`` contrasts the features of the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import CLIP
from model.losses import cyclic_loss, nt_xent_loss, reverse_kl_loss, soft_contrastive_loss
from model.retrieval import RetrievalModel
from utils.distributed import gather_no_grad, gather_with_grad

# What each loss compares besides photos: data without sketches or captions turns off the
# losses that need them (``engine.stages``).
LOSS_INPUTS = {"nitc": ("text",), "nisc": ("sketch",), "ritc": ("text",), "id": ("text",),
               "citc": ("text",), "ss": ()}


class AdaptModel(RetrievalModel):
    """CLIP plus the optional heads of the auxiliary losses; ``forward(batch)`` returns the
    weighted losses as ``{"<name>_loss": tensor}`` for the trainer to sum."""

    def __init__(self, clip: CLIP, loss_cfg, num_classes: int):
        super().__init__(clip, loss_cfg)
        self.weights = {name: float(loss_cfg[name]) for name in LOSS_INPUTS}
        self.ritc_eps = loss_cfg.ritc_eps
        self.citc_lambdas = (loss_cfg.citc_lambda1, loss_cfg.citc_lambda2)
        self.ss_temperature = loss_cfg.ss_temperature
        self.separate_soft_target_pass = loss_cfg.separate_soft_target_pass
        embed_dim = clip.arch.embed_dim
        if self.weights["id"] > 0:
            self.id_classifier = nn.Linear(embed_dim, num_classes)
            nn.init.normal_(self.id_classifier.weight, std=0.001)
            nn.init.zeros_(self.id_classifier.bias)
        if self.weights["ss"] > 0:
            self.ss_head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                         nn.Linear(embed_dim, embed_dim))

    def forward(self, batch: dict, alpha: float = 0.0) -> dict:
        """batch: photo [B,3,H,W], sketch [B,3,H,W], tokens [B,L], label [B] (+ photo_view
        for SS; sketch or tokens may be absent when no loss on needs them). ``alpha``:
        share of soft targets in N-ITC/N-ISC (ramped by the trainer)."""
        return self.losses(self.features(batch), batch["label"], alpha)

    def features(self, batch: dict) -> dict:
        """Normalised features [B, E] of one (micro-)batch: photo, sketch and text where the
        batch has them (+ view)."""
        batch_size = batch["photo"].shape[0]
        # One pass of the image tower for photos and sketches together.
        images = [batch["photo"]] + ([batch["sketch"]] if "sketch" in batch else [])
        image_feats = self.encode_image(torch.cat(images))
        feats = {"photo": image_feats[:batch_size]}
        if "sketch" in batch:
            feats["sketch"] = image_feats[batch_size:]
        if "tokens" in batch:
            feats["text"] = self.encode_text(batch["tokens"])
        if self.weights["ss"] > 0:
            feats["view"] = self.encode_image(batch["photo_view"])
        if self.separate_soft_target_pass:
            feats.update(self._soft_target_features(batch))
        return feats

    def losses(self, feats: dict, labels: torch.Tensor, alpha: float = 0.0) -> dict:
        """The weighted losses over the global batch: ``feats`` from ``features`` (this
        process's rows), labels [B]. Features of every process take part; gradients flow
        to this process's rows."""
        all_labels = gather_no_grad(labels)
        photos, sketches, texts = (gather_with_grad(feats[key]) if key in feats else None
                                   for key in ("photo", "sketch", "text"))
        soft_photos = soft_sketches = soft_texts = None
        if "soft_photo" in feats and alpha > 0:
            soft_photos, soft_sketches, soft_texts = (
                gather_no_grad(feats[key]) if key in feats else None
                for key in ("soft_photo", "soft_sketch", "soft_text"))
        scale = self.logit_scale()
        w = self.weights
        losses = {}
        if w["nitc"] > 0:
            losses["nitc_loss"] = w["nitc"] * soft_contrastive_loss(
                photos, texts, all_labels, scale, alpha, soft_photos, soft_texts)
        if w["nisc"] > 0:
            losses["nisc_loss"] = w["nisc"] * soft_contrastive_loss(
                photos, sketches, all_labels, scale, alpha, soft_photos, soft_sketches)
        if w["ritc"] > 0:
            losses["ritc_loss"] = w["ritc"] * reverse_kl_loss(photos, texts, all_labels, scale,
                                                             self.ritc_eps)
        if w["citc"] > 0:
            losses["citc_loss"] = w["citc"] * cyclic_loss(photos, texts, *self.citc_lambdas)
        if w["id"] > 0:
            logits = self.id_classifier(torch.cat([feats["photo"], feats["text"]]))
            losses["id_loss"] = w["id"] * F.cross_entropy(logits, labels.repeat(2))
        if w["ss"] > 0:
            projected = F.normalize(self.ss_head(torch.cat([feats["photo"], feats["view"]])),
                                    dim=-1)
            view_a, view_b = projected.chunk(2)
            losses["ss_loss"] = w["ss"] * nt_xent_loss(gather_with_grad(view_a),
                                                       gather_with_grad(view_b),
                                                       self.ss_temperature)
        return losses

    @torch.no_grad()
    def _soft_target_features(self, batch: dict) -> dict:
        """A second, gradient-free pass for the soft targets (the reference's way: with the
        text tower's dropout it sees other masks than the pass being trained)."""
        feats = {"soft_photo": self.encode_image(batch["photo"])}
        if "sketch" in batch:
            feats["soft_sketch"] = self.encode_image(batch["sketch"])
        if "tokens" in batch:
            feats["soft_text"] = self.encode_text(batch["tokens"])
        return feats
