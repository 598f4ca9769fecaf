"""Image transforms: resizing, normalisation and the paper's random augmentation.

``train_transform(cfg)`` and ``eval_transform(cfg)`` read ``model.image_size`` and the
``data.*`` keys below, so that training, evaluation and search see images prepared the
same way. The defaults are those of the paper's code: ImageNet mean/std, bilinear resize
for training and bicubic for testing, two transforms drawn with replacement from six,
grayscale with probability 0.1.

The resize is PIL's own, on the 8-bit PIL image, and the result becomes floats in [0, 1]
as ``ToTensor()`` makes them (value / 255), as in the paper's code: torchvision's
``Resize`` on a PIL image calls ``PIL.Image.resize`` with the same filter. Resizing a
uint8 tensor with torchvision's tensor kernel instead moves pixels by 1-2/255 from
64x128 photos, up to 9/255 from 128x384 ones (to 224x224), enough to swap near-tied
gallery photos (``tests/test_preprocessing.py``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import to_pil_image

from utils.errors import ConfigError

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
_RESAMPLING = getattr(Image, "Resampling", Image)  # Pillow < 9.1 keeps the filters on Image
PIL_FILTERS = {InterpolationMode.BICUBIC: _RESAMPLING.BICUBIC,
               InterpolationMode.BILINEAR: _RESAMPLING.BILINEAR}


def as_rgb_image(image) -> Image.Image:
    """A PIL image, or a uint8 tensor [C, H, W] (C = 1 or 3, e.g. from
    ``torchvision.io.decode_image``) -> an RGB PIL image.

    Other modes are converted as ``datasets.base.read_image`` converts files (``L`` repeated
    over the channels, the alpha of ``RGBA`` dropped). A uint8 tensor converts to PIL
    without loss, so it gives exactly the result of the PIL image it holds. A float tensor
    is refused: PIL resamples 8-bit images, and rounding it to 8 bits here would hide that.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] in (1, 3):
            return to_pil_image(image.cpu()).convert("RGB")
        raise TypeError(f"image transforms take a PIL image or a uint8 tensor [C, H, W] with "
                        f"C = 1 or 3, not a {image.dtype} tensor of shape {list(image.shape)}; "
                        "convert a float image in [0, 1] to 8 bits first, as the resize "
                        "works on 8-bit pixels")
    raise TypeError(f"image transforms take a PIL image or a uint8 tensor [C, H, W], "
                    f"not {type(image).__name__}")


class ResizePIL:
    """RGB PIL image -> PIL image of ``size`` [H, W] (aspect ratio not kept), resampled by
    ``PIL.Image.resize`` with ``interpolation``'s filter (antialiased, as PIL always is)."""

    def __init__(self, size: Sequence[int], interpolation: InterpolationMode):
        self.size = tuple(size)
        self.interpolation = interpolation
        self.resample = PIL_FILTERS[interpolation]

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        return image.resize((width, height), resample=self.resample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation})"


def to_float_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1]: value / 255, as ``ToTensor()``."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # [H, W, 3]
    # One pass to float in [3, H, W] layout, then divide in place (the same values).
    return pixels.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format
                                      ).div_(255)


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


CROP_ASPECTS = ("fixed", "input")
TORCHVISION_CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default width/height range


def crop_ratio(image_size: Sequence[int], crop_aspect: str = "fixed") -> tuple:
    """The width/height range of the random resized crop. ``fixed``: torchvision's
    default (3/4, 4/3), the paper's code's. ``input``: that range around the input's own
    width/height, so that a crop of a non-square input (e.g. [64, 32]) fits it; from
    ``fixed`` such a crop never fits and torchvision falls back to one centre crop at
    ratio 3/4, cutting head and feet. The same at a square input."""
    if crop_aspect not in CROP_ASPECTS:
        raise ConfigError(f"data.crop_aspect={crop_aspect!r} is not one of "
                          f"{', '.join(CROP_ASPECTS)}")
    if crop_aspect == "fixed":
        return TORCHVISION_CROP_RATIO
    aspect = image_size[1] / image_size[0]
    return (aspect * TORCHVISION_CROP_RATIO[0], aspect * TORCHVISION_CROP_RATIO[1])


def augmentations(image_size: Sequence[int], grayscale_p: float = 0.1,
                  crop_aspect: str = "fixed", fill: float = 0.0) -> list:
    """The paper's pool: colour jitter, rotation <= 15 deg, resized crop (0.9-1.0),
    grayscale, horizontal flip, random erasing (all on float tensors in [0, 1]).
    ``crop_aspect``: see ``crop_ratio``; ``fill``: what rotation and erasing paint, in
    [0, 1] (0, black, in the paper's code; 1, white, suits a sketch's paper)."""
    if not 0.0 <= fill <= 1.0:
        raise ConfigError(f"data.sketch_fill={fill} must be in [0, 1] (0 black, 1 white)")
    return [
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        v2.RandomRotation(15, fill=fill),
        v2.RandomResizedCrop(tuple(image_size), scale=(0.9, 1.0),
                             ratio=crop_ratio(image_size, crop_aspect), antialias=True),
        v2.RandomGrayscale(p=grayscale_p),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomErasing(p=0.5, scale=(0.10, 0.20), value=fill),
    ]


def _normalize(name: str) -> v2.Normalize:
    if name not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize={name!r} is not one of {', '.join(NORMALIZATIONS)}")
    return v2.Normalize(*NORMALIZATIONS[name])


def _resize(image_size: Sequence[int], interpolation: str) -> ResizePIL:
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.test_interpolation={interpolation!r} is not one of "
                          f"{', '.join(INTERPOLATIONS)}")
    return ResizePIL(image_size, INTERPOLATIONS[interpolation])


def train_transform(cfg, sketch: bool = False):
    """Image -> normalised float tensor [3, H, W] (``model.image_size``): PIL's bilinear
    resize, /255, then (with ``data.augment``) ``data.num_augments`` transforms of the
    paper's pool (``data.crop_aspect``; for sketches, ``data.sketch_fill`` painted by
    rotation and erasing, else black). Takes what ``as_rgb_image`` takes: a PIL image (any
    mode) or a uint8 tensor [C, H, W], which gives the same result; a float tensor is a
    ``TypeError``."""
    data = cfg.data
    steps = [as_rgb_image, _resize(cfg.model.image_size, "bilinear"), to_float_tensor]
    if data.augment and data.num_augments > 0:
        pool = augmentations(cfg.model.image_size, data.grayscale_p, data.crop_aspect,
                             data.sketch_fill if sketch else 0.0)
        steps.append(RandomChoiceOf(pool, data.num_augments, data.augment_replacement))
    steps.append(_normalize(data.normalize))
    return v2.Compose(steps)


def eval_transform(cfg):
    """Image -> normalised float tensor [3, H, W] for evaluation and search: PIL's resize
    with ``data.test_interpolation`` (bicubic by default), /255, normalisation. Inputs as
    for ``train_transform``."""
    return v2.Compose([as_rgb_image, _resize(cfg.model.image_size, cfg.data.test_interpolation),
                       to_float_tensor, _normalize(cfg.data.normalize)])
