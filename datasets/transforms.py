"""Image transforms: CLIP normalisation and the paper's random augmentation."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RandomChoiceOf:
    """Apply ``count`` transforms drawn at random (without repetition) from ``transforms``.

    Draws from torch's generator, like the transforms themselves, so one seed fixes both.
    """

    def __init__(self, transforms: Sequence, count: int):
        self.transforms = list(transforms)
        self.count = min(count, len(self.transforms))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for choice in torch.randperm(len(self.transforms))[:self.count].tolist():
            image = self.transforms[choice](image)
        return image


def augmentations(image_size: Sequence[int]) -> list:
    """The paper's pool: colour jitter, rotation <= 15 deg, resized crop (0.9-1.0),
    grayscale, horizontal flip, random erasing (all on float tensors in [0, 1])."""
    return [
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        v2.RandomRotation(15),
        v2.RandomResizedCrop(tuple(image_size), scale=(0.9, 1.0), antialias=True),
        v2.RandomGrayscale(p=0.5),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomErasing(p=0.5, scale=(0.10, 0.20)),
    ]


def build_transform(image_size: Sequence[int], augment: bool = False, num_augments: int = 2):
    """PIL image -> normalised float tensor [3, H, W]; with ``augment``, the paper's
    random augmentation between the resize and the normalisation."""
    steps = [v2.ToImage(), v2.Resize(tuple(image_size), antialias=True),
             v2.ToDtype(torch.float32, scale=True)]
    if augment and num_augments > 0:
        steps.append(RandomChoiceOf(augmentations(image_size), num_augments))
    steps.append(v2.Normalize(CLIP_MEAN, CLIP_STD))
    return v2.Compose(steps)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo CLIP normalisation: [..., 3, H, W] -> values in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)
