"""Your own data: a manifest file with one row per photo (``data.dataset=manifest``,
``data.manifest=FILE``), for person crops, sketches and captions that come in no named
dataset's layout.

The file is ``.jsonl`` (a JSON object per line) or ``.csv`` (a header row naming the
columns, UTF-8, a byte-order mark allowed). Relative paths are read from the file's own
folder; absolute paths are taken as they are. Fields:

============  =========  ============================================================
field         needed     what it holds
============  =========  ============================================================
image         yes        the photo (a person crop), one row per photo
person_id     yes        an integer or a string; a string of digits is that integer
split         yes        ``train``, ``query``, ``gallery`` or ``val``
camera        no         an integer or a string: the camera that took the photo
captions      no         texts describing the photo: a JSON list, in CSV ``a|b``
sketches      no         sketch images of the person: a JSON list, in CSV ``a|b``
feedback      no         the words a person would add to a sketch of this row
============  =========  ============================================================

An empty cell, ``null`` or an absent key is an absent field; any other field name is an
error (with the nearest known name), so that a mistyped column is never silently lost.

**Training** (``train`` rows). A row gives one sample per caption or per sketch,
whichever it has more of, pairing caption ``i`` with sketch ``i`` (both taken round); a
row without either gives none. Stage 1 uses a caption where its losses compare texts
and a sketch where N-ISC is on: if no training row has a caption (or a sketch), those
losses are turned off with a line in the log each, and otherwise rows without what
the losses need are left out and counted (``engine.stages``). Stage 2 trains on the
samples with a sketch. A sample's photo is its row's, or, with
``data.sketch_pairing=other``, the person's other training photos when there are any.
Labels number the training people in sorted order. Captions go through
``datasets.captions.pre_caption`` with ``data.pre_caption``, as PEDES captions do.

**Test** (``query`` and ``gallery`` rows). The gallery is the photos of the ``gallery``
rows. The queries come from the ``query`` rows, whose own photo is not in the gallery
(as Market-1501's query images are not): each of their sketches is one sketch query
(stage 1 sketch->image; stage 2 interactive and sketch-only), each of their captions one
text query (stage 1 text->image). A sketch's feedback (stage 2, "a photo of * , and
{feedback}", and the text-only task) is its row's ``feedback``, else the row's first
caption as written (as PEDES's stage-2 feedback is), else none; ``gallery`` rows' own
captions, sketches and feedback are not used. Every query person needs a gallery photo.

**Cameras** follow the Market-1501 protocol: a gallery photo of the query's person taken
by the query row's camera is not counted for that query (in stage 1 always; in stage 2
with ``test.stage2_drop_same_camera=true``, which the paper's code leaves off). A row
without a camera shares no camera with any other row, so without cameras every gallery
photo counts.

**Validation** (``val`` rows, optional; ``train.select_on=auto`` then picks the best epoch
on them): every val photo is in the val gallery and every val row's sketches and
captions are queries, which never count their own row's photo (nor, with cameras, the
other photos of their person from that camera).

A task without queries is left out of the results (stage 1: text->image without query
captions, sketch->image without query sketches; stage 2: interactive and text-only
without any feedback). Stage 2 needs query sketches. Person ids that are not all
integers are numbered 0..N-1 in sorted order, and the log says so.

The loaders stop at the first problem with one line naming the file, the line and the
field; ``python -m datasets.check data.dataset=manifest data.manifest=FILE`` lists them
all and decodes every image.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import json
import logging
import os
import re
from pathlib import Path

from datasets.base import EvalSet, TrainSample, stop_at_first
from datasets.captions import pre_caption
from utils.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FIELDS = ("image", "person_id", "split", "camera", "captions", "sketches", "feedback")
REQUIRED = ("image", "person_id", "split")
SPLITS = ("train", "query", "gallery", "val")
SUFFIXES = (".jsonl", ".csv")
LIST_SEPARATOR = "|"  # between captions or sketch paths in a CSV cell
_DIGITS = re.compile(r"-?\d+")
# What the loaders log and datasets.check lists apart: worth knowing, not stopping a run.
WARNING_KINDS = {
    "no_feedback": "query sketches without feedback (their interactive query is the "
                   "sketch alone, their text-only query empty)",
    "no_match": "query rows with no gallery photo that counts (all from their own camera)",
    "overlap": "people both in training and in the test or val rows",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One usable row; ``person`` and ``camera`` as written (an int or a string)."""

    line: int
    image: Path
    person: object
    split: str
    camera: object = None
    captions: tuple = ()
    sketches: tuple = ()
    feedback: str = ""


