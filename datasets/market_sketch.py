"""Market-Sketch-1K: hand-drawn sketches of Market-1501 people, with attribute feedback.

Lin et al., "Beyond Domain Gap: Exploiting Subjectivity in Sketch-Based Person
Retrieval", ACM MM 2023: 4,763 sketches of 996 Market-1501 identities drawn by six
artists (styles A to F), each person drawn by several of them. The photos are the
Market-1501 ones of those people. Text feedback comes from the Market-1501 attribute
annotation (Lin et al., "Improving Person Re-identification by Attribute and Identity
Learning", Pattern Recognition 2019): 27 attributes per identity (gender, age, hair,
sleeve and lower-body length, garment type, eight upper and nine lower colours, bags and
hat), turned into one sentence per person as the paper's code does
(``feedback_sentence``).

On disk::

    <root>/Market-Sketch-1K/
        photo/train/XXXX_c?s?_*.jpg      training photos (XXXX: 4-digit person id)
        photo/query/XXXX_c?s?_*.jpg      test gallery
        sketch/<A..F>/train/XXXX_*.jpg   training sketches, one folder per artist style
        sketch/<A..F>/query/XXXX_*.jpg   test queries
        market_attribute.mat             struct market_attribute.{train,test}: 1xN
                                         attribute fields and image_index (id strings)

Only a test split exists. Sketches carry no camera, so no gallery photo is left out of a
ranking (``gallery_cams`` and ``sketch_cams`` are ``None``). A file's person id is the
leading digits of its name (``0002_c1s1_000451_03.jpg``, ``0002_A.jpg``, ``0002A.jpg`` and
``0002.jpg`` are all person 2). A gallery of full Market-1501 photos works too: junk
images (``-1_...``) are left out, distractors (``0000_...``) stay as negatives, as in the
Market-1501 protocol, and the log counts both.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from datasets.base import EvalSet, TrainSample, image_files, require_path
from utils.errors import DatasetError

log = logging.getLogger(__name__)

FOLDER = "Market-Sketch-1K"
ATTRIBUTE_FILE = "market_attribute.mat"
LAYOUT = """  <data.root>/Market-Sketch-1K/
      photo/train/XXXX_c?s?_*.jpg       training photos (XXXX: the person id)
      photo/query/XXXX_c?s?_*.jpg       test gallery photos
      sketch/<A..F>/train/XXXX*.jpg     training sketches per artist style
      sketch/<A..F>/query/XXXX*.jpg     test query sketches
      market_attribute.mat              Market-1501 attributes (struct market_attribute)"""
# Market-1501's own naming: person id -1 is junk (left out of the protocol), 0000 a
# distractor (a false detection, kept in the gallery as a negative).
JUNK, DISTRACTOR = -1, 0
_LEADING_ID = re.compile(r"-?\d+")

UP_COLOURS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
DOWN_COLOURS = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
ATTRIBUTE_FIELDS = (("age", "backpack", "bag", "handbag", "hat", "clothes", "down", "up",
                     "hair", "gender")
                    + tuple("up" + colour for colour in UP_COLOURS)
                    + tuple("down" + colour for colour in DOWN_COLOURS))
CARRIED = ("hat", "backpack", "bag", "handbag")  # named in this order
YES = 2  # binary attributes: 1 no, 2 yes


# ----------------------------------------------------------------------------
# Attributes
# ----------------------------------------------------------------------------

def read_attributes(path: Path) -> dict:
    """``{person id: {attribute: int}}`` over the ``train`` and ``test`` parts of the
    Market-1501 attribute file; fields are found by name, whatever their order."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise DatasetError(f"attribute file not found: {path}") from None
    except Exception as error:  # scipy raises several types for damaged files
        raise DatasetError(f"{path}: not a readable MAT file ({error})") from None
    if "market_attribute" not in mat:
        found = sorted(key for key in mat if not key.startswith("__"))
        raise DatasetError(f"{path}: no variable 'market_attribute' (found: "
                           f"{', '.join(found) or 'none'})")
    struct = mat["market_attribute"]
    attributes = {}
    for part in ("train", "test"):
        if not hasattr(struct, part):
            raise DatasetError(f"{path}: market_attribute has no '{part}' struct")
        attributes.update(_read_part(path, part, getattr(struct, part)))
    return attributes


