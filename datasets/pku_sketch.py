"""PKU-Sketch: one sketch and two photos per person, with captions as text feedback.

Pang et al., "Cross-Domain Adversarial Feature Learning for Sketch Re-identification",
ACM MM 2018: 200 people, each with two photos taken by two cameras and one sketch. The
captions (two per person, one per photo) come from the Tri-ReID annotation of the same
people (``TriReID.txt``). The standard protocol trains on 150 people and tests on the
other 50, averaged over 10 random trials.

On disk::

    <root>/PKU-Sketch/
        photo/<id>_<k>.jpg         photos, k = 1, 2 (the camera)
        sketch/<id>.jpg            one sketch per person
        TriReID.txt                lines "<id>/<photo file name>@<caption>"
        idx/{train,test}_{visible,sketch}_<trial>.txt
                                   optional fixed splits, lines "path id cam style" with
                                   the path relative to PKU-Sketch/

Without ``idx/`` the split of trial ``t`` is drawn from ``random.Random(seed * 1000 + t)``
over the sorted ids found in ``photo/`` (150/50 people, or 3/4 and 1/4 when fewer than
200 exist); photos then take their cam from ``_<k>`` and sketches cam 3. The feedback of
a test sketch is one caption of its person as written, chosen with ``random.Random(seed * 7
+ trial + id)`` so that scores repeat (the paper's code draws it at random at every
evaluation).
"""
from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

from datasets.base import EvalSet, TrainSample, require_path
from utils.errors import DatasetError

log = logging.getLogger(__name__)

FOLDER = "PKU-Sketch"
CAPTION_FILE = "TriReID.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SKETCH_CAM = 3
STANDARD_TRAIN, STANDARD_TEST = 150, 50
LAYOUT = """  <data.root>/PKU-Sketch/
      photo/<id>_<k>.jpg        two photos per person (k = camera 1, 2)
      sketch/<id>.jpg           one sketch per person
      TriReID.txt               "<id>/<photo file name>@<caption>", two lines per person
      idx/{train,test}_{visible,sketch}_<trial>.txt   optional: "path id cam style" lines"""


def _folder(root: Path) -> Path:
    require_path(Path(root), "data.root", LAYOUT)
    return require_path(Path(root) / FOLDER, "PKU-Sketch folder", LAYOUT)


def _trial(trial) -> int:
    return 1 if trial is None else int(trial)


def _check_split(split: str) -> None:
    if split != "test":
        raise DatasetError(f"PKU-Sketch has only a test split (asked for {split!r})")


# ----------------------------------------------------------------------------
# Splits: lists of (path, id, cam)
# ----------------------------------------------------------------------------

def read_index(folder: Path, path: Path, default_cam: int | None) -> list:
    """``(path, id, cam)`` per line of an idx file; cam defaults to the ``_<k>`` of a
    photo name (``default_cam`` None) or to ``default_cam``."""
    entries = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(f"{path}, line {number}: expected 'path id cam style', got "
                               f"{line.strip()!r}")
        try:
            pid = int(fields[1])
            cam = int(fields[2]) if len(fields) > 2 else None
        except ValueError:
            raise DatasetError(f"{path}, line {number}: id and cam must be integers, got "
                               f"{line.strip()!r}") from None
        image = folder / fields[0]
        if not image.is_file():
            raise DatasetError(f"{path}, line {number}: missing image {image}")
        if cam is None:
            cam = default_cam if default_cam is not None else _photo_key(image)[1]
        entries.append((image, pid, cam))
    return entries


def _photo_key(path: Path) -> tuple:
    """``(id, k)`` of a photo named ``<id>_<k>``."""
    parts = path.stem.split("_")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise DatasetError(f"{path}: photo name is not <id>_<k>") from None


def _images(folder: Path) -> list:
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def generated_split(ids: list, trial: int, seed: int) -> tuple:
    """Sorted (train ids, test ids) of a trial: 150/50 people, or 3/4 and 1/4 of fewer."""
    ids = sorted(ids)
    if len(ids) < 2:
        raise DatasetError(f"PKU-Sketch: {len(ids)} person(s) found, cannot split")
    if len(ids) >= STANDARD_TRAIN + STANDARD_TEST:
        n_test, n_train = STANDARD_TEST, STANDARD_TRAIN
    else:
        n_test = max(1, round(len(ids) / 4))
        n_train = len(ids) - n_test
    shuffled = random.Random(seed * 1000 + trial).sample(ids, len(ids))
    return sorted(shuffled[n_test:n_test + n_train]), sorted(shuffled[:n_test])


def _generated(folder: Path, trial: int, seed: int, part: str) -> tuple:
    photo_dir = require_path(folder / "photo", "PKU-Sketch photos", LAYOUT)
    sketch_dir = require_path(folder / "sketch", "PKU-Sketch sketches", LAYOUT)
    photos_of = {}
    for photo in _images(photo_dir):
        pid, k = _photo_key(photo)
        photos_of.setdefault(pid, []).append((photo, pid, k))
    sketch_of = {path.stem: path for path in _images(sketch_dir)}
    train_ids, test_ids = generated_split(list(photos_of), trial, seed)
    log.info("PKU-Sketch: no idx/ folder in %s; generated the split of trial %d (%d train / "
             "%d test people) from random.Random(seed * 1000 + trial) with seed=%d",
             folder, trial, len(train_ids), len(test_ids), seed)
    photos, sketches = [], []
    for pid in (train_ids if part == "train" else test_ids):
        if str(pid) not in sketch_of:
            raise DatasetError(f"PKU-Sketch: person {pid} has photos but no sketch "
                               f"{sketch_dir / f'{pid}.jpg'}")
        photos.extend(photos_of[pid])
        sketches.append((sketch_of[str(pid)], pid, SKETCH_CAM))
    return photos, sketches