@dataclasses.dataclass
class Manifest:
    """A parsed manifest: its rows, every problem ``[(kind, message)]`` (in the order of
    the file's lines) and warning ``[(kind, message)]``, and the integer each person id
    and camera stands for."""

    path: Path
    rows: list
    problems: list
    warnings: list
    person_numbers: dict
    camera_numbers: dict

    def split(self, name: str) -> list:
        return [row for row in self.rows if row.split == name]

    def where(self, row: Row, field: str) -> str:
        return f"{self.path}, line {row.line}, {field}"

    def person(self, row: Row) -> int:
        return self.person_numbers[row.person]

    def camera(self, row: Row) -> int:
        """The camera's number, or one no other row has when the row gives none."""
        return self.camera_numbers[row.camera] if row.camera is not None else -row.line


# ----------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------

def manifest_path(cfg) -> Path:
    """``data.manifest``, checked: set, a ``.jsonl`` or ``.csv`` file that exists."""
    value = cfg.data.get("manifest")
    if not value:
        raise ConfigError("data.dataset=manifest needs data.manifest=FILE: a .jsonl or .csv "
                          "file with a row per photo (see docs/datasets.md, 'Bring your own data')")
    path = Path(value)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"data.manifest={value}: expected a {' or '.join(SUFFIXES)} file")
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    return path


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_text(path: Path) -> str:
    """The file's text: UTF-8 with or without a byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                           ) from None


def _jsonl_records(path: Path, text: str) -> tuple:
    """``([(line, {field: value})], [(line, kind, message)])`` of a JSON-lines file; blank
    lines skipped."""
    records, problems = [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append((number, "layout",
                             f"{path}, line {number}: malformed JSON ({error.msg} at "
                             f"column {error.colno})"))
            continue
        if not isinstance(raw, dict):
            problems.append((number, "layout",
                             f"{path}, line {number}: expected a JSON object "
                             f"{{\"image\": ..., ...}}, got {type(raw).__name__}"))
            continue
        records.append((number, raw))
    return records, problems


def _csv_records(path: Path, text: str) -> tuple:
    """``([(line, {field: value})], [(line, kind, message)])`` of a CSV file with a header
    row; empty cells are left out, list cells split at ``|``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    example = ",".join(FIELDS)
    if not any(header):
        return [], [(0, "layout", f"{path}: empty file (expected a header row, e.g. {example})")]
    if not {"image", "person_id", "split"} & set(header):
        return [], [(1, "layout", f"{path}, line 1: no header row: the first line must name the "
                               f"columns, e.g. {example} (found {','.join(header)[:80]})")]
    problems = []
    for name in header:
        if name not in FIELDS:
            problems.append((1, "layout",
                             f"{path}, line 1: unknown column {name!r}"
                             f"{_suggest(name)}; columns: {', '.join(FIELDS)}"))
        elif header.count(name) > 1:
            problems.append((1, "layout",
                             f"{path}, line 1: column {name!r} is named twice"))
    for name in REQUIRED:
        if name not in header:
            problems.append((1, "layout",
                             f"{path}, line 1: no column {name!r} (required: "
                             f"{', '.join(REQUIRED)})"))
    if problems:
        return [], list(dict.fromkeys(problems))
    records = []
    for cells in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            problems.append((number, "layout",
                             f"{path}, line {number}: {len(cells)} cells for "
                             f"{len(header)} columns (a cell holding a comma needs "
                             "double quotes)"))
            continue
        raw = {}
        for name, cell in zip(header, cells):
            cell = cell.strip()
            if not cell:
                continue
            raw[name] = ([part.strip() for part in cell.split(LIST_SEPARATOR)]
                         if name in ("captions", "sketches") else cell)
        records.append((number, raw))
    return records, problems


