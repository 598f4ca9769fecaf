"""What every dataset produces: training samples and evaluation sets, plus image reading."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from model.tokenizer import tokenize
from utils.errors import DatasetError

log = logging.getLogger(__name__)

# Image files the project reads: dataset loaders, sketch drawing, search galleries.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# What PIL raises for a file it cannot decode (decoders raise several types).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
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


class _TruncationSwitch:
    """When PIL may load a truncated file, per decode, without racing between threads.

    PIL decides from one module-wide flag (``ImageFile.LOAD_TRUNCATED_IMAGES``), read in
    the middle of decoding. Ordinary decodes share this switch; a lenient one holds it
    alone, with the flag set only meanwhile, so that no other thread of the process decodes
    leniently by accident. Lenient decodes are rare (damaged files only), so ordinary ones
    hardly ever wait. Each DataLoader worker process has its own flag and switch.
    """

    def __init__(self):
        self._state = threading.Condition()
        self._ordinary = 0  # ordinary decodes running
        self._lenient_waiting = 0
        self._lenient = False

    @contextlib.contextmanager
    def ordinary(self):
        with self._state:
            while self._lenient or self._lenient_waiting:
                self._state.wait()
            self._ordinary += 1
        try:
            yield
        finally:
            with self._state:
                self._ordinary -= 1
                if not self._ordinary:
                    self._state.notify_all()

    @contextlib.contextmanager
    def lenient(self):
        with self._state:
            self._lenient_waiting += 1
            while self._lenient or self._ordinary:
                self._state.wait()
            self._lenient_waiting -= 1
            self._lenient = True
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before
            with self._state:
                self._lenient = False
                self._state.notify_all()


_SWITCH = _TruncationSwitch()
_reported_truncated = set()  # paths already named in the log by this process
_reported_lock = threading.Lock()


def report_truncated(path: Path, why: str) -> None:
    """Name a truncated image in the log, once per path and process."""
    with _reported_lock:
        if path in _reported_truncated:
            return
        _reported_truncated.add(path)
    log.warning("truncated image, loaded as far as its data go "
                "(data.load_truncated_images=true): %s (%s)", path, why)


def _decode(path: Path, finish: Callable, lenient: bool):
    """``finish(image)`` of the opened image, with truncated data allowed or not."""
    with _SWITCH.lenient() if lenient else _SWITCH.ordinary():
        with Image.open(path) as image:
            return finish(image)


def _as_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def read_image(path: Path, load_truncated_images: bool = True) -> Image.Image:
    """Open an image as RGB; an unreadable file is a ``DatasetError`` naming it.

    With ``load_truncated_images`` (``data.load_truncated_images``; the paper's code sets
    PIL's flag for the whole process), a file that decodes only with truncated data
    allowed (a cut-off JPEG or PNG) loads as far as its data go, at its full size, the
    rest filled in, and is named in the log once. Intact files are decoded once, as usual.
    """
    try:
        return _decode(path, _as_rgb, lenient=False)
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except DECODE_ERRORS as error:
        strict_error = error
    if load_truncated_images:
        try:
            image = _decode(path, _as_rgb, lenient=True)
        except DECODE_ERRORS:
            pass  # unreadable either way: report the first error
        else:
            report_truncated(path, _why(strict_error))
            return image
    hint = ("data.load_truncated_images=true to load it as far as its data go, or "
            if "truncated" in str(strict_error) and not load_truncated_images else "")
    raise DatasetError(f"corrupt or unreadable image: {path} ({strict_error}); set "
                       f"{hint}data.skip_bad_images=true to skip such files") from None


def _why(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


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
    sketch: Path | None  # None: no sketch (a manifest row may have only captions)
    captions: tuple = ()  # one is drawn per use (stage 1)
    captions_bt: tuple = ()  # back-translated captions, drawn with probability backtrans_p
    feedback: tuple = ()  # the words a person adds to this sketch (stage 2, loss.composed)


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
    text_cams: list | None = None  # cams of the text queries (None: no gallery photo left out)
    feedback: list = dataclasses.field(default_factory=list)  # stage 2: text per sketch query

    def __post_init__(self):
        if not self.gallery_paths:
            raise DatasetError(f"{self.name}: the gallery is empty (no test photos found)")
        if not self.sketch_paths and not self.text_queries:
            raise DatasetError(f"{self.name}: no queries (no test sketches or captions found)")


class PairDataset(Dataset):
    """Yields ``{"photo", "sketch", "tokens", "label"}`` (``sketch`` with ``with_sketch``,
    ``tokens`` with ``with_text``); tokenisation happens here, not in the model.

    ``feedback_query``: tokens of a composed query instead of a caption (stage 2): one of
    the sample's feedback texts is drawn and ``feedback_query(text, rng)`` gives the query's
    text (e.g. ``datasets.captions.FeedbackQuery``).
    """

    def __init__(self, samples: Sequence[TrainSample], photo_transform: Callable,
                 sketch_transform: Callable, context_length: int = 77,
                 backtrans_p: float = 0.0, with_text: bool = True, with_view: bool = False,
                 with_caption: bool = False, load_truncated_images: bool = True,
                 with_sketch: bool = True, feedback_query: Callable | None = None):
        if not samples:
            raise DatasetError("the training split is empty")
        self.samples = list(samples)
        self.photo_transform, self.sketch_transform = photo_transform, sketch_transform
        self.context_length = context_length
        self.backtrans_p = backtrans_p
        self.with_text = with_text
        self.with_sketch = with_sketch
        self.with_view = with_view  # a second augmented photo (SimCLR self-supervision)
        self.with_caption = with_caption
        self.load_truncated_images = load_truncated_images  # see ``read_image``
        self.feedback_query = feedback_query

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
            item = {"photo": self.photo_transform(self._read(rng.choice(sample.photos)))}
            if self.with_sketch:
                item["sketch"] = self.sketch_transform(self._read(sample.sketch))
            item["label"] = torch.tensor(sample.label)
            if self.with_view:
                item["photo_view"] = self.photo_transform(self._read(rng.choice(sample.photos)))
        if self.feedback_query is not None:
            text = self.feedback_query(rng.choice(sample.feedback), rng)
            item["tokens"] = tokenize(text, self.context_length)[0]
        elif self.with_text:
            use_bt = bool(sample.captions_bt) and rng.random() < self.backtrans_p
            caption = rng.choice(sample.captions_bt if use_bt else sample.captions)
            item["tokens"] = tokenize(caption, self.context_length)[0]
            if self.with_caption:
                item["caption"] = caption  # MixGen joins captions when collating
        return item

    def _read(self, path: Path) -> Image.Image:
        return read_image(path, self.load_truncated_images)


class ImageListDataset(Dataset):
    """Images for feature extraction: yields ``(tensor, index)``; ``load_truncated_images``:
    see ``read_image``."""

    def __init__(self, paths: Sequence[Path], transform: Callable,
                 load_truncated_images: bool = True):
        self.paths, self.transform = list(paths), transform
        self.load_truncated_images = load_truncated_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = read_image(self.paths[index], self.load_truncated_images)
        return self.transform(image), index


class ImageCheck(NamedTuple):
    """What decoding a file found: ``problem`` is None for an intact image, else why it
    does not decode as a whole; ``truncated``: it decodes with truncated data allowed."""

    problem: str | None
    truncated: bool = False


def _decode_all(image: Image.Image) -> None:
    # JPEGs are decoded at 1/8 scale: every byte is still read, at a fraction of the cost.
    if image.format == "JPEG":
        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()


def check_image(path: Path) -> ImageCheck:
    """Decode the image at ``path``: the one readability check. A file that fails is
    decoded once more with truncated data allowed, to tell a truncated file (which
    ``data.load_truncated_images=true`` loads) from an unreadable one."""
    try:
        _decode(path, _decode_all, lenient=False)
        return ImageCheck(None)
    except Exception as error:  # decoders raise many types for damaged files
        problem = _why(error)
        if isinstance(error, FileNotFoundError):
            return ImageCheck(problem)
    try:
        _decode(path, _decode_all, lenient=True)
    except Exception:  # unreadable either way
        return ImageCheck(problem)
    return ImageCheck(problem, truncated=True)


def image_problem(path: Path, load_truncated_images: bool = True) -> str | None:
    """None when the image at ``path`` can be read (a truncated one too, with
    ``load_truncated_images``), else why not."""
    found = check_image(path)
    return None if found.truncated and load_truncated_images else found.problem


class ImageScan(NamedTuple):
    """What ``scan_images`` found."""

    unreadable: set  # paths that cannot be read (truncated ones too, without the key)
    truncated: set  # paths loaded as far as their data go (with the key)


def scan_images(paths, load_truncated_images: bool = True) -> ImageScan:
    """Decode each of ``paths`` once (in threads): which cannot be read and which are
    truncated (each of those is named in the log once)."""
    from concurrent.futures import ThreadPoolExecutor

    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(zip(unique, pool.map(check_image, unique)))
    truncated = {path for path, check in found.items()
                 if check.truncated and load_truncated_images}
    for path in sorted(truncated):
        report_truncated(path, found[path].problem)
    return ImageScan({path for path, check in found.items()
                      if check.problem is not None and path not in truncated}, truncated)


def drop_samples_with_bad_images(samples: list, load_truncated_images: bool = True) -> tuple:
    """(usable samples, unreadable paths, truncated paths): samples lose unreadable photos;
    a sample whose sketch or every photo is unreadable is dropped."""
    bad, truncated = scan_images([p for s in samples for p in s.photos] +
                                 [s.sketch for s in samples if s.sketch is not None],
                                 load_truncated_images)
    kept = []
    for sample in samples:
        photos = tuple(p for p in sample.photos if p not in bad)
        if photos and sample.sketch not in bad:
            kept.append(dataclasses.replace(sample, photos=photos))
    return kept, bad, truncated


def drop_bad_images_from_eval_set(eval_set: EvalSet, load_truncated_images: bool = True
                                  ) -> tuple:
    """(EvalSet without unreadable gallery photos or query sketches, unreadable paths,
    truncated paths)."""
    bad, truncated = scan_images(list(eval_set.gallery_paths) + list(eval_set.sketch_paths),
                                 load_truncated_images)
    if not bad:
        return eval_set, bad, truncated
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
        feedback=pick(eval_set.feedback, keep_q) if eval_set.feedback else []), bad, truncated
