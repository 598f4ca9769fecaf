"""Stage 2, pseudo-word token learning (after Saito et al., "Pic2Word", CVPR 2023): a mapping
network turns a sketch's feature into one word embedding ``*``; "a photo of * , and {text
feedback}" is then encoded by CLIP's (frozen) text tower and retrieves photos."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import CLIP, trim_to_bucket
from model.losses import info_nce_loss
from model.retrieval import RetrievalModel
from model.tokenizer import PLACEHOLDER, tokenize
from utils.distributed import gather_with_grad
from utils.errors import ConfigError

TEXT_TOWER = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
              "text_projection", "logit_scale")


class MappingNetwork(nn.Module):
    """phi: image feature [B, E] -> pseudo word embedding [B, W].

    MLP: ``n_layer`` blocks of Linear -> Dropout -> ReLU (width ``middle_dim``), then an
    output Linear; or a single Linear.
    """

    def __init__(self, embed_dim: int, token_dim: int, mapping_type: str = "MLP",
                 n_layer: int = 2, middle_dim: int = 768, dropout: float = 0.1):
        super().__init__()
        if mapping_type == "Linear":
            self.layers = nn.Identity()
            self.fc_out = nn.Linear(embed_dim, token_dim)
        elif mapping_type == "MLP":
            blocks = []
            for index in range(n_layer):
                blocks += [nn.Linear(embed_dim if index == 0 else middle_dim, middle_dim),
                           nn.Dropout(dropout), nn.ReLU()]
            self.layers = nn.Sequential(*blocks)
            self.fc_out = nn.Linear(middle_dim if n_layer else embed_dim, token_dim)
        else:
            raise ConfigError(f"model.mapping_type={mapping_type!r} is not one of MLP, Linear")

    def forward(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(image_feats))


def compose_query(template: str, feedback: str, sketch_only_prompt: str) -> str:
    """The text of a composed query: ``template`` with the feedback text in its ``{}``;
    with no feedback, the sketch-only prompt. Feedback never adds a placeholder."""
    feedback = " ".join(feedback.replace(PLACEHOLDER, " ").split())
    return template.format(feedback) if feedback else sketch_only_prompt


def join_feedback(rounds: Sequence[str]) -> str:
    """Rounds of feedback typed by a person, as one text: "red coat", "black bag" ->
    "red coat, black bag" (blank rounds are dropped)."""
    return ", ".join(text.strip() for text in rounds if text.strip())


class TokenModel(RetrievalModel):
    """CLIP (text tower frozen) plus the mapping network ``img2text``; it owns the composed
    query: ``query_text`` and ``encode_query``."""

    def __init__(self, clip: CLIP, model_cfg, loss_cfg):
        super().__init__(clip, loss_cfg)
        self.img2text = MappingNetwork(clip.arch.embed_dim, clip.arch.text_width,
                                       model_cfg.mapping_type, model_cfg.n_layer,
                                       model_cfg.middle_dim, model_cfg.mapping_dropout)
        self.template, self.sketch_prompt = model_cfg.prompt, model_cfg.sketch_prompt
        for text in (self.template.format("feedback"), self.sketch_prompt):
            tokens = tokenize(text, clip.context_length)[0]
            if (tokens == clip.placeholder_id).sum() != 1:
                raise ConfigError(f"prompt {text!r} must contain the word {PLACEHOLDER} exactly "
                                  f"once, with spaces around it (e.g. 'a photo of * , and {{}}')")
        self.weights = {"inversion": float(loss_cfg.inversion),
                        "alignment": float(loss_cfg.alignment),
                        "composed": float(loss_cfg.composed)}
        # Cut after its end-of-text token here, once, so that a training step reads nothing
        # back from the device to cut it (``CLIP.trim_padding``).
        self.register_buffer("prompt_tokens", trim_to_bucket(
            tokenize(self.sketch_prompt, clip.context_length)), persistent=False)  # [1, L']
        for name, parameter in self.clip.named_parameters():
            if name.startswith(TEXT_TOWER):
                parameter.requires_grad_(False)

    def query_text(self, feedback: str) -> str:
        """The composed query's text: "a photo of * , and {feedback}" (``model.prompt``), or
        the sketch-only prompt without feedback."""
        return compose_query(self.template, feedback, self.sketch_prompt)

    def encode_query(self, sketch_feats: torch.Tensor, feedback: Sequence[str]) -> torch.Tensor:
        """Normalised composed-query features [B, E] from raw sketch features [B, E]
        (``clip.encode_image``) and one feedback text per sketch."""
        texts = [self.query_text(text) for text in feedback]
        tokens = tokenize(texts, self.clip.context_length).to(sketch_feats.device)
        return self.compose(sketch_feats, tokens)

    def compose(self, sketch_feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Composed query features [B, E] from raw sketch features [B, E] (``clip.encode_image``)
        and tokens [B, L] of texts holding ``*``."""
        pseudo_tokens = self.img2text(sketch_feats)  # [B, W]
        return F.normalize(self.clip.encode_text_with_pseudo_token(tokens, pseudo_tokens), dim=-1)

    def forward(self, batch: dict) -> dict:
        """batch: sketch [B,3,H,W] and a photo of the same person [B,3,H,W]."""
        return self.losses(self.features(batch))

    def features(self, batch: dict) -> dict:
        """Normalised features [B, E] of one (micro-)batch: sketch, photo, the query
        "a photo of *" composed from the sketch and, with ``loss.composed``, the composed
        queries with feedback whose tokens the batch holds."""
        batch_size = batch["sketch"].shape[0]
        raw = self.clip.encode_image(torch.cat([batch["sketch"], batch["photo"]]))
        sketch_raw, photo_raw = raw[:batch_size], raw[batch_size:]
        query = self.compose(sketch_raw, self.prompt_tokens.expand(batch_size, -1))
        feats = {"sketch": F.normalize(sketch_raw, dim=-1),
                 "photo": F.normalize(photo_raw, dim=-1), "query": query}
        if self.weights["composed"] > 0 and "tokens" in batch:
            feats["composed"] = self.compose(sketch_raw, batch["tokens"])
        return feats

    def losses(self, feats: dict, labels: torch.Tensor | None = None) -> dict:
        """Inversion (sketch <-> query) and alignment (photo <-> query) over the global
        batch, and with ``loss.composed`` the composed query with feedback <-> photo; each
        sketch's positive is its own query (``labels`` are not used)."""
        sketches, photos, queries = (gather_with_grad(feats[key])
                                     for key in ("sketch", "photo", "query"))
        scale = self.logit_scale()
        losses = {}
        if self.weights["inversion"] > 0:
            losses["inversion_loss"] = self.weights["inversion"] * info_nce_loss(
                sketches, queries, scale)
        if self.weights["alignment"] > 0:
            losses["alignment_loss"] = self.weights["alignment"] * info_nce_loss(
                photos, queries, scale)
        if "composed" in feats:
            losses["composed_loss"] = self.weights["composed"] * info_nce_loss(
                photos, gather_with_grad(feats["composed"]), scale)
        return losses
