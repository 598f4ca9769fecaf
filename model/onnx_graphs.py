"""The encoders as graphs to export (ONNX, ``engine.onnx_export``): modules whose forward
takes tensors and returns tensors, with nothing decided in Python from the data.

    ImageEncoder   images [B, 3, H, W] (normalised)     -> raw features [B, E]
    TextEncoder    tokens [B, L] (int64)                -> normalised features [B, E]
    QueryEncoder   raw sketch features [B, E], tokens [B, L] of a text holding ``*``
                                                        -> normalised query features [B, E]

Image features are raw, as ``CLIP.encode_image`` returns them, because the query encoder
needs a sketch's raw feature; normalise them to rank photos or to search by a sketch alone.
Text and query features are normalised, as ``RetrievalModel.encode_text`` and
``TokenModel.encode_query`` return them. Tokens may have any length L up to the context
length, as long as each row keeps its end-of-text token: nothing is trimmed in the graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import CLIP
from model.token import TokenModel

# Names of the graphs' inputs and outputs, and their axes that vary.
IMAGE_IO = {"inputs": ("images",), "outputs": ("image_features",),
            "dynamic_axes": {"images": {0: "batch"}, "image_features": {0: "batch"}}}
TEXT_IO = {"inputs": ("tokens",), "outputs": ("text_features",),
           "dynamic_axes": {"tokens": {0: "batch", 1: "length"}, "text_features": {0: "batch"}}}
QUERY_IO = {"inputs": ("sketch_features", "tokens"), "outputs": ("query_features",),
            "dynamic_axes": {"sketch_features": {0: "batch"}, "tokens": {0: "batch", 1: "length"},
                             "query_features": {0: "batch"}}}


class ImageEncoder(nn.Module):
    """images [B, 3, H, W] (normalised, at the model's input size) -> raw features [B, E]
    (``CLIP.encode_image``: not normalised)."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)


class TextEncoder(nn.Module):
    """tokens [B, L] (``tokenize``, L <= context length) -> normalised features [B, E]."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_tokens(tokens), dim=-1)


class QueryEncoder(nn.Module):
    """Raw sketch features [B, E] and tokens [B, L] of "a photo of * , and ..." ->
    normalised composed-query features [B, E]: the mapping network makes each sketch's
    pseudo word, which replaces the embedding of ``*`` in its row (``TokenModel.compose``)."""

    def __init__(self, model: TokenModel):
        super().__init__()
        self.clip = model.clip
        self.img2text = model.img2text

    def forward(self, sketch_feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        pseudo_tokens = self.img2text(sketch_feats)  # [B, W]
        return F.normalize(self.clip.encode_tokens(tokens, pseudo_tokens), dim=-1)