def _identifier(value):
    """An int, or a non-empty string (a string of digits becomes its int); None if
    neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if _DIGITS.fullmatch(text) else text
    return None


def _text_list(value, where: str, what: str, csv_file: bool) -> tuple:
    """``(items, problem or None)`` of a captions or sketches field."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        how = "|-separated text" if csv_file else "a JSON list of strings"
        return (), f"{where}: expected {what} as {how}, got {json.dumps(value)[:60]}"
    items = [item.strip() for item in value]
    if not all(items):
        return (), f"{where}: an empty {what[:-1]} in {json.dumps(value)[:60]}"
    return tuple(items), None


def _row(path: Path, number: int, raw: dict, csv_file: bool, problems: list,
         unknown_seen: set) -> Row | None:
    """The row of one record, or None with its problems appended."""
    folder = path.parent
    where = f"{path}, line {number}"
    for name in raw:
        if name not in FIELDS and name not in unknown_seen:
            unknown_seen.add(name)
            problems.append((number, "layout",
                             f"{where}: unknown field {name!r}{_suggest(name)}; "
                             f"fields: {', '.join(FIELDS)}"))
    # null and blank text are absent, as an empty CSV cell is
    fields = {name: value for name, value in raw.items()
              if value is not None and not (isinstance(value, str) and not value.strip())}
    missing = [name for name in REQUIRED if name not in fields]
    if missing:
        problems.append((number, "layout",
                         f"{where}: missing required field "
                         f"{', '.join(map(repr, missing))}"))
        return None
    before = len(problems)
    image = fields["image"]
    if not isinstance(image, str) or not image.strip():
        problems.append((number, "layout",
                         f"{where}, image: expected a path, got {image!r}"))
    person = _identifier(fields["person_id"])
    if person is None:
        problems.append((number, "layout",
                         f"{where}, person_id: expected an integer or a string, "
                         f"got {json.dumps(fields['person_id'])}"))
    camera = None
    if "camera" in fields:
        camera = _identifier(fields["camera"])
        if camera is None:
            problems.append((number, "layout",
                             f"{where}, camera: expected an integer or a string, "
                             f"got {json.dumps(fields['camera'])}"))
    split = fields["split"]
    split = split.strip().lower() if isinstance(split, str) else split
    if split not in SPLITS:
        problems.append((number, "layout",
                         f"{where}, split: {json.dumps(fields['split'])} is not one "
                         f"of {', '.join(SPLITS)} (test rows are query or gallery)"))
    lists = {}
    for name in ("captions", "sketches"):
        lists[name], problem = ((), None) if name not in fields else _text_list(
            fields[name], f"{where}, {name}", name, csv_file)
        if problem:
            problems.append((number, "layout", problem))
    feedback = fields.get("feedback", "")
    if not isinstance(feedback, str):
        problems.append((number, "layout",
                         f"{where}, feedback: expected a string, got "
                         f"{json.dumps(feedback)[:60]}"))
    if len(problems) > before:
        return None
    return Row(line=number, image=_resolve(folder, image), person=person, split=split,
               camera=camera, captions=lists["captions"],
               sketches=tuple(_resolve(folder, sketch) for sketch in lists["sketches"]),
               feedback=feedback.strip())


def _resolve(folder: Path, value: str) -> Path:
    return Path(os.path.normpath(folder / value.strip()))


@functools.lru_cache(maxsize=4)
def _parse(path: str, stamp: tuple) -> tuple:
    """``(rows, [(line, kind, message)])`` of the file at ``path`` without looking at the images
    (``stamp``: its mtime and size, so that an edited file is read again)."""
    file = Path(path)
    csv_file = file.suffix.lower() == ".csv"
    records, problems = (_csv_records if csv_file else _jsonl_records)(file, _read_text(file))
    rows, unknown_seen = [], set()
    for number, raw in records:
        row = _row(file, number, raw, csv_file, problems, unknown_seen)
        if row is not None:
            rows.append(row)
    if not rows and not problems:
        problems.append((0, "layout",
                         f"{file}: no rows"))
    return tuple(rows), tuple(problems)