def _read_part(path: Path, part: str, struct) -> dict:
    names = set(getattr(struct, "_fieldnames", ()))
    missing = [field for field in ATTRIBUTE_FIELDS + ("image_index",) if field not in names]
    if missing:
        raise DatasetError(f"{path}: market_attribute.{part} lacks field(s) "
                           f"{', '.join(missing)}")
    index = np.atleast_1d(struct.image_index)
    try:
        ids = [int(str(entry).strip()) for entry in index]
    except ValueError:
        raise DatasetError(f"{path}: market_attribute.{part}.image_index holds a "
                           "non-numeric person id") from None
    columns = {}
    for field in ATTRIBUTE_FIELDS:
        values = np.atleast_1d(getattr(struct, field))
        if values.size != len(ids):
            raise DatasetError(f"{path}: market_attribute.{part}.{field} has {values.size} "
                               f"values for {len(ids)} ids in image_index")
        columns[field] = [int(value) for value in values.reshape(-1)]
    return {pid: {field: columns[field][position] for field in ATTRIBUTE_FIELDS}
            for position, pid in enumerate(ids)}


def feedback_sentence(attributes: dict) -> str:
    """The text feedback of one person: the sentence the paper's code builds from the
    Market-1501 attributes, e.g. "A teenager man with short hair. He is in black short
    sleeve clothes, and wears blue long pants with a backpack."

    Pattern: "<A|An> <age> <gender> with <hair> hair. <He|She|He or she> is in <upper
    colours> <sleeve> sleeve clothes, and wears <lower colours> <length> <pants|dress>"
    then " with <carried things>." or ".". Colours and carried things are joined with
    " and " in the attribute file's order; a value outside the coding leaves its word out
    (gender: "person" / "He or she"; garment: "clothes").
    """
    get = attributes.get

    def word(field: str, words: tuple) -> str:
        value = get(field, 0)
        return words[value] if isinstance(value, int) and 0 <= value < len(words) else words[0]

    age = word("age", ("", "young", "teenager", "adult", "old"))
    up_colours = " and ".join(c for c in UP_COLOURS if get("up" + c) == YES)
    down_colours = " and ".join(c for c in DOWN_COLOURS if get("down" + c) == YES)
    carried = " and ".join("a " + thing for thing in CARRIED if get(thing) == YES)
    parts = ["An" if get("age") in (3, 4) else "A", age,
             word("gender", ("person", "man", "woman")), "with",
             word("hair", ("", "short", "long")), "hair.",
             word("gender", ("He or she", "He", "She")), "is in", up_colours,
             word("up", ("", "long", "short")), "sleeve clothes, and wears", down_colours,
             word("down", ("", "long", "short")), word("clothes", ("clothes", "dress", "pants"))]
    sentence = " ".join(part for part in parts if part)
    return sentence + (f" with {carried}." if carried else ".")


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------

def _folder(root: Path) -> Path:
    require_path(Path(root), "data.root", LAYOUT)
    return require_path(Path(root) / FOLDER, "Market-Sketch-1K folder", LAYOUT)


def person_id(path: Path) -> int:
    """The person id that starts a Market file name: its leading digits (``0042_c1s1_...``,
    ``0042_A.jpg``, ``0042A.jpg`` -> 42; ``-1_c1s1_...`` -> -1, junk)."""
    match = _LEADING_ID.match(Path(path).name)
    if match is None:
        raise DatasetError(f"{path}: file name does not start with a person id "
                           "(expected XXXX... with the digits of the id)")
    return int(match.group())


def _photos(folder: Path, part: str) -> list:
    return image_files(require_path(folder / "photo" / part, f"Market-Sketch-1K {part} photos",
                                    LAYOUT))


