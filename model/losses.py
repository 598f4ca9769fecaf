"""Losses of both stages, as pure functions of features (already L2-normalised).

N-ITC / N-ISC and R-ITC follow Cao et al., "An Empirical Study of CLIP for Text-based
Person Search" (TBPS-CLIP, AAAI 2024); CITC follows CyCLIP (Goel et al., NeurIPS 2022).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_SCALE_CLAMPS = ("straight_through", "stop_gradient")


def clamped_logit_scale(log_scale: torch.Tensor, max_value: float = 100.0,
                        mode: str = "straight_through") -> torch.Tensor:
    """exp(log_scale), its value capped at ``max_value`` (0 = no cap).

    "straight_through": the gradient is that of the uncapped exp, as in the paper's code
    (which overwrites the value and keeps the graph); "stop_gradient": the cap is a
    clamp, so no gradient flows while the value is above it.
    """
    scale = log_scale.exp()
    if max_value <= 0:
        return scale
    if mode == "straight_through":
        return scale - (scale - scale.clamp(max=max_value)).detach()
    if mode == "stop_gradient":
        return scale.clamp(max=max_value)
    raise ValueError(f"logit scale clamp {mode!r} is not one of {', '.join(LOGIT_SCALE_CLAMPS)}")


def soft_target_share(ratio: float, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """The share ``alpha`` of similarity-based soft targets in N-ITC/N-ISC: it ramps from 0
    to ``ratio`` over the first epoch, then stays (TBPS-CLIP's schedule)."""
    ramp = min(1.0, step_in_epoch / steps_per_epoch) if epoch == 0 else 1.0
    return ratio * ramp


def identity_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels [B] -> [B, B] rows summing to 1 over the pairs of the same person."""
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)).float()
    return same / same.sum(dim=1, keepdim=True)


def soft_contrastive_loss(feats_a: torch.Tensor, feats_b: torch.Tensor, labels: torch.Tensor,
                          logit_scale: torch.Tensor, alpha: float,
                          soft_a: torch.Tensor | None = None,
                          soft_b: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE against soft targets (N-ITC between photos and texts, N-ISC between
    photos and sketches).

    targets = alpha * softmax(scale * soft_a @ soft_b^T) + (1 - alpha) * identity targets,
    where ``soft_*`` default to the detached features themselves. feats [B, E], labels [B].
    """
    logits = logit_scale * feats_a @ feats_b.t()  # [B, B]
    with torch.no_grad():
        targets = identity_targets(labels)
        if alpha > 0:
            soft_a = feats_a.detach() if soft_a is None else soft_a
            soft_b = feats_b.detach() if soft_b is None else soft_b
            similarity = logit_scale.detach() * soft_a @ soft_b.t()
            targets_ab = alpha * similarity.softmax(dim=1) + (1 - alpha) * targets
            targets_ba = alpha * similarity.t().softmax(dim=1) + (1 - alpha) * targets
        else:
            targets_ab = targets_ba = targets
    loss_ab = -(F.log_softmax(logits, dim=1) * targets_ab).sum(dim=1).mean()
    loss_ba = -(F.log_softmax(logits.t(), dim=1) * targets_ba).sum(dim=1).mean()
    return (loss_ab + loss_ba) / 2


def reverse_kl_loss(feats_a: torch.Tensor, feats_b: torch.Tensor, labels: torch.Tensor,
                    logit_scale: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """R-ITC: KL(model || targets) in both directions, targets = identity targets + eps,
    which penalises probability mass on other people more than a missed positive.

    The targets are not renormalised (as in TBPS-CLIP): that shifts the value by the
    constant log(1 + B * eps) per row and leaves every gradient unchanged.
    """
    logits = logit_scale * feats_a @ feats_b.t()  # [B, B]
    log_targets = (identity_targets(labels) + eps).log()
    loss = 0.0
    for direction in (logits, logits.t()):
        log_probs = F.log_softmax(direction, dim=1)
        loss = loss + (log_probs.exp() * (log_probs - log_targets)).sum(dim=1).mean()
    return loss / 2


def cyclic_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, lambda_in: float,
                lambda_cross: float) -> torch.Tensor:
    """CITC: in-modal (image-image vs text-text) and cross-modal (i->t vs t->i) similarity
    consistency, on cosine similarities."""
    in_modal = (image_feats @ image_feats.t() - text_feats @ text_feats.t()).square().mean()
    cross = image_feats @ text_feats.t()
    cross_modal = (cross - cross.t()).square().mean()
    return lambda_in * in_modal + lambda_cross * cross_modal


def nt_xent_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss between two augmented views: each view's positive is its twin, the other
    2B-2 items are negatives. views [B, D], normalised."""
    feats = torch.cat([view_a, view_b])  # [2B, D]
    logits = feats @ feats.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    batch = view_a.shape[0]
    twins = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(feats.device)
    return F.cross_entropy(logits, twins)


def info_nce_loss(feats_a: torch.Tensor, feats_b: torch.Tensor,
                  logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with the diagonal as positives (stage 2). feats [B, E]."""
    logits = logit_scale * feats_a @ feats_b.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