def load_split(root: Path, trial, seed, part: str) -> tuple:
    """``(photos, sketches)`` of ``part`` ("train" or "test") of a trial, each a list of
    ``(path, id, cam)``: from ``idx/`` when it exists, else drawn from ``seed``."""
    folder, trial, seed = _folder(root), _trial(trial), int(seed or 0)
    index_dir = folder / "idx"
    if not index_dir.is_dir():
        return _generated(folder, trial, seed, part)
    photo_index = require_path(index_dir / f"{part}_visible_{trial}.txt",
                               f"PKU-Sketch {part} photo list of trial {trial}", LAYOUT)
    sketch_index = require_path(index_dir / f"{part}_sketch_{trial}.txt",
                                f"PKU-Sketch {part} sketch list of trial {trial}", LAYOUT)
    return (read_index(folder, photo_index, None),
            read_index(folder, sketch_index, SKETCH_CAM))


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

def read_captions(path: Path) -> dict:
    """``{id: [caption, ...]}`` from ``TriReID.txt``, in file order."""
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, at, caption = line.partition("@")
        pid, slash, _ = name.strip().partition("/")
        if not at or not slash:
            raise DatasetError(f"{path}, line {number}: expected '<id>/<photo>@<caption>', "
                               f"got {line.strip()[:80]!r}")
        try:
            pid = int(pid)
        except ValueError:
            raise DatasetError(f"{path}, line {number}: person id {pid!r} is not an "
                               "integer") from None
        captions.setdefault(pid, []).append(caption.strip())
    return captions


def _captions(folder: Path) -> dict:
    return read_captions(require_path(folder / CAPTION_FILE, "PKU-Sketch captions", LAYOUT))


def choose_caption(captions: list, seed, trial, pid: int) -> str:
    """The feedback caption of person ``pid``: the same for the same seed and trial."""
    if not captions:
        return ""
    return random.Random(int(seed or 0) * 7 + _trial(trial) + pid).choice(captions)


# ----------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------

def train_samples(root: Path, trial, seed, reference_indexing: bool = False) -> list:
    """One sample per training sketch, paired with its person's training photos and
    captions; labels 0..N-1 follow the sorted person ids.

    ``reference_indexing`` reproduces how the paper's code indexes this training set: item
    i is photo i with the sketch and label of person i // 2, over as many items as there
    are sketches, so only the first half of the people (by sorted id) is trained on, each
    with both photos.
    """
    photos, sketches = load_split(root, trial, seed, "train")
    captions = _captions(Path(root) / FOLDER)
    photos_of = {}
    for path, pid, _ in photos:
        photos_of.setdefault(pid, []).append(path)
    for path, pid, _ in sketches:
        if pid not in photos_of:
            raise DatasetError(f"PKU-Sketch trial {_trial(trial)}: training sketch {path} "
                               f"has no training photo of person {pid}")
    labels = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in sketches}))}
    samples = [TrainSample(labels[pid], tuple(photos_of[pid]), path,
                           tuple(captions.get(pid, ())))
               for path, pid, _ in sketches]
    if reference_indexing:
        ordered = sorted(samples, key=lambda sample: sample.label)
        photo_items = [(sample, photo) for sample in ordered for photo in sample.photos]
        samples = [dataclasses.replace(ordered[item // 2], photos=(photo_items[item][1],))
                   for item in range(len(ordered))]
        log.info("PKU-Sketch trial %d: data.pku_reference_indexing=true, training on the "
                 "first %d of %d people", _trial(trial), len({s.label for s in samples}),
                 len(labels))
    log.info("PKU-Sketch trial %d train: %d sketches of %d people", _trial(trial),
             len(samples), len(labels))
    return samples


def eval_set(root: Path, trial, seed, split: str) -> EvalSet:
    """Test photos as gallery, test sketches as queries; each query's feedback is one
    caption of its person, as written."""
    _check_split(split)
    photos, sketches = load_split(root, trial, seed, "test")
    captions = _captions(Path(root) / FOLDER)
    sketch_ids = [pid for _, pid, _ in sketches]
    texts = [choose_caption(captions.get(pid, []), seed, trial, pid) for pid in sketch_ids]
    uncaptioned = sum(1 for text in texts if not text)
    if uncaptioned:
        log.warning("PKU-Sketch trial %d: %d of %d test sketches have no caption in %s; "
                    "their feedback is empty", _trial(trial), uncaptioned, len(texts),
                    CAPTION_FILE)
    return EvalSet(name="pku-sketch", gallery_paths=[path for path, _, _ in photos],
                   gallery_ids=[pid for _, pid, _ in photos],
                   gallery_cams=[cam for _, _, cam in photos],
                   sketch_paths=[path for path, _, _ in sketches], sketch_ids=sketch_ids,
                   sketch_cams=[cam for _, _, cam in sketches], text_queries=texts,
                   text_ids=list(sketch_ids), feedback=list(texts))