def _sketches(folder: Path, part: str) -> list:
    """Sketches of ``part`` over every style folder, sorted by style then name."""
    sketch_root = require_path(folder / "sketch", "Market-Sketch-1K sketches", LAYOUT)
    styles = sorted(path for path in sketch_root.iterdir() if path.is_dir())
    sketches = [path for style in styles if (style / part).is_dir()
                for path in image_files(style / part)]
    if not sketches:
        raise DatasetError(f"no {part} sketches in {sketch_root}/<style>/{part}/\n"
                           f"expected layout:\n{LAYOUT}")
    return sketches


def train_samples(root: Path) -> list:
    """One sample per training sketch (all styles), paired with every training photo of
    its person; labels 0..N-1 follow the sorted person ids."""
    folder = _folder(root)
    photos_of = {}
    for photo in _photos(folder, "train"):
        pid = person_id(photo)
        if pid not in (JUNK, DISTRACTOR):
            photos_of.setdefault(pid, []).append(photo)
    sketches = _sketches(folder, "train")
    ids = [person_id(sketch) for sketch in sketches]
    for sketch, pid in zip(sketches, ids):
        if pid not in photos_of:
            raise DatasetError(f"training sketch {sketch} has no training photo of person "
                               f"{pid:04d} in {folder / 'photo' / 'train'}")
    labels = {pid: label for label, pid in enumerate(sorted(set(ids)))}
    feedback = training_feedback(folder, set(ids))
    samples = [TrainSample(labels[pid], tuple(photos_of[pid]), sketch, (),
                           feedback=feedback.get(pid, ()))
               for sketch, pid in zip(sketches, ids)]
    log.info("Market-Sketch-1K train: %d sketches of %d people", len(samples), len(labels))
    return samples


def training_feedback(folder: Path, ids: set) -> dict:
    """``{person id: (sentence,)}``: the feedback sentence of each training person, for a
    stage 2 that trains composed queries (``loss.composed``); empty without the attribute
    file, whose absence only the test split requires."""
    path = folder / ATTRIBUTE_FILE
    if not path.is_file():
        return {}
    attributes = read_attributes(path)
    return {pid: (feedback_sentence(attributes[pid]),) for pid in ids if pid in attributes}


def eval_set(root: Path, split: str) -> EvalSet:
    """Test photos as gallery, test sketches (all styles) as queries, and the attribute
    sentence of each query's person as its feedback."""
    if split != "test":
        raise DatasetError(f"Market-Sketch-1K has only a test split (asked for {split!r})")
    folder = _folder(root)
    photos = [(photo, person_id(photo)) for photo in _photos(folder, "query")]
    gallery = [(photo, pid) for photo, pid in photos if pid != JUNK]
    if not gallery:
        raise DatasetError(f"no test photos in {folder / 'photo' / 'query'}\n"
                           f"expected layout:\n{LAYOUT}")
    junk, distractors = len(photos) - len(gallery), sum(pid == DISTRACTOR for _, pid in gallery)
    if junk or distractors:
        log.info("Market-Sketch-1K test gallery: %d junk image(s) (-1) left out, %d "
                 "distractor(s) (0000) kept as negatives", junk, distractors)
    sketches = _sketches(folder, "query")
    mat_path = require_path(folder / ATTRIBUTE_FILE, "Market-1501 attribute file", LAYOUT)
    attributes = read_attributes(mat_path)
    sketch_ids = [person_id(sketch) for sketch in sketches]
    sentence_of = {}
    for pid in sketch_ids:
        if pid not in sentence_of:
            if pid not in attributes:
                raise DatasetError(f"query person {pid:04d} has no attributes in {mat_path}")
            sentence_of[pid] = feedback_sentence(attributes[pid])
    feedback = [sentence_of[pid] for pid in sketch_ids]
    log.info("Market-Sketch-1K test: %d gallery photos, %d query sketches of %d people",
             len(gallery), len(sketches), len(sentence_of))
    return EvalSet(name="mask1k", gallery_paths=[photo for photo, _ in gallery],
                   gallery_ids=[pid for _, pid in gallery], gallery_cams=None,
                   sketch_paths=sketches, sketch_ids=sketch_ids, sketch_cams=None,
                   text_queries=list(feedback), text_ids=list(sketch_ids), feedback=feedback)