def _sorted(values) -> list:
    """Distinct ints and strings, sorted: ints first."""
    return sorted(set(values), key=lambda value: (isinstance(value, str), value))


def _numbers(values, keep_ints: bool = True) -> dict:
    """Each distinct value -> an int: with ``keep_ints`` ints stay themselves when all
    are ints; otherwise all are numbered 0..N-1 in sorted order (ints first)."""
    distinct = _sorted(values)
    if keep_ints and all(isinstance(value, int) for value in distinct):
        return {value: value for value in distinct}
    return {value: number for number, value in enumerate(distinct)}


_announced = set()  # (path, stamp) whose numbering of string ids was logged


def load(path: Path) -> Manifest:
    """The manifest at ``path`` with every problem and warning (nothing raised for them)."""
    path = Path(path)
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    rows, problems = _parse(str(path), stamp)
    rows, problems = list(rows), list(problems)
    problems += _file_problems(path, rows)
    persons = _numbers(row.person for row in rows)
    # numbered from 0, so that they never meet the negative numbers of rows without one
    cameras = _numbers((row.camera for row in rows if row.camera is not None), keep_ints=False)
    if any(isinstance(person, str) for person in persons) and (path, stamp) not in _announced:
        _announced.add((path, stamp))
        log.info("%s: person ids are not all integers; numbered 0..%d in sorted order",
                 path, len(persons) - 1)
    manifest = Manifest(path, rows, problems, [], persons, cameras)
    _cross_checks(manifest)
    # [(line, kind, message)] -> [(kind, message)], the file's first bad line first
    manifest.problems = [(kind, message) for _, kind, message
                         in sorted(manifest.problems, key=lambda problem: problem[0])]
    return manifest


def _file_problems(path: Path, rows: list) -> list:
    """``[(line, kind, message)]``: photos and sketches that are not there, and photos named
    by two rows."""
    problems, first_line = [], {}
    for row in rows:
        where = f"{path}, line {row.line}"
        if row.image in first_line:
            problems.append((row.line, "layout",
                             f"{where}, image: the same photo as line "
                             f"{first_line[row.image]} (one row per photo: give "
                             "its sketches and captions on that row)"))
        else:
            first_line[row.image] = row.line
        if not row.image.is_file():
            problems.append((row.line, "missing_files",
                             f"{where}, image: file not found: {row.image}"))
        for sketch in row.sketches:
            if not sketch.is_file():
                problems.append((row.line, "missing_sketches",
                                 f"{where}, sketches: file not found: "
                                 f"{sketch}"))
    return problems


def _cross_checks(manifest: Manifest) -> None:
    """Problems and warnings between rows: splits that a run needs, query people
    without a gallery photo, queries with nothing to find, missing feedback."""
    problems, warnings = manifest.problems, manifest.warnings
    where = manifest.where
    queries, gallery = manifest.split("query"), manifest.split("gallery")
    for split in ("train", "query", "gallery"):
        if not manifest.split(split) and manifest.rows:
            problems.append((0, "empty_splits",
                             _no_rows(manifest.path, split)))
    cameras_of = {}
    for row in gallery:
        cameras_of.setdefault(row.person, []).append(row.camera)
    for row in queries:
        if not row.sketches and not row.captions:
            problems.append((row.line, "layout",
                             f"{where(row, 'split')}: a query row needs sketches or "
                             "captions, which are the queries"))
        if row.person not in cameras_of:
            problems.append((row.line, "unmatched",
                             f"{where(row, 'person_id')}: query person "
                             f"{row.person!r} has no gallery photo"))
        elif row.camera is not None and all(camera == row.camera
                                            for camera in cameras_of[row.person]):
            warnings.append(("no_match", f"{where(row, 'camera')}: every gallery photo of "
                                         f"person {row.person!r} is from camera {row.camera!r}, "
                                         "so none counts for this query"))
    val = manifest.split("val")
    val_photos = {}
    for row in val:
        val_photos.setdefault(row.person, []).append(row)
    for row in val:
        if (row.sketches or row.captions) and not any(
                other is not row and (row.camera is None or other.camera != row.camera)
                for other in val_photos[row.person]):
            warnings.append(("no_match", f"{where(row, 'person_id')}: val person "
                                         f"{row.person!r} has no other val photo that counts "
                                         "for this row's queries"))
    with_sketches = [row for row in queries + val if row.sketches]
    without = [row for row in with_sketches if not row.feedback and not row.captions]
    if without and len(without) < len(with_sketches):
        for row in without:
            warnings.append(("no_feedback", f"{where(row, 'feedback')}: no feedback and no "
                                            "caption for this row's sketches"))
    trained = {row.person for row in manifest.split("train")}
    tested = _sorted({row.person for row in queries + gallery + val} & trained)
    if tested:
        warnings.append(("overlap", f"{manifest.path}: {len(tested)} person id(s) in both the "
                                    f"train rows and the query, gallery or val rows (e.g. "
                                    f"{tested[0]!r}); re-id tests on people never trained on"))


