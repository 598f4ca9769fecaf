"""CLIP image and text towers (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", ICML 2021), with loading of OpenAI and open_clip files.

The module layout mirrors OpenAI's checkpoint keys, so their weights load strictly:
``visual.*`` is the ViT image tower; ``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final`` and ``text_projection`` form the text tower. open_clip's ViT
models (Cherti et al., "Reproducible scaling laws for contrastive language-image learning",
CVPR 2023) use the same names.

The MLP activation is part of the architecture and cannot be read from the keys: OpenAI's
weights need QuickGELU, open_clip's LAION/DataComp-trained ones plain GELU.

Entry point: ``load_clip(path, image_size=(H, W), context_length=77, quick_gelu=None)``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.pos_embed import resample_text_positions, resample_vision_positions
from model.tokenizer import placeholder_token_id
from utils.errors import UNREADABLE_FILE_ERRORS, UserError

# OpenAI's TorchScript archives carry these scalars next to the weights.
ARCHIVE_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
HEAD_WIDTH = 64  # OpenAI's CLIP uses one attention head per 64 channels

# open_clip's files, whose activation the weights do not record: a suffix that OpenAI's
# releases never use (open_clip_pytorch_model.bin, open_clip_model.safetensors on the Hugging
# Face hub), a name starting with open_clip, or its trainer's {"state_dict": ...} checkpoints.
OPEN_CLIP_SUFFIXES = (".bin", ".safetensors")
# open_clip's CustomTextCLIP keeps the text tower under ``text.``; OpenAI's names are flat.
OPEN_CLIP_TEXT_TOWER = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                        "text_projection")
# Entries of open_clip state dicts that hold no weight of the towers, dropped on loading:
# the causal mask (rebuilt here) and SigLIP's logit bias (a loss parameter; features do not
# use it).
OPEN_CLIP_DROPPED_KEYS = ("attn_mask", "text.attn_mask", "logit_bias")
# open_clip's ViTs whose image tower has heads wider than 64 channels, by that tower's width.
# The weights do not record the number of heads, so these would load with the wrong one.
OPEN_CLIP_WIDE_HEADS = {1280: "ViT-H (80-channel heads)", 1408: "ViT-g (88-channel heads)",
                        1664: "ViT-bigG (104-channel heads)"}
# The names of OpenAI's layout (either tower); anything else is named when sizes cannot be read.
OPENAI_KEY = re.compile(
    r"(visual\.)?(transformer\.resblocks\.\d+\.(ln_[12]|attn\.in_proj_weight|attn\.in_proj_bias"
    r"|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)|conv1|class_embedding|positional_embedding|ln_pre"
    r"|ln_post|proj|token_embedding|ln_final|text_projection|logit_scale)(\.weight|\.bias)?")
QUICK_GELU_HINT = ("model.quick_gelu=false for LAION/DataComp-trained weights (e.g. ViT-B-16 "
                   "laion2b_s34b_b88k), model.quick_gelu=true for OpenAI-trained ones")

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` here (any torch since 2.1)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return (torch.is_autocast_cpu_enabled() if device_type == "cpu"
                else torch.is_autocast_enabled())


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32. Under autocast its output stays float32, as
    ``nn.LayerNorm`` under CUDA autocast returns it (the paper's code): from ``ln_pre`` on,
    ``x + attn(ln_1(x))`` then keeps the image tower's residual stream in float32 while the
    matrix products run in half precision. Outside autocast, the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                           self.bias.float(), self.eps)
        return out if autocast_enabled(x.device.type) else out.to(x.dtype)


QUICK_GELU_SLOPE = 1.702  # QuickGELU(x) = x * sigmoid(1.702 x) = silu(1.702 x) / 1.702


class MLP(nn.Module):
    """The block's feed-forward part, c_proj(act(c_fc(x))), with QuickGELU (OpenAI's weights)
    or the exact GELU (open_clip's LAION ones) as ``act``.

    QuickGELU is computed as silu(1.702 z) / 1.702 with both constants folded into the
    matrix products (their scalar factor): one fused pass over the hidden activations,
    forward and backward, instead of three multiplies and a sigmoid, and no scaled copy
    of a weight kept for the backward pass. The parameters keep OpenAI's names and values.
    """

    def __init__(self, width: int, quick_gelu: bool):
        super().__init__()
        self.quick_gelu = quick_gelu
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = None if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quick_gelu:
            return self.c_proj(self.gelu(self.c_fc(x)))
        rows = x.reshape(-1, x.shape[-1])  # [N, D]
        hidden = F.silu(torch.addmm(self.c_fc.bias * QUICK_GELU_SLOPE, rows, self.c_fc.weight.t(),
                                    alpha=QUICK_GELU_SLOPE))  # silu(1.702 c_fc(x)) [N, 4D]
        out = torch.addmm(self.c_proj.bias, hidden, self.c_proj.weight.t(),
                          alpha=1.0 / QUICK_GELU_SLOPE)
        return out.view(*x.shape[:-1], out.shape[-1])


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (OpenAI's parameter names)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.dropout = 0.0  # on the attention probabilities, while training
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]; with ``positions`` [B] only the output at one position
        per sequence, [B, D] (its query attends to every key it may see)."""
        if positions is not None:
            return self._attend_at(x, causal, positions)
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3D]
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads)
        # Split before moving the heads forward: in the backward pass the three gradients
        # then stack straight into the [B, L, 3, H, D/H] layout of ``qkv`` (no extra copy).
        query, key, value = (part.transpose(1, 2) for part in qkv.unbind(2))  # [B, H, L, D/H]
        # Fused attention kernel; never asks for the weights, so flash/efficient paths stay on.
        out = F.scaled_dot_product_attention(query, key, value, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, width)  # [B, L, D]
        return self.out_proj(out)

    def _attend_at(self, x: torch.Tensor, causal: bool, positions: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        rows = torch.arange(batch, device=x.device)
        query = F.linear(x[rows, positions], self.in_proj_weight[:width],
                         self.in_proj_bias[:width])  # [B, D]
        key_value = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:])
        key_value = key_value.view(batch, length, 2, self.heads, width // self.heads)
        key, value = (part.transpose(1, 2) for part in key_value.unbind(2))  # [B, H, L, D/H]
        query = query.view(batch, self.heads, 1, width // self.heads)
        visible = None
        if causal:  # the query at position p sees the keys at 0..p
            keys = torch.arange(length, device=x.device)
            visible = (keys <= positions.unsqueeze(1)).view(batch, 1, 1, length)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=visible,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.reshape(batch, width))  # [B, D]


class ResidualBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, quick_gelu)

    def forward(self, x: torch.Tensor, causal: bool,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]; with ``positions`` [B], the output at those positions
        only, [B, D]: every operation but attention works on each position alone."""
        if positions is None:
            x = x + self.attn(self.ln_1(x), causal)
        else:
            rows = torch.arange(x.shape[0], device=x.device)
            x = x[rows, positions] + self.attn(self.ln_1(x), causal, positions)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks, optionally with activation checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool, quick_gelu: bool):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, quick_gelu)
                                       for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]; or, given ``pooled`` [B] (the one position per
        sequence whose output is used: the class token, the end-of-text token), that
        output alone, [B, D], the last block computing it at that position only."""
        for index, block in enumerate(self.resblocks):
            positions = pooled if index == len(self.resblocks) - 1 else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.causal, positions, use_reentrant=False)
            else:
                x = block(x, self.causal, positions)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: patchify, prepend the class token, transformer, project the class token."""

    def __init__(self, image_size: Sequence[int], patch_size: int, width: int, layers: int,
                 output_dim: int, quick_gelu: bool):
        super().__init__()
        self.image_size = tuple(image_size)
        self.patch_size = patch_size
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        num_positions = self.grid_size[0] * self.grid_size[1] + 1
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_positions, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, width // HEAD_WIDTH, causal=False,
                                       quick_gelu=quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.conv1(images)  # [B, D, gh, gw]
        patches = patches.flatten(2).transpose(1, 2)  # [B, gh*gw, D]
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [B, 1, D]
        x = torch.cat([cls, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = self.transformer(self.ln_pre(x), pooled=class_token)  # [B, D]
        return self.ln_post(x) @ self.proj  # [B, E]


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
    """Every size of a CLIP ViT model, read from a state dict by ``infer_architecture``, and
    its activation, which the state dict cannot tell."""

    embed_dim: int
    patch_size: int
    vision_width: int
    vision_layers: int
    pretrained_grid: tuple  # position grid the checkpoint was trained with (rows, cols)
    text_width: int
    text_layers: int
    vocab_size: int
    pretrained_context_length: int
    quick_gelu: bool  # MLP activation: QuickGELU (OpenAI's weights) or GELU


class CLIP(nn.Module):
    """CLIP with a ViT image tower and a causal text transformer pooled at the end-of-text token."""

    def __init__(self, arch: ClipArchitecture, image_size: Sequence[int], context_length: int):
        super().__init__()
        self.arch = arch
        self.context_length = context_length
        self.visual = VisionTransformer(image_size, arch.patch_size, arch.vision_width,
                                        arch.vision_layers, arch.embed_dim, arch.quick_gelu)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, arch.text_width))
        self.transformer = Transformer(arch.text_width, arch.text_layers,
                                       arch.text_width // HEAD_WIDTH, causal=True,
                                       quick_gelu=arch.quick_gelu)
        self.ln_final = LayerNorm(arch.text_width)
        self.text_projection = nn.Parameter(torch.empty(arch.text_width, arch.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.placeholder_id = placeholder_token_id()
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """CLIP's initialisation (used for random-weight models; loading overwrites it)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.arch.text_width ** -0.5)
        for tower in (self.visual.transformer, self.transformer):
            attn_std = tower.width ** -0.5
            proj_std = attn_std * (2 * tower.layers) ** -0.5
            fc_std = (2 * tower.width) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
                for bias in (block.attn.in_proj_bias, block.attn.out_proj.bias,
                             block.mlp.c_fc.bias, block.mlp.c_proj.bias):
                    nn.init.zeros_(bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enabled
        self.transformer.grad_checkpointing = enabled

    def set_text_dropout(self, probability: float) -> None:
        """Dropout on the attention probabilities of every text block while training (as
        ``nn.MultiheadAttention(dropout=p)`` does); 0 turns it off."""
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"text dropout must be in [0, 1), got {probability}")
        for block in self.transformer.resblocks:
            block.attn.dropout = float(probability)

    def freeze_patch_embedding(self) -> None:
        """Keep the patch-embedding convolution fixed (the setting of the paper)."""
        self.visual.conv1.weight.requires_grad_(False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (normalised) -> features [B, E] (not normalised)."""
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] from ``tokenize`` -> features [B, E], pooled at the end-of-text token."""
        return self.encode_tokens(self.trim_padding(tokens))

    def encode_text_with_pseudo_token(self, tokens: torch.Tensor,
                                      pseudo_tokens: torch.Tensor) -> torch.Tensor:
        """Encode texts whose placeholder word ``*`` stands for a learned word embedding.

        tokens [B, L] contain the placeholder id; pseudo_tokens [B, W] (W = text width)
        replace the embedding at every placeholder position of the same row.
        """
        return self.encode_tokens(self.trim_padding(tokens), pseudo_tokens)

    def trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> tokens [B, L'] cut after the batch's last end-of-text token.

        Under the causal mask no position sees a later one, and only the end-of-text
        position is pooled, so the padding after the longest text of the batch changes no
        feature: cutting it saves its work in every block. Tokens shorter than the context
        length were cut already, on the host (``trim_to_bucket``: a training batch, or the
        stage-2 prompt), and are taken as they are, so that the step reads nothing back
        from the device; a full-length row is cut here, which reads the longest text's
        length from the device.
        """
        if tokens.shape[1] > self.context_length or tokens.dim() != 2:
            raise ValueError(f"text tokens have shape {tuple(tokens.shape)}, the model expects "
                             f"[B, L <= {self.context_length}] (tokenize(..., context_length="
                             f"{self.context_length}))")
        if tokens.shape[1] < self.context_length:
            return tokens
        return trim_after_last_text(tokens)

    def encode_tokens(self, tokens: torch.Tensor,
                      pseudo_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L'] (any L' <= context length that keeps each end-of-text token; not
        trimmed here) -> features [B, E] (not normalised). With pseudo_tokens [B, W], the
        embedding at every placeholder position of a row is that row's pseudo token.

        Tensors in, tensors out, no data-dependent Python: the ONNX graphs
        (``model.onnx_graphs``) trace this as it is.
        """
        embeddings = self.token_embedding(tokens)  # [B, L', W]
        if pseudo_tokens is not None:
            is_placeholder = (tokens == self.placeholder_id).unsqueeze(-1)  # [B, L', 1]
            embeddings = torch.where(is_placeholder,
                                     pseudo_tokens.unsqueeze(1).to(embeddings.dtype), embeddings)
        length = tokens.shape[1]
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)  # [B, L', W]
        pooled = self.transformer(x, pooled=end_of_text_positions(tokens))  # [B, W]
        return self.ln_final(pooled) @ self.text_projection  # [B, E]


def trim_after_last_text(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, L] -> tokens [B, L'] cut after the batch's last end-of-text token (the
    features of ``CLIP.encode_tokens`` are the same; see ``CLIP.trim_padding``)."""
    if tokens.shape[0] == 0:
        return tokens
    return tokens[:, :int(end_of_text_positions(tokens).max()) + 1]


def trim_to_bucket(tokens: torch.Tensor, buckets=()) -> torch.Tensor:
    """tokens [B, L] on the host -> tokens [B, L'] with L' the smallest of ``buckets`` that
    holds every text's end-of-text token (the exact length when ``buckets`` is empty; L
    when none is long enough). The features do not change (``CLIP.trim_padding``); a few
    fixed lengths keep a compiled step or a CUDA graph from meeting a new shape at every
    batch."""
    if tokens.device.type != "cpu":
        raise ValueError("trim_to_bucket reads the lengths on the host: give CPU tokens")
    if tokens.shape[0] == 0:
        return tokens
    needed = int(end_of_text_positions(tokens).max()) + 1
    length = min((bucket for bucket in buckets if bucket >= needed), default=None)
    if length is None:
        length = needed if not buckets else tokens.shape[1]
    return tokens[:, :min(length, tokens.shape[1])]


def end_of_text_positions(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, L] -> [B]: the end-of-text id is the largest in the vocabulary, so argmax
    finds its position (the first, should a text hold it twice).

    The ids are compared as float32, which holds every id exactly (49408 < 2**24): an
    exported graph's ArgMax then reads floats, which every ONNX runtime implements, where
    some lack ArgMax over int64.
    """
    return tokens.float().argmax(dim=-1)


def infer_architecture(state_dict: Mapping[str, torch.Tensor],
                       grid: Sequence[int] | None = None,
                       quick_gelu: bool = True) -> ClipArchitecture:
    """Read every size of a ViT CLIP from the shapes of its OpenAI-layout state dict.

    ``grid`` (rows, cols) is needed only for a non-square position grid (a fine-tuned model
    saved at e.g. 384x128); OpenAI's grids are square. ``quick_gelu`` is the activation,
    which no shape tells (OpenAI's QuickGELU unless the weights were trained with GELU).
    """
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
                "token_embedding.weight", "positional_embedding", "text_projection")
    missing = [key for key in required if key not in state_dict]
    if missing:
        if "visual.layer1.0.conv1.weight" in state_dict:
            hint = " (a ResNet CLIP? only ViT image towers are supported)"
        else:
            foreign = sorted({".".join(key.split(".")[:2]) + ".*" for key in state_dict
                              if not OPENAI_KEY.fullmatch(key)})
            hint = (f"; it has {', '.join(foreign[:8])} instead (only ViT towers in OpenAI's "
                    "layout are supported)" if foreign else "")
        raise CheckpointError(f"not an OpenAI ViT CLIP state dict: missing {', '.join(missing)}"
                              f"{hint}")
    conv = state_dict["visual.conv1.weight"]  # [width, 3, patch, patch]
    num_patches = state_dict["visual.positional_embedding"].shape[0] - 1
    if grid is None:
        side = math.isqrt(num_patches)
        grid = (side, side)
    grid = tuple(int(cells) for cells in grid)
    if grid[0] * grid[1] != num_patches:
        raise CheckpointError(f"visual.positional_embedding has {num_patches} patch positions, "
                              f"expected {grid[0]}x{grid[1]}")

    def count_layers(prefix: str) -> int:
        blocks = {key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)}
        return len(blocks)

    return ClipArchitecture(
        embed_dim=state_dict["text_projection"].shape[1],
        patch_size=conv.shape[-1],
        vision_width=conv.shape[0],
        vision_layers=count_layers("visual.transformer.resblocks."),
        pretrained_grid=grid,
        text_width=state_dict["token_embedding.weight"].shape[1],
        text_layers=count_layers("transformer.resblocks."),
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        pretrained_context_length=state_dict["positional_embedding"].shape[0],
        quick_gelu=quick_gelu,
    )


