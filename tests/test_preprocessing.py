"""Images are prepared as the paper's code prepares them (misc/data.py:60-64 at test,
misc/caption_dataset.py:21-33 in training): PIL resizes the 8-bit PIL image (bicubic at
test, bilinear in training), then value / 255 as ``ToTensor()``, then (training) the
augmentations, then normalisation. Checked here against the same steps done directly with
PIL and numpy, on photo-sized inputs (Market crops are 64x128, PEDES ones up to 128x384)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torchvision.transforms import InterpolationMode, v2

from datasets.base import read_image
from datasets.transforms import (
    INTERPOLATIONS,
    NORMALIZATIONS,
    RandomChoiceOf,
    augmentations,
    crop_ratio,
    eval_transform,
    train_transform,
)
from utils.config import load_config
from utils.errors import ConfigError

TOLERANCE = 1e-6  # after normalisation; float32 rounding alone is ~3e-7
PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
PHOTO_SIZES = [(64, 128), (128, 384)]  # PIL (W, H): Market-1501 crops, tall PEDES crops
TARGETS = [[224, 224], [384, 128], [256, 96]]  # model.image_size [H, W]: up, as is, down


def natural_image(size, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A seeded photo-like image of PIL ``size`` (W, H): smooth colour noise over
    gradients, with sharp-edged blocks (clothes, background) and a bright line."""
    width, height = size
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(height, width, 3)), sigma=(2.0, 2.0, 0))
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = 90 + 60 * noise / noise.std() + 40 * (rows / height)[..., None] \
        + 30 * (cols / width)[..., None] * np.array([1.0, -0.5, 0.2])
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top:top + height // 3, left:left + width // 3] += rng.uniform(-80, 80, size=3)
    pixels[:, width // 2] = 250
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = np.clip(rows * 255 // max(height - 1, 1), 0, 255).astype(np.uint8)
        image.putalpha(Image.fromarray(alpha, "L"))
    return image if mode == "RGBA" else image.convert(mode)


def pil_reference(image: Image.Image, image_size, interpolation: str = "bicubic",
                  normalize: str = "imagenet") -> np.ndarray:
    """The reference's steps done by hand: ``Image.resize`` on the RGB PIL image, numpy
    / 255, (x - mean) / std, in float64 -> [3, H, W]."""
    height, width = image_size
    resized = image.convert("RGB").resize((width, height), PIL_FILTERS[interpolation])
    floats = np.asarray(resized, dtype=np.float64) / 255.0  # [H, W, 3]
    mean, std = (np.array(values) for values in NORMALIZATIONS[normalize])
    return ((floats - mean) / std).transpose(2, 0, 1)


def config(image_size, **data):
    overrides = [f"model.image_size=[{image_size[0]},{image_size[1]}]"]
    overrides += [f"data.{key}={value}" for key, value in data.items()]
    return load_config(None, overrides)


def max_difference(tensor: torch.Tensor, reference: np.ndarray) -> float:
    assert tuple(tensor.shape) == reference.shape and tensor.dtype == torch.float32
    return float(np.abs(tensor.numpy().astype(np.float64) - reference).max())


def tensor_kernel_transform(image_size, interpolation: str, normalize: str = "imagenet"):
    """The way images were prepared before (uint8 tensor, torchvision's tensor resize)."""
    return v2.Compose([v2.ToImage(),
                       v2.Resize(tuple(image_size), interpolation=INTERPOLATIONS[interpolation],
                                 antialias=True),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(*NORMALIZATIONS[normalize])])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("image_size", TARGETS)
@pytest.mark.parametrize("photo_size", PHOTO_SIZES)
def test_eval_transform_is_pils_resize(photo_size, image_size, interpolation):
    image = natural_image(photo_size, seed=sum(photo_size))
    cfg = config(image_size, test_interpolation=interpolation)
    prepared = eval_transform(cfg)(image)
    assert max_difference(prepared, pil_reference(image, image_size, interpolation)) < TOLERANCE


@pytest.mark.parametrize("image_size", TARGETS)
@pytest.mark.parametrize("photo_size", PHOTO_SIZES)
def test_train_transform_without_augmentation_is_pils_bilinear_resize(photo_size, image_size):
    image = natural_image(photo_size, seed=1 + sum(photo_size))
    cfg = config(image_size, augment="false", normalize="clip")
    prepared = train_transform(cfg)(image)
    reference = pil_reference(image, image_size, "bilinear", normalize="clip")
    assert max_difference(prepared, reference) < TOLERANCE


def test_defaults_bicubic_at_test_bilinear_in_training():
    image, image_size = natural_image((64, 128), seed=3), [224, 224]
    cfg = config(image_size, augment="false")
    assert max_difference(eval_transform(cfg)(image), pil_reference(image, image_size)) \
        < TOLERANCE
    assert max_difference(train_transform(cfg)(image),
                          pil_reference(image, image_size, "bilinear")) < TOLERANCE


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_files_as_the_loaders_read_them(tmp_path, mode):
    """A grayscale or RGBA file read by ``read_image`` (-> RGB, alpha dropped), or handed
    over as it is: both match PIL's resize of ``convert("RGB")``."""
    path = tmp_path / f"photo_{mode}.png"
    natural_image((128, 384), seed=4, mode=mode).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
        original = opened.copy()
    image_size = [224, 224] if mode == "L" else [384, 128]
    cfg = config(image_size, augment="false")
    for transform, interpolation in ((eval_transform(cfg), "bicubic"),
                                     (train_transform(cfg), "bilinear")):
        reference = pil_reference(original, image_size, interpolation)
        assert max_difference(transform(read_image(path)), reference) < TOLERANCE
        assert max_difference(transform(original), reference) < TOLERANCE


def test_the_check_fails_on_the_tensor_kernel_resize():
    """The comparison above catches torchvision's uint8 tensor resize (the way images were
    prepared before), which differs from PIL's by 1-2/255 on 64x128 photos and up to 9/255
    on 128x384 ones (0.035 and 0.158 after normalisation)."""
    image_size = [224, 224]
    for photo_size in PHOTO_SIZES:
        image = natural_image(photo_size, seed=sum(photo_size))
        for interpolation in ("bicubic", "bilinear"):
            reference = pil_reference(image, image_size, interpolation)
            old = tensor_kernel_transform(image_size, interpolation)(image)
            assert max_difference(old.as_subclass(torch.Tensor), reference) > 100 * TOLERANCE
            new = eval_transform(config(image_size, test_interpolation=interpolation))(image)
            assert max_difference(new, reference) < TOLERANCE


def test_uint8_tensor_input_gives_the_pil_result_float_tensor_refused():
    image = natural_image((64, 128), seed=5)
    cfg = config([384, 128], augment="false")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, H, W] uint8
    for transform in (eval_transform(cfg), train_transform(cfg)):
        assert torch.equal(transform(pixels), transform(image))
    gray = torch.from_numpy(np.array(image.convert("L")))[None]  # [1, H, W]
    assert torch.equal(eval_transform(cfg)(gray), eval_transform(cfg)(image.convert("L")))
    with pytest.raises(TypeError, match="uint8 tensor"):
        eval_transform(cfg)(pixels.float() / 255)
    with pytest.raises(TypeError, match="PIL image"):
        eval_transform(cfg)(np.array(image))


def test_augmentation_applies_to_the_resized_floats():
    """In training the augmentations see ToTensor()'s floats of PIL's bilinear resize,
    then the result is normalised; one seed fixes which transforms and their parameters."""
    image, image_size = natural_image((128, 384), seed=6), [224, 224]
    cfg = config(image_size)
    height, width = image_size
    floats = torch.from_numpy(np.asarray(
        image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255)
    pool = RandomChoiceOf(augmentations(image_size, cfg.data.grayscale_p),
                          cfg.data.num_augments, cfg.data.augment_replacement)
    normalize = v2.Normalize(*NORMALIZATIONS[cfg.data.normalize])
    for seed in range(4):
        torch.manual_seed(seed)
        prepared = train_transform(cfg)(image)
        torch.manual_seed(seed)
        expected = normalize(pool(floats.permute(2, 0, 1).contiguous()))
        assert torch.allclose(prepared, expected, atol=TOLERANCE, rtol=0)


def test_resize_steps_name_their_filter():
    cfg = config([384, 128], test_interpolation="bilinear")
    assert eval_transform(cfg).transforms[1].interpolation == InterpolationMode.BILINEAR
    assert eval_transform(cfg).transforms[1].size == (384, 128)


@pytest.mark.parametrize("photo_size", PHOTO_SIZES)
def test_the_references_torchvision_calls_give_the_same_pixels(photo_size):
    """The paper's code calls ``transforms.Resize(size, BICUBIC, antialias=True)`` (test)
    and ``transforms.Resize(size)`` (training) on the PIL image; torchvision hands PIL
    images to ``PIL.Image.resize`` with the same filter, in v1 and in v2."""
    from torchvision import transforms as v1
    image, image_size = natural_image(photo_size, seed=7), (224, 224)
    cfg = config(list(image_size))
    ours_test, ours_train = eval_transform(cfg).transforms[1], train_transform(cfg).transforms[1]
    calls = [(v1.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
              ours_test),
             (v2.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
              ours_test),
             (v1.Resize(image_size), ours_train), (v2.Resize(image_size), ours_train)]
    for theirs, ours in calls:
        assert np.array_equal(np.asarray(theirs(image)), np.asarray(ours(image)))
    # The reference's whole test transform (misc/data.py:60-64), value for value.
    reference = v1.Compose([calls[0][0], v1.ToTensor(), v1.Normalize(*NORMALIZATIONS["imagenet"])])
    assert torch.equal(eval_transform(cfg)(image), reference(image))


# ---------------------------------------------------- augmentation at non-square inputs
def row_image(height: int = 64, width: int = 32) -> torch.Tensor:
    """Float image [3, H, W] whose value is its row's index / (H - 1): a crop's rows show."""
    rows = torch.arange(height, dtype=torch.float32) / (height - 1)
    return rows.view(1, height, 1).expand(3, height, width).clone()


def crop_top_rows(crop_aspect: str, draws: int = 40) -> list:
    """The value of the top output row of ``draws`` random resized crops of a 64x32 input."""
    pool = augmentations((64, 32), crop_aspect=crop_aspect)
    crop = pool[2]
    assert isinstance(crop, v2.RandomResizedCrop)
    tops = []
    for seed in range(draws):
        torch.manual_seed(seed)
        tops.append(round(float(crop(row_image())[0, 0].mean()), 3))
    return tops


def test_fixed_crop_ratio_never_fits_a_tall_input():
    """torchvision's default width/height range (3/4..4/3, the paper's code's) cannot place
    a crop of 90-100 % of a 2:1 image: every draw falls back to one centre crop at 3/4,
    which cuts the top and bottom rows (head and feet)."""
    tops = crop_top_rows("fixed")
    assert len(set(tops)) == 1 and tops[0] > 8 / 63


def test_input_crop_ratio_draws_crops_that_fit():
    tops = crop_top_rows("input")
    assert len(set(tops)) >= 4  # real random crops (90-100 % of the rows: tops 0..6)
    assert min(tops) < 3 / 63  # some keep the head
    with pytest.raises(ConfigError, match="data.crop_aspect='square' is not one of"):
        augmentations((64, 32), crop_aspect="square")


def test_crop_ratio_is_the_same_at_a_square_input():
    assert crop_ratio((224, 224), "input") == pytest.approx(crop_ratio((224, 224), "fixed"))
    assert crop_ratio((224, 224), "fixed") == (3 / 4, 4 / 3)


def test_sketch_fill_paints_white_into_sketches_only():
    """Rotation and erasing paint ``data.sketch_fill`` into sketches (1: white paper) and
    black into photos; by default both are black and the two transforms are the same."""
    white = Image.new("RGB", (32, 64), (255, 255, 255))
    cfg = config([64, 32], sketch_fill=1.0, augment=True, num_augments=2, grayscale_p=0.0,
                 normalize="imagenet")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS["imagenet"])
    photo_min, sketch_min = [], []
    for seed in range(30):
        torch.manual_seed(seed)
        photo_min.append(float((train_transform(cfg)(white) * std + mean).min()))
        torch.manual_seed(seed)
        sketch_min.append(float((train_transform(cfg, sketch=True)(white) * std + mean).min()))
    assert min(photo_min) < 0.05  # black painted into the photo
    assert min(sketch_min) > 0.85  # only white (and colour jitter) in the sketch
    default = config([64, 32], augment=True)
    for seed in range(5):
        torch.manual_seed(seed)
        photo = train_transform(default)(white)
        torch.manual_seed(seed)
        assert torch.equal(train_transform(default, sketch=True)(white), photo)
    with pytest.raises(ConfigError, match="data.sketch_fill=2"):
        augmentations((64, 32), fill=2)