_SPLIT_ROLES = {"train": "the training photos", "query": "the photos whose sketches and "
                "captions are the test queries", "gallery": "the photos searched at test time",
                "val": "the validation photos and queries"}


def _no_rows(path: Path, split: str) -> str:
    return f"{path}: no {split} rows (split {split!r}: {_SPLIT_ROLES[split]})"


def checked(path: Path, splits: tuple) -> Manifest:
    """``load`` that stops at the first problem, or when one of ``splits`` has no row
    (a test-only manifest can be tested, not trained on), and logs the warnings (a count
    and the first of each kind)."""
    manifest = load(path)
    stop_at_first([(kind, message) for kind, message in manifest.problems
                   if kind != "empty_splits"])
    for split in splits:
        if not manifest.split(split):
            raise DatasetError(_no_rows(path, split))
    by_kind = {}
    for kind, message in manifest.warnings:
        by_kind.setdefault(kind, []).append(message)
    for kind, messages in by_kind.items():
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        log.warning("%s: %s", WARNING_KINDS[kind], messages[0] + more)
    return manifest


# ----------------------------------------------------------------------------
# Training samples and evaluation sets
# ----------------------------------------------------------------------------

def train_samples(path: Path, sketch_pairing: str = "own", clean: bool = True) -> list:
    """The samples of the ``train`` rows (see the module docstring): per row, one per
    caption or per sketch, whichever it has more of; photos by ``sketch_pairing``."""
    if sketch_pairing not in ("own", "other"):
        raise ConfigError(f"data.sketch_pairing={sketch_pairing!r} is not one of own, other")
    manifest = checked(path, ("train",))
    rows = manifest.split("train")
    people = sorted({manifest.person(row) for row in rows})
    labels = {person: label for label, person in enumerate(people)}
    photos_of = {}
    for row in rows:
        photos_of.setdefault(manifest.person(row), []).append(row.image)
    samples, unused = [], 0
    for row in rows:
        person = manifest.person(row)
        others = tuple(photo for photo in photos_of[person] if photo != row.image)
        photos = others if sketch_pairing == "other" and others else (row.image,)
        captions = [pre_caption(text) if clean else text for text in row.captions]
        count = max(len(captions), len(row.sketches))
        unused += count == 0
        for index in range(count):
            samples.append(TrainSample(
                labels[person], photos,
                row.sketches[index % len(row.sketches)] if row.sketches else None,
                (captions[index % len(captions)],) if captions else (),
                feedback=(row.feedback,) if row.feedback else tuple(row.captions[:1])))
    if not samples:
        raise DatasetError(f"{path}: none of the {len(rows)} train rows has sketches or "
                           "captions; stage 1 learns from at least one of them (stage 2 from "
                           "sketches)")
    log.info("%s train: %d samples from %d rows of %d people (%d rows with captions, %d with "
             "sketches%s)", path, len(samples), len(rows), len(people),
             sum(bool(row.captions) for row in rows), sum(bool(row.sketches) for row in rows),
             f"; {unused} with neither, not used" if unused else "")
    return samples