@dataclasses.dataclass(frozen=True)
class ClipFile:
    """The weights of a CLIP file in OpenAI's layout, and what kind of file held them:
    ``archive`` (OpenAI's TorchScript release), ``state_dict`` (a plain torch state dict) or
    ``open_clip`` (open_clip's files, whose activation is not recorded)."""

    state_dict: dict
    kind: str


def read_clip_file(path: str | Path) -> ClipFile:
    """Read a CLIP file: OpenAI's TorchScript archive, a plain state dict (any dtype), or
    open_clip's ``.bin`` / ``.safetensors`` / trainer checkpoint (its keys mapped to OpenAI's).

    Only the TorchScript archive goes through ``torch.jit.load``; torch pickles are read with
    ``torch.load(weights_only=True)`` and ``.safetensors`` with ``safetensors``, neither of
    which runs code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CLIP checkpoint not found: {path} (expected the OpenAI file, "
                              "e.g. checkpoint/ViT-B-16.pt, or open_clip's file)")
    kind = ("open_clip" if path.suffix in OPEN_CLIP_SUFFIXES or path.name.startswith("open_clip")
            else "state_dict")
    if path.suffix == ".safetensors":
        state_dict = _read_safetensors(path)
    else:
        try:
            if _is_torchscript_archive(path):
                kind = "archive"
                state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
            else:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except UNREADABLE_FILE_ERRORS as error:
            raise CheckpointError(f"cannot read CLIP checkpoint {path}: not a TorchScript "
                                  f"archive or a state dict "
                                  f"({str(error).splitlines()[0][:200]})") from None
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        kind, state_dict = "open_clip", state_dict["state_dict"]  # open_clip's trainer
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} does not hold a CLIP state dict (name -> tensor)")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if kind == "open_clip":
        state_dict = _from_open_clip_layout(state_dict)
    return ClipFile(state_dict, kind)


def read_checkpoint_file(path: str | Path) -> dict:
    """The state dict of a CLIP file in OpenAI's layout (see ``read_clip_file``)."""
    return read_clip_file(path).state_dict


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                              "(pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, *UNREADABLE_FILE_ERRORS) as error:
        raise CheckpointError(f"cannot read CLIP checkpoint {path}: not a safetensors file "
                              f"({str(error).splitlines()[0][:200]})") from None


