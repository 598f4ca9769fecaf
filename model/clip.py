"""CLIP image and text towers (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", ICML 2021), with loading of OpenAI checkpoints.

The module layout mirrors OpenAI's checkpoint keys, so their weights load strictly:
``visual.*`` is the ViT image tower; ``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final`` and ``text_projection`` form the text tower.

Entry point: ``load_clip(path, image_size=(H, W), context_length=77)``.
"""
from __future__ import annotations

import dataclasses
import math
import zipfile
from collections import OrderedDict
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


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (stable under fp16/bf16 autocast), output in input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation the OpenAI weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (OpenAI's parameter names)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.dropout = 0.0  # on the attention probabilities, while training
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3D]
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, D/H]
        # Fused attention kernel; never asks for the weights, so flash/efficient paths stay on.
        out = F.scaled_dot_product_attention(query, key, value, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, width)  # [B, L, D]
        return self.out_proj(out)


class ResidualBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks, optionally with activation checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: patchify, prepend the class token, transformer, project the class token."""

    def __init__(self, image_size: Sequence[int], patch_size: int, width: int, layers: int,
                 output_dim: int):
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
        self.transformer = Transformer(width, layers, width // HEAD_WIDTH, causal=False)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.conv1(images)  # [B, D, gh, gw]
        patches = patches.flatten(2).transpose(1, 2)  # [B, gh*gw, D]
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [B, 1, D]
        x = torch.cat([cls, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        x = self.transformer(self.ln_pre(x))  # [B, 1+gh*gw, D]
        return self.ln_post(x[:, 0]) @ self.proj  # [B, E]


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
    """Every size of a CLIP ViT model; read from a state dict by ``infer_architecture``."""

    embed_dim: int
    patch_size: int
    vision_width: int
    vision_layers: int
    pretrained_grid: tuple  # position grid the checkpoint was trained with (rows, cols)
    text_width: int
    text_layers: int
    vocab_size: int
    pretrained_context_length: int


class CLIP(nn.Module):
    """CLIP with a ViT image tower and a causal text transformer pooled at the end-of-text token."""

    def __init__(self, arch: ClipArchitecture, image_size: Sequence[int], context_length: int):
        super().__init__()
        self.arch = arch
        self.context_length = context_length
        self.visual = VisionTransformer(image_size, arch.patch_size, arch.vision_width,
                                        arch.vision_layers, arch.embed_dim)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, arch.text_width))
        self.transformer = Transformer(arch.text_width, arch.text_layers,
                                       arch.text_width // HEAD_WIDTH, causal=True)
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
        return self._encode_token_embeddings(self.token_embedding(tokens), tokens)

    def encode_text_with_pseudo_token(self, tokens: torch.Tensor,
                                      pseudo_tokens: torch.Tensor) -> torch.Tensor:
        """Encode texts whose placeholder word ``*`` stands for a learned word embedding.

        tokens [B, L] contain the placeholder id; pseudo_tokens [B, W] (W = text width)
        replace the embedding at every placeholder position of the same row.
        """
        embeddings = self.token_embedding(tokens)  # [B, L, W]
        is_placeholder = (tokens == self.placeholder_id).unsqueeze(-1)  # [B, L, 1]
        embeddings = torch.where(is_placeholder, pseudo_tokens.unsqueeze(1).to(embeddings.dtype),
                                 embeddings)
        return self._encode_token_embeddings(embeddings, tokens)

    def _encode_token_embeddings(self, embeddings: torch.Tensor,
                                 tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.context_length:
            raise ValueError(f"text tokens have length {tokens.shape[1]}, the model expects "
                             f"{self.context_length} (tokenize(..., context_length="
                             f"{self.context_length}))")
        x = embeddings + self.positional_embedding.to(embeddings.dtype)  # [B, L, W]
        x = self.ln_final(self.transformer(x))
        # The end-of-text id is the largest in the vocabulary, so argmax finds its position.
        eot_positions = tokens.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_positions]  # [B, W]
        return pooled @ self.text_projection  # [B, E]


def infer_architecture(state_dict: Mapping[str, torch.Tensor],
                       grid: Sequence[int] | None = None) -> ClipArchitecture:
    """Read every size of a ViT CLIP from the shapes of its OpenAI-layout state dict.

    ``grid`` (rows, cols) is needed only for a non-square position grid (a fine-tuned model
    saved at e.g. 384x128); OpenAI's grids are square.
    """
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
                "token_embedding.weight", "positional_embedding", "text_projection")
    missing = [key for key in required if key not in state_dict]
    if missing:
        hint = (" (a ResNet CLIP? only ViT image towers are supported)"
                if "visual.layer1.0.conv1.weight" in state_dict else "")
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
    )


def read_checkpoint_file(path: str | Path) -> dict:
    """Read an OpenAI CLIP file: their TorchScript archive or a plain state dict (any dtype).

    Only the TorchScript archive goes through ``torch.jit.load``; everything else is read
    with ``torch.load(weights_only=True)``, which never runs code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CLIP checkpoint not found: {path} (expected the OpenAI file, "
                              "e.g. checkpoint/ViT-B-16.pt)")
    try:
        if _is_torchscript_archive(path):
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as error:
        raise CheckpointError(f"cannot read CLIP checkpoint {path}: not a TorchScript archive or "
                              f"a state dict ({str(error).splitlines()[0][:200]})") from None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} does not hold a CLIP state dict (name -> tensor)")
    return dict(state_dict)


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name
                   for name in archive.namelist())


def build_clip(state_dict: Mapping[str, torch.Tensor], image_size: Sequence[int] = (224, 224),
               context_length: int = 77, source_grid: Sequence[int] | None = None) -> CLIP:
    """Build a CLIP from an OpenAI-layout state dict and load it strictly.

    The vision position grid (``source_grid``, square if not given) is resampled to
    ``image_size`` and the text positions to ``context_length`` when they differ.
    """
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()
                  if key not in ARCHIVE_METADATA_KEYS}
    arch = infer_architecture(state_dict, source_grid)
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
              context_length: int = 77) -> CLIP:
    """Build CLIP from an OpenAI checkpoint file (TorchScript archive or state dict), in fp32."""
    try:
        return build_clip(read_checkpoint_file(path), image_size, context_length)
    except CheckpointError as error:
        if str(path) in str(error):
            raise
        raise CheckpointError(f"{path}: {error}") from None


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
