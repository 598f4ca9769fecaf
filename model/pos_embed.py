"""Resampling of learned position embeddings to a new image grid or text length."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resample_vision_positions(positions: torch.Tensor, old_grid: Sequence[int],
                              new_grid: Sequence[int]) -> torch.Tensor:
    """Resize a ViT position table from ``old_grid`` to ``new_grid`` (rows, cols).

    positions: [1 + rows*cols, D], the class-token position first; it is kept as is and the
    patch positions are interpolated bicubically in 2-D (in float32, dtype restored), so a
    square pretrained grid serves person-shaped inputs such as 384x128.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return positions
    expected = 1 + old_grid[0] * old_grid[1]
    if positions.shape[0] != expected:
        raise ValueError(f"position table has {positions.shape[0]} rows, expected {expected} "
                         f"for a {old_grid[0]}x{old_grid[1]} grid plus the class token")
    cls_position, patch_positions = positions[:1], positions[1:]
    width = positions.shape[1]
    grid = patch_positions.float().reshape(1, *old_grid, width).permute(0, 3, 1, 2)  # [1, D, h, w]
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    patch_positions = grid.permute(0, 2, 3, 1).reshape(-1, width).to(positions.dtype)
    return torch.cat([cls_position, patch_positions], dim=0)  # [1 + H*W, D]


def resample_text_positions(positions: torch.Tensor, context_length: int) -> torch.Tensor:
    """Fit a text position table [L, D] to ``context_length`` rows.

    Shorter: keep the first rows; with causal attention this is exactly the original model
    on texts that fit. Longer: linear interpolation over the whole table.
    """
    length = positions.shape[0]
    if context_length <= length:
        return positions[:context_length]
    table = positions.float().t().unsqueeze(0)  # [1, D, L]
    table = F.interpolate(table, size=context_length, mode="linear", align_corners=True)
    return table.squeeze(0).t().to(positions.dtype).contiguous()  # [context_length, D]