def _from_open_clip_layout(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """open_clip's ViT state dict -> OpenAI's names. Its plain CLIP uses OpenAI's names
    already; CustomTextCLIP keeps the text tower under ``text.``; a scalar may be saved as
    [1]. Anything else (a timm or Hugging Face tower, attention pooling) is left for strict
    loading to name."""
    converted = {}
    for key, value in state_dict.items():
        if key in OPEN_CLIP_DROPPED_KEYS:
            continue
        if key.startswith("text.") and key[len("text."):].startswith(OPEN_CLIP_TEXT_TOWER):
            key = key[len("text."):]
        if key == "logit_scale":
            value = value.reshape(())
        converted[key] = value
    return converted


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name
                   for name in archive.namelist())


def resolve_quick_gelu(clip_file: ClipFile, path: str | Path, quick_gelu: bool | None) -> bool:
    """The activation of a CLIP file's weights: ``quick_gelu`` (``model.quick_gelu``) where
    given, else what the kind of file implies; open_clip's files need it given."""
    if clip_file.kind == "archive":
        if quick_gelu is False:
            raise CheckpointError(f"{path} is OpenAI's TorchScript archive, trained with "
                                  "QuickGELU: model.quick_gelu=false does not fit it (leave it "
                                  "null or set it true)")
        return True
    if quick_gelu is not None:
        return bool(quick_gelu)
    if clip_file.kind == "open_clip":
        raise CheckpointError(f"{path} is an open_clip file, whose weights do not say which "
                              f"activation they were trained with: set {QUICK_GELU_HINT}")
    log.info("%s: a plain state dict, taken as QuickGELU (OpenAI's activation); set "
             "model.quick_gelu=false if it was trained with GELU", path)
    return True