# ----------------------------------------------------------------------------
# From the config (the interface every loader offers ``datasets``) and the checker
# ----------------------------------------------------------------------------

def config_train_samples(cfg, members: list, trial=None) -> list:
    return train_samples(Path(cfg.data.root))


def config_eval_sets(cfg, members: list, split: str, trial=None) -> list:
    return [eval_set(Path(cfg.data.root), split)]


def config_has_split(cfg, members: list, split: str) -> bool:
    return split == "test"


def scan(report, cfg, members: list) -> None:
    """``datasets.check``: counts per part and style, and every problem."""
    _scan(report, Path(cfg.data.root))


def _ids_for_check(report, paths: list) -> list:
    """``(path, person id)`` of the files whose name starts with a person id, junk (-1)
    and distractors (0000) left out."""
    named = []
    for path in paths:
        try:
            pid = person_id(path)
        except DatasetError as error:
            report.problem("layout", str(error))
            continue
        if pid not in (JUNK, DISTRACTOR):
            named.append((path, pid))
    return named


def _scan(report, root: Path) -> None:
    folder = _folder(root)  # data.root and the dataset folder: input errors
    sketch_root = folder / "sketch"
    styles = sorted(path.name for path in sketch_root.iterdir() if path.is_dir()) \
        if sketch_root.is_dir() else []
    if not sketch_root.is_dir():
        report.problem("layout", f"no sketch folder {report.name(sketch_root)}")
    attributes = None
    mat_path = folder / ATTRIBUTE_FILE
    if not mat_path.is_file():
        report.problem("layout", f"no attribute file {report.name(mat_path)} (needed for "
                                 "the test feedback)")
    else:
        try:
            attributes = read_attributes(mat_path)
        except DatasetError as error:
            report.problem("layout", str(error))
    table = report.table(FOLDER, ["identities", "photos", "sketches"]
                         + [f"style {style}" for style in styles] + ["attributes"])
    totals = {"ids": set(), "photos": 0, "sketches": 0, "attributes": 0}
    for part in ("train", "query"):
        photo_dir = folder / "photo" / part
        if photo_dir.is_dir():
            photos = _ids_for_check(report, image_files(photo_dir))
        else:
            report.problem("layout", f"no {part} photo folder {report.name(photo_dir)}")
            photos = []
        row, sketches = {}, []
        for style in styles:
            style_dir = sketch_root / style / part
            found = _ids_for_check(report, image_files(style_dir)) if style_dir.is_dir() else []
            row[f"style {style}"] = len(found)
            sketches.extend(found)
        photo_ids = {pid for _, pid in photos}
        sketch_ids = {pid for _, pid in sketches}
        report.photos_and_sketches(photos, sketches, f"Market-Sketch-1K {part}",
                                   training=part == "train", person="{:04d}".format)
        with_attributes = {pid for pid in photo_ids | sketch_ids
                           if attributes is not None and pid in attributes}
        if part == "query" and attributes is not None:
            for pid in sorted(sketch_ids - set(attributes)):
                report.problem("unmatched", f"query person {pid:04d} has sketches but no "
                                            f"attributes in {report.name(mat_path)}")
        if not photos:
            report.problem("empty_splits", f"Market-Sketch-1K {part}: no photos in "
                                           f"{report.name(photo_dir)}")
        if not sketches:
            report.problem("empty_splits", f"Market-Sketch-1K {part}: no sketches in "
                                           f"{report.name(sketch_root)}/<style>/{part}")
        row.update({"identities": len(photo_ids | sketch_ids), "photos": len(photos),
                    "sketches": len(sketches), "attributes": len(with_attributes)})
        table["rows"][part] = row
        totals["ids"] |= {(part, pid) for pid in photo_ids | sketch_ids}
        totals["photos"] += len(photos)
        totals["sketches"] += len(sketches)
        totals["attributes"] += len(with_attributes)
        for style in styles:
            totals[f"style {style}"] = totals.get(f"style {style}", 0) + row[f"style {style}"]
    totals["identities"] = len(totals.pop("ids"))
    table["rows"]["total"] = totals
