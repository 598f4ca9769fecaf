"""What every dataset produces: training samples and evaluation sets, plus image reading."""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from model.tokenizer import tokenize
from utils.errors import DatasetError

# Image files the project reads: dataset loaders, sketch drawing, search galleries.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# What goes wrong in a dataset, by kind; a parser returns [(kind, message), ...] so that the
# loaders stop at the first and ``datasets.check`` lists them all.
PROBLEM_KINDS = {
    "layout": "annotation files and folders missing or unusable",
    "missing_files": "annotation entries pointing at nothing",
    "missing_sketches": "missing sketches",
    "unmatched": "people without their counterpart",
    "unreadable": "unreadable images",
    "empty_splits": "empty splits",
}


def read_image(path: Path) -> Image.Image:
    """Open an image as RGB; an unreadable file is a ``DatasetError`` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"corrupt or unreadable image: {path} ({error}); set "
                           "data.skip_bad_images=true to skip such files") from None


def read_lines(path: Path) -> list:
    """The lines of a text file: UTF-8 with or without a byte-order mark, LF or CRLF."""
    try:
        return Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                           ) from None


def image_files(folder: Path) -> list:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(path for path in Path(folder).iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def stop_at_first(problems: list, hint: str = "") -> None:
    """Raise a ``DatasetError`` for the first of ``problems`` ([(kind, message)]), saying how
    many more there are; nothing when there are none."""
    if not problems:
        return
    more = (f" (and {len(problems) - 1} more problem(s): python -m datasets.check lists them "
            "all)") if len(problems) > 1 else ""
    raise DatasetError(problems[0][1] + more + (f"; {hint}" if hint else ""))


def require_path(path: Path, what: str, layout: str) -> Path:
    """Fail with the expected layout when a dataset file or folder is missing."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}\nexpected layout:\n{layout}")
    return path


@dataclasses.dataclass(frozen=True)
class TrainSample:
    """One training item: a sketch, the photos it may be paired with, and captions."""

    label: int  # person label, 0..N-1 over the training set
    photos: tuple  # photo paths of this pairing (one is drawn per use)
    sketch: Path
    captions: tuple = ()  # one is drawn per use (stage 1)
    captions_bt: tuple = ()  # back-translated captions, drawn with probability backtrans_p


@dataclasses.dataclass
class EvalSet:
    """A retrieval test: queries (sketches, texts) against a gallery of photos.

    Cams follow the Market-1501 protocol: a gallery photo with the query's id and cam is
    not counted. PEDES gives each sketch the cam of the photo it was traced from, so that
    exactly that photo is left out.
    """

    name: str
    gallery_paths: list
    gallery_ids: list
    gallery_cams: list | None = None
    sketch_paths: list = dataclasses.field(default_factory=list)
    sketch_ids: list = dataclasses.field(default_factory=list)
    sketch_cams: list | None = None
    text_queries: list = dataclasses.field(default_factory=list)  # stage 1: captions
    text_ids: list = dataclasses.field(default_factory=list)
    text_photos: list = dataclasses.field(default_factory=list)  # the photo a caption describes
    feedback: list = dataclasses.field(default_factory=list)  # stage 2: text per sketch query

    def __post_init__(self):
        if not self.gallery_paths:
            raise DatasetError(f"{self.name}: the gallery is empty (no test photos found)")
        if not self.sketch_paths and not self.text_queries:
            raise DatasetError(f"{self.name}: no queries (no test sketches or captions found)")


class PairDataset(Dataset):
    """Yields ``{"photo", "sketch", "tokens", "label"}``; tokenisation happens here, not in
    the model."""

    def __init__(self, samples: Sequence[TrainSample], photo_transform: Callable,
                 sketch_transform: Callable, context_length: int = 77,
                 backtrans_p: float = 0.0, with_text: bool = True, with_view: bool = False,
                 with_caption: bool = False):
        if not samples:
            raise DatasetError("the training split is empty")
        self.samples = list(samples)
        self.photo_transform, self.sketch_transform = photo_transform, sketch_transform
        self.context_length = context_length
        self.backtrans_p = backtrans_p
        self.with_text = with_text
        self.with_view = with_view  # a second augmented photo (SimCLR self-supervision)
        self.with_caption = with_caption

    def __len__(self) -> int:
        return len(self.samples)

    def num_classes(self) -> int:
        return 1 + max(sample.label for sample in self.samples)

    def __getitem__(self, key) -> dict:
        """``key``: an index, or ``(index, seed)`` from ``EpochSampler``; with a seed every
        random choice of this item is fixed, whichever worker loads it and whenever."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        rng = random.Random(seed)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            item = {"photo": self.photo_transform(read_image(rng.choice(sample.photos))),
                    "sketch": self.sketch_transform(read_image(sample.sketch)),
                    "label": torch.tensor(sample.label)}
            if self.with_view:
                item["photo_view"] = self.photo_transform(read_image(rng.choice(sample.photos)))
        if self.with_text:
            use_bt = bool(sample.captions_bt) and rng.random() < self.backtrans_p
            caption = rng.choice(sample.captions_bt if use_bt else sample.captions)
            item["tokens"] = tokenize(caption, self.context_length)[0]
            if self.with_caption:
                item["caption"] = caption  # MixGen joins captions when collating
        return item


class ImageListDataset(Dataset):
    """Images for feature extraction: yields ``(tensor, index)``."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(read_image(self.paths[index])), index


def image_problem(path: Path) -> str | None:
    """None when the image at ``path`` decodes, else why not: the one readability check.
    JPEGs are decoded at 1/8 scale: every byte is still read, at a fraction of the cost."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # decoders raise many types for damaged files
        return f"{type(error).__name__}: {error}"
    return None


def unreadable_images(paths) -> set:
    """The paths among ``paths`` that cannot be decoded (each read once, in threads)."""
    from concurrent.futures import ThreadPoolExecutor

    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=8) as pool:
        return {path for path, problem in zip(unique, pool.map(image_problem, unique))
                if problem is not None}


def drop_samples_with_bad_images(samples: list) -> tuple:
    """(usable samples, unreadable paths): samples lose unreadable photos; a sample whose
    sketch or every photo is unreadable is dropped."""
    bad = unreadable_images([p for s in samples for p in s.photos] + [s.sketch for s in samples])
    kept = []
    for sample in samples:
        photos = tuple(p for p in sample.photos if p not in bad)
        if photos and sample.sketch not in bad:
            kept.append(dataclasses.replace(sample, photos=photos))
    return kept, bad


def drop_bad_images_from_eval_set(eval_set: EvalSet) -> tuple:
    """(EvalSet without unreadable gallery photos or query sketches, unreadable paths)."""
    bad = unreadable_images(list(eval_set.gallery_paths) + list(eval_set.sketch_paths))
    if not bad:
        return eval_set, bad
    keep_g = [i for i, p in enumerate(eval_set.gallery_paths) if p not in bad]
    keep_q = [i for i, p in enumerate(eval_set.sketch_paths) if p not in bad]
    def pick(values, rows):
        return (None if values is None else [values[i] for i in rows])
    return dataclasses.replace(
        eval_set, gallery_paths=pick(eval_set.gallery_paths, keep_g),
        gallery_ids=pick(eval_set.gallery_ids, keep_g),
        gallery_cams=pick(eval_set.gallery_cams, keep_g),
        sketch_paths=pick(eval_set.sketch_paths, keep_q),
        sketch_ids=pick(eval_set.sketch_ids, keep_q),
        sketch_cams=pick(eval_set.sketch_cams, keep_q),
        feedback=pick(eval_set.feedback, keep_q) if eval_set.feedback else []), bad