def build_clip(state_dict: Mapping[str, torch.Tensor], image_size: Sequence[int] = (224, 224),
               context_length: int = 77, source_grid: Sequence[int] | None = None,
               quick_gelu: bool = True) -> CLIP:
    """Build a CLIP from an OpenAI-layout state dict and load it strictly.

    The vision position grid (``source_grid``, square if not given) is resampled to
    ``image_size`` and the text positions to ``context_length`` when they differ.
    ``quick_gelu`` is the activation the weights were trained with (OpenAI's by default).
    """
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()
                  if key not in ARCHIVE_METADATA_KEYS}
    arch = infer_architecture(state_dict, source_grid, quick_gelu)
    image_size = tuple(int(side) for side in image_size)
    if len(image_size) != 2 or any(side % arch.patch_size for side in image_size):
        raise CheckpointError(f"image_size {list(image_size)} must be [H, W], both multiples of "
                              f"the patch size {arch.patch_size}")
    model = CLIP(arch, image_size, context_length)
    state_dict = {key: value.float() for key, value in state_dict.items()}
    state_dict["visual.positional_embedding"] = resample_vision_positions(
        state_dict["visual.positional_embedding"], arch.pretrained_grid, model.visual.grid_size)
    state_dict["positional_embedding"] = resample_text_positions(
        state_dict["positional_embedding"], context_length)
    load_state_dict_strict(model, state_dict, source="CLIP checkpoint")
    return model


