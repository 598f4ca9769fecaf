"""Image transforms: resizing, normalisation and the paper's random augmentation.

``train_transform(cfg)`` and ``eval_transform(cfg)`` read ``model.image_size`` and the
``data.*`` keys below, so that training, evaluation and search see images prepared the
same way. The defaults are those of the paper's code: ImageNet mean/std, bilinear resize
for training and bicubic for testing, two transforms drawn with replacement from six,
grayscale with probability 0.1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from utils.errors import ConfigError

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


class RandomChoiceOf:
    """Apply ``count`` transforms drawn at random from ``transforms``, with or without
    replacement (with: the same one may come twice, e.g. two rotations).

    Draws from torch's generator, like the transforms themselves, so one seed fixes both.
    """

    def __init__(self, transforms: Sequence, count: int, replacement: bool = True):
        self.transforms = list(transforms)
        self.replacement = replacement
        self.count = count if replacement else min(count, len(self.transforms))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.replacement:
            choices = torch.randint(len(self.transforms), (self.count,))
        else:
            choices = torch.randperm(len(self.transforms))[:self.count]
        for choice in choices.tolist():
            image = self.transforms[choice](image)
        return image


def augmentations(image_size: Sequence[int], grayscale_p: float = 0.1) -> list:
    """The paper's pool: colour jitter, rotation <= 15 deg, resized crop (0.9-1.0),
    grayscale, horizontal flip, random erasing (all on float tensors in [0, 1])."""
    return [
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        v2.RandomRotation(15),
        v2.RandomResizedCrop(tuple(image_size), scale=(0.9, 1.0), antialias=True),
        v2.RandomGrayscale(p=grayscale_p),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomErasing(p=0.5, scale=(0.10, 0.20)),
    ]


def _normalize(name: str) -> v2.Normalize:
    if name not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize={name!r} is not one of {', '.join(NORMALIZATIONS)}")
    return v2.Normalize(*NORMALIZATIONS[name])


def _resize(image_size: Sequence[int], interpolation: str) -> v2.Resize:
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.test_interpolation={interpolation!r} is not one of "
                          f"{', '.join(INTERPOLATIONS)}")
    return v2.Resize(tuple(image_size), interpolation=INTERPOLATIONS[interpolation],
                     antialias=True)


def train_transform(cfg):
    """PIL image -> normalised float tensor [3, H, W]: bilinear resize, then (with
    ``data.augment``) ``data.num_augments`` transforms of the paper's pool."""
    data = cfg.data
    steps = [v2.ToImage(), _resize(cfg.model.image_size, "bilinear"),
             v2.ToDtype(torch.float32, scale=True)]
    if data.augment and data.num_augments > 0:
        steps.append(RandomChoiceOf(augmentations(cfg.model.image_size, data.grayscale_p),
                                    data.num_augments, data.augment_replacement))
    steps.append(_normalize(data.normalize))
    return v2.Compose(steps)


def eval_transform(cfg):
    """PIL image -> normalised float tensor [3, H, W] for evaluation and search."""
    return v2.Compose([v2.ToImage(), _resize(cfg.model.image_size, cfg.data.test_interpolation),
                       v2.ToDtype(torch.float32, scale=True), _normalize(cfg.data.normalize)])