def eval_set(path: Path, split: str, clean: bool = True) -> EvalSet:
    """The test (``query`` against ``gallery`` rows) or the ``val`` set; see the module
    docstring for the queries, the feedback and the cameras."""
    if split not in ("test", "val"):
        raise DatasetError(f"{path}: a manifest has the splits test (query and gallery rows) "
                           f"and val, not {split!r}")
    manifest = checked(path, ("query", "gallery") if split == "test" else ("val",))
    if split == "test":
        queries, gallery = manifest.split("query"), manifest.split("gallery")
        # Without any camera every gallery photo counts: no cams at all, the same ranking.
        cams = any(row.camera is not None for row in queries + gallery)
    else:
        gallery = manifest.split("val")
        queries = [row for row in gallery if row.sketches or row.captions]
        cams = True  # a val query never counts its own photo
    sketches, texts = [], []
    for row in queries:
        feedback = row.feedback or (row.captions[0] if row.captions else "")
        sketches += [(sketch, row, feedback) for sketch in row.sketches]
        texts += [(pre_caption(text) if clean else text, row) for text in row.captions]
    camera = manifest.camera
    return EvalSet(
        name="manifest", gallery_paths=[row.image for row in gallery],
        gallery_ids=[manifest.person(row) for row in gallery],
        gallery_cams=[camera(row) for row in gallery] if cams else None,
        sketch_paths=[sketch for sketch, _, _ in sketches],
        sketch_ids=[manifest.person(row) for _, row, _ in sketches],
        sketch_cams=[camera(row) for _, row, _ in sketches] if cams else None,
        text_queries=[text for text, _ in texts],
        text_ids=[manifest.person(row) for _, row in texts],
        text_photos=[row.image for _, row in texts],
        text_cams=[camera(row) for _, row in texts] if cams else None,
        feedback=[feedback for _, _, feedback in sketches])


def has_split(path: Path, split: str) -> bool:
    """Whether the manifest has ``split`` (test: query and gallery rows; val: val rows)."""
    manifest = load(path)
    if split == "test":
        return bool(manifest.split("query") and manifest.split("gallery"))
    return split == "val" and bool(manifest.split("val"))


# ----------------------------------------------------------------------------
# From the config (the interface every loader offers ``datasets``) and the checker
# ----------------------------------------------------------------------------

def config_train_samples(cfg, members: list, trial=None) -> list:
    return train_samples(manifest_path(cfg), cfg.data.sketch_pairing, cfg.data.pre_caption)


def config_eval_sets(cfg, members: list, split: str, trial=None) -> list:
    return [eval_set(manifest_path(cfg), split, cfg.data.pre_caption)]


def config_has_split(cfg, members: list, split: str) -> bool:
    return has_split(manifest_path(cfg), split)


COLUMNS = ["identities", "photos", "cameras", "sketches", "captions", "feedback"]


def scan(report, cfg, members: list) -> None:
    """``datasets.check``: counts per split, every problem and warning; every photo and
    sketch that exists is queued for decoding."""
    path = manifest_path(cfg)
    report.root = path.parent  # paths in the report are named from the manifest's folder
    manifest = load(path)
    for kind, message in manifest.problems:
        report.problem(kind, message)
    for kind, message in manifest.warnings:
        report.warning(kind, message)
    table = report.table(f"manifest {path.name}", COLUMNS)
    for split in SPLITS + ("total",):
        rows = manifest.rows if split == "total" else manifest.split(split)
        if not rows:
            continue
        table["rows"][split] = {
            "identities": len({row.person for row in rows}),
            "photos": len(rows), "cameras": len({row.camera for row in rows} - {None}),
            "sketches": sum(len(row.sketches) for row in rows),
            "captions": sum(len(row.captions) for row in rows),
            "feedback": sum(bool(row.feedback) for row in rows)}
    for row in manifest.rows:
        if row.image.is_file():
            report.image(row.image, f"line {row.line}, image")
        for sketch in row.sketches:
            if sketch.is_file():
                report.image(sketch, f"line {row.line}, sketches")