def load_clip(path: str | Path, image_size: Sequence[int] = (224, 224),
              context_length: int = 77, quick_gelu: bool | None = None) -> CLIP:
    """Build CLIP from an OpenAI or open_clip file, in fp32.

    ``quick_gelu``: the activation (``model.quick_gelu``); None takes QuickGELU for OpenAI's
    archive and plain state dicts (saying so in the log) and refuses open_clip's files, whose
    activation only the person who chose them knows. The result's ``arch.quick_gelu`` is the
    activation used.
    """
    try:
        clip_file = read_clip_file(path)
        _refuse_wide_heads(clip_file, path)
        quick_gelu = resolve_quick_gelu(clip_file, path, quick_gelu)
    except CheckpointError as error:
        raise CheckpointError(_naming(path, error)) from None
    try:
        return build_clip(clip_file.state_dict, image_size, context_length,
                          quick_gelu=quick_gelu)
    except CheckpointError as error:
        message = _naming(path, error)
        if clip_file.kind == "open_clip" and "OpenAI's layout" not in message:
            message += ("; open_clip files load for its ViT models in OpenAI's layout (e.g. "
                        "ViT-B-16, ViT-L-14)")
        raise CheckpointError(message) from None


def _refuse_wide_heads(clip_file: ClipFile, path: str | Path) -> None:
    """open_clip's ViT-H/g/bigG would load with the wrong number of image heads."""
    conv = clip_file.state_dict.get("visual.conv1.weight")
    wide = OPEN_CLIP_WIDE_HEADS.get(conv.shape[0]) if conv is not None else None
    if clip_file.kind == "open_clip" and wide:
        raise CheckpointError(f"{path} looks like open_clip's {wide}; only image towers with "
                              f"{HEAD_WIDTH}-channel heads load (e.g. ViT-B-16, ViT-L-14)")


def _naming(path: str | Path, error: Exception) -> str:
    """``error``'s message, starting with ``path`` unless it names it already."""
    return str(error) if str(path) in str(error) else f"{path}: {error}"


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [f"{key} (checkpoint {list(state_dict[key].shape)}, model {list(own[key].shape)})"
                  for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("wrong shapes", mismatched)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)
