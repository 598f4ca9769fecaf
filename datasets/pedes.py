"""Text-based person search datasets with sketches: CUHK-PEDES, ICFG-PEDES, RSTPReid and
their union Tri-PEDES.

- CUHK-PEDES (Li et al., CVPR 2017): 40,206 photos of 13,003 people, two captions each.
- ICFG-PEDES (Ding et al., 2021): 54,522 photos of 4,102 people, one caption each.
- RSTPReid (Zhu et al., ACM MM 2021): 20,505 photos of 4,101 people, two captions each.
- Tri-PEDES (Chen et al., "Towards Modality-Agnostic Person Re-identification with
  Descriptive Query", CVPR 2023): the three above, each photo paired with a sketch.

On disk, per dataset folder, either annotation form::

    <root>/CUHK-PEDES/
        train_reid.json  val_reid.json  test_reid.json    TBPS-CLIP's files, one per split
        reid_raw.json                                     or the dataset's own file
        imgs/<file_path>                                  photos
        imgs-sketch/<file_path>  (or imgs-sketch2/)       sketches

TBPS-CLIP's files are lists of ``{"id", "file_path", "captions", "split"}``, optionally
with ``"captions_bt"`` (back-translated captions). The datasets' own files
(``CUHK-PEDES/reid_raw.json``, ``ICFG-PEDES/ICFG-PEDES.json``,
``RSTPReid/data_captions.json``; ``ICFG_PEDES.json`` is read too) are one list for all
splits, each entry with its ``"split"``; RSTPReid names the photo ``"img_path"``.
TBPS-CLIP's files win when both are there. A sketch lies at its photo's relative path
under ``imgs-sketch/`` or ``imgs-sketch2/`` (the Tri-PEDES sketch release uses the latter
for CUHK-PEDES), or at the same path with another image suffix (the sketches of
CUHK-PEDES's ``.bmp`` photos are ``.jpg``).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

from datasets.base import IMAGE_SUFFIXES, EvalSet, TrainSample, require_path, stop_at_first
from datasets.captions import pre_caption
from utils.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FOLDERS = {"cuhk-pedes": "CUHK-PEDES", "icfg-pedes": "ICFG-PEDES", "rstpreid": "RSTPReid"}
# The datasets' own annotation files (ICFG-PEDES's name is spelt both ways in the wild).
OWN_FILES = {"cuhk-pedes": ("reid_raw.json",), "icfg-pedes": ("ICFG-PEDES.json", "ICFG_PEDES.json"),
             "rstpreid": ("data_captions.json",)}
SKETCH_FOLDERS = ("imgs-sketch", "imgs-sketch2")
SPLITS = ("train", "val", "test")
LAYOUT = """  <data.root>/{folder}/
      train_reid.json  val_reid.json  test_reid.json   TBPS-CLIP's annotations, or
      {own}{pad}the dataset's own (one list, a "split" per entry)
      imgs/<file_path>                 photos
      imgs-sketch/ or imgs-sketch2/    sketches at the photos' relative paths (any image suffix)"""
MISSING_SKETCH_HINT = ("set data.skip_missing_sketches=true to leave such photos out of "
                       "training and their sketches out of the queries")


def layout(name: str) -> str:
    own = OWN_FILES[name][0]
    return LAYOUT.format(folder=FOLDERS[name], own=own, pad=" " * max(1, 33 - len(own)))


def own_file(folder: Path, name: str) -> Path | None:
    """The dataset's own annotation file in ``folder``, if there is one."""
    return next((folder / file for file in OWN_FILES[name] if (folder / file).is_file()), None)


# ----------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------

def annotation_file(root: Path, name: str, split: str) -> Path:
    """The file holding ``split``: TBPS-CLIP's ``<split>_reid.json`` when the dataset folder
    has such files, else the dataset's own annotation file."""
    folder = Path(root) / FOLDERS[name]
    require_path(Path(root), "data.root", layout(name))
    require_path(folder, f"{name} folder", layout(name))
    if any((folder / f"{part}_reid.json").is_file() for part in SPLITS):
        return require_path(folder / f"{split}_reid.json", f"{name} {split} annotations",
                            layout(name))
    return own_file(folder, name) or require_path(folder / OWN_FILES[name][0],
                                                  f"{name} annotations", layout(name))


@functools.lru_cache(maxsize=4)
def _json(path: str, stamp: tuple):
    """The parsed JSON of ``path`` (``stamp``: its mtime and size, so edits are seen)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON at line {error.lineno}, column "
                           f"{error.colno}: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason})") from None


def _read_json(path: Path):
    stat = path.stat()
    return _json(str(path), (stat.st_mtime_ns, stat.st_size))


def _person_id(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_annotations(root: Path, name: str, split: str) -> tuple:
    """``(entries, problems)`` of ``split``: entries ``{"id": int, "file_path": str,
    "captions": [str]}`` (+ ``"captions_bt"`` where given), problems ``[(kind, message)]``
    for everything that cannot be used (one per entry)."""
    path = annotation_file(root, name, split)
    own = path.name in OWN_FILES[name]
    try:
        data = _read_json(path)
    except DatasetError as error:
        return [], [("layout", str(error))]
    if not isinstance(data, list):
        return [], [("layout", f"{path}: expected a JSON list of entries, got "
                               f"{type(data).__name__}")]
    entries, problems = [], []
    for position, raw in enumerate(data):
        if not isinstance(raw, dict):
            problems.append(("layout", f"{path}: entry {position} is not an object"))
            continue
        if own and raw.get("split") != split:
            if raw.get("split") not in SPLITS:
                problems.append(("layout", f"{path}: entry {position} has split "
                                           f"{raw.get('split')!r}, not one of "
                                           f"{', '.join(SPLITS)}"))
            continue
        file_path = raw.get("file_path", raw.get("img_path"))
        missing = [key for key, value in (("id", raw.get("id")), ("file_path", file_path),
                                          ("captions", raw.get("captions")))
                   if value is None]
        if missing:
            problems.append(("layout", f"{path}: entry {position} lacks {', '.join(missing)}"))
            continue
        pid, captions = _person_id(raw["id"]), raw["captions"]
        if pid is None or not isinstance(file_path, str) or not file_path or \
                not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            problems.append(("layout", f"{path}: entry {position} needs an integer id, a "
                                       "file path and a list of caption strings"))
            continue
        entry = {"id": pid, "file_path": file_path, "captions": captions}
        if "captions_bt" in raw:
            entry["captions_bt"] = [c for c in raw["captions_bt"] or () if isinstance(c, str)]
        entries.append(entry)
    if not entries and not problems:
        problems.append(("empty_splits", f"{path}: the {split} split is empty"))
    return entries, problems


def read_annotations(root: Path, name: str, split: str) -> list:
    """The usable entries of ``split`` (see ``parse_annotations``); the first problem stops."""
    entries, problems = parse_annotations(root, name, split)
    stop_at_first(problems)
    return entries


def has_split(root: Path, name: str, split: str) -> bool:
    """Whether the dataset has ``split`` (ICFG-PEDES, for one, has no val)."""
    folder = Path(root) / FOLDERS[name]
    if any((folder / f"{part}_reid.json").is_file() for part in SPLITS):
        return (folder / f"{split}_reid.json").is_file()
    own = own_file(folder, name)
    if own is None:
        return False
    try:
        data = _read_json(own)
    except DatasetError:
        return False
    return isinstance(data, list) and any(isinstance(e, dict) and e.get("split") == split
                                          for e in data)


# ----------------------------------------------------------------------------
# Photos and sketches
# ----------------------------------------------------------------------------

class SketchFinder:
    """Where the sketch of a photo is: ``imgs-sketch/`` then ``imgs-sketch2/``, at the
    photo's relative path or the same path with another image suffix. Each folder is
    listed once."""

    def __init__(self, folder: Path):
        self.by_stem = {}  # relative path without suffix -> sketch path
        self.folders = [folder / name for name in SKETCH_FOLDERS if (folder / name).is_dir()]
        for sketch_root in reversed(self.folders):  # the first folder wins
            for directory, _, files in os.walk(sketch_root):
                relative = Path(directory).relative_to(sketch_root)
                for file in files:
                    path = Path(directory) / file
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        self.by_stem[(relative / path.stem).as_posix()] = path

    def find(self, file_path: str) -> Path | None:
        for sketch_root in self.folders:
            exact = sketch_root / file_path
            if exact.is_file():
                return exact
        return self.by_stem.get(Path(file_path).with_suffix("").as_posix())


def locate(root: Path, name: str, split: str, entries: list) -> tuple:
    """``(found, problems)``: ``found`` is ``(entry, photo, sketch or None)`` for every entry
    whose photo exists; problems name missing photos and missing sketches."""
    folder = Path(root) / FOLDERS[name]
    finder = SketchFinder(folder)
    found, problems = [], []
    if not finder.folders:
        problems.append(("layout", f"{folder}: no sketch folder ({' or '.join(SKETCH_FOLDERS)})"
                                   f"\nexpected layout:\n{layout(name)}"))
    for entry in entries:
        photo = folder / "imgs" / entry["file_path"]
        if not photo.is_file():
            problems.append(("missing_files", f"{FOLDERS[name]} {split}: entry id {entry['id']} "
                                              f"points at a missing photo: {photo}"))
            continue
        sketch = finder.find(entry["file_path"])
        if sketch is None and finder.folders:
            problems.append(("missing_sketches", f"{FOLDERS[name]} {split}: no sketch of photo "
                                                 f"{entry['file_path']} (id {entry['id']}) in "
                                                 f"{' or '.join(SKETCH_FOLDERS)}"))
        found.append((entry, photo, sketch))
    return found, problems


def _located(root: Path, name: str, split: str, skip_missing_sketches: bool) -> list:
    """``locate`` that stops at a problem, except missing sketches with the skip key (those
    come back with sketch None and are counted in the log)."""
    found, problems = locate(root, name, split, read_annotations(root, name, split))
    missing = [message for kind, message in problems if kind == "missing_sketches"]
    others = [(kind, message) for kind, message in problems if kind != "missing_sketches"]
    stop_at_first(others)
    if missing and not skip_missing_sketches:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0]}{more}; python -m datasets.check lists them all, or "
                           f"{MISSING_SKETCH_HINT}")
    if missing:
        log.warning("%s %s: %d of %d photos have no sketch; left out "
                    "(data.skip_missing_sketches=true)", FOLDERS[name], split, len(missing),
                    len(found))
    return found


# ----------------------------------------------------------------------------
# Training samples and evaluation sets
# ----------------------------------------------------------------------------

def train_samples(root: Path, names: list, sketch_pairing: str = "own", clean: bool = True,
                  empty_missing_backtrans: bool = False,
                  skip_missing_sketches: bool = False,
                  drop_captions_without_backtrans: bool = False) -> list:
    """One sample per (photo with a sketch, caption); person ids relabelled to 0..N-1 over
    all ``names``, kept apart per dataset (the same number in two datasets is two people).

    ``sketch_pairing``: "own" pairs each sketch with the photo it was traced from (the
    paper); "other" with the person's other photos when there are any, so that matching
    cannot lean on the pixel positions the tracing preserved. ``clean``: captions (and
    back-translations) go through ``pre_caption``. ``empty_missing_backtrans``: an entry
    without ``captions_bt`` gets empty back-translations, so that the back-translation
    draw sometimes trains on an empty caption (the paper's code does this).
    ``drop_captions_without_backtrans``: an entry with ``captions_bt`` keeps only its first
    ``len(captions_bt)`` captions, those with a back-translation at their position (the
    paper's code pairs the two lists one to one and stops at the shorter); an entry
    without ``captions_bt`` keeps its captions (the paper's code fills it first, as
    ``empty_missing_backtrans`` does).
    """
    if sketch_pairing not in ("own", "other"):
        raise ConfigError(f"data.sketch_pairing={sketch_pairing!r} is not one of own, other")
    samples, labels = [], {}
    captions_seen = captions_dropped = photos_emptied = 0
    for name in names:
        found = [item for item in _located(root, name, "train", skip_missing_sketches)
                 if item[2] is not None]
        photos_of = {}
        for entry, photo, _ in found:
            photos_of.setdefault(entry["id"], []).append(photo)
        for entry, photo, sketch in found:
            label = labels.setdefault((name, entry["id"]), len(labels))
            others = tuple(p for p in photos_of[entry["id"]] if p != photo)
            photos = others if sketch_pairing == "other" and others else (photo,)
            captions = entry["captions"]
            captions_bt = tuple(entry.get("captions_bt") or ())
            if empty_missing_backtrans and "captions_bt" not in entry:
                captions_bt = ("",) * len(captions)
            captions_seen += len(captions)
            if drop_captions_without_backtrans and "captions_bt" in entry:
                kept = captions[:len(captions_bt)]
                captions_dropped += len(captions) - len(kept)
                photos_emptied += bool(captions) and not kept
                captions = kept
            for position, caption in enumerate(captions):
                # A back-translation at the same position paraphrases this caption.
                bt = (captions_bt[position],) if position < len(captions_bt) else ()
                if clean:
                    caption, bt = pre_caption(caption), tuple(pre_caption(text) for text in bt)
                samples.append(TrainSample(label, photos, sketch, (caption,), bt))
    if drop_captions_without_backtrans:
        log.info("%s train: dropped %d of %d captions, those without a back-translation at "
                 "their position in captions_bt (data.drop_captions_without_backtrans=true); "
                 "%d photo(s) kept no caption", "+".join(FOLDERS[name] for name in names),
                 captions_dropped, captions_seen, photos_emptied)
    return samples


SKETCH_QUERIES = ("per_caption", "per_photo")


def eval_set(root: Path, name: str, split: str, clean: bool = True,
             sketch_queries: str = "per_caption", skip_missing_sketches: bool = False) -> EvalSet:
    """Gallery = photos of the split; queries = its captions (cleaned by ``pre_caption``
    with ``clean``) and its sketches: one sketch query per caption of its photo (as the
    paper's code counts them) or one per photo. Each sketch's cam is the index of its own
    photo, so that photo is left out of its ranking. The stage-2 feedback of a sketch is
    the first caption of its photo, as written."""
    if sketch_queries not in SKETCH_QUERIES:
        raise ConfigError(f"test.sketch_queries={sketch_queries!r} is not one of "
                          f"{', '.join(SKETCH_QUERIES)}")
    found = _located(root, name, split, skip_missing_sketches)
    gallery_paths, gallery_ids, texts, text_ids, text_photos = [], [], [], [], []
    sketches, sketch_ids, sketch_cams, feedback = [], [], [], []
    for index, (entry, photo, sketch) in enumerate(found):
        gallery_paths.append(photo)
        gallery_ids.append(entry["id"])
        captions = list(entry["captions"])
        texts.extend(pre_caption(text) if clean else text for text in captions)
        text_ids.extend([entry["id"]] * len(captions))
        text_photos.extend([photo] * len(captions))
        if sketch is None:
            continue
        copies = len(captions) if sketch_queries == "per_caption" else 1
        sketches.extend([sketch] * copies)
        sketch_ids.extend([entry["id"]] * copies)
        sketch_cams.extend([index] * copies)
        feedback.extend([captions[0] if captions else ""] * copies)
    return EvalSet(name=name, gallery_paths=gallery_paths, gallery_ids=gallery_ids,
                   gallery_cams=list(range(len(found))), sketch_paths=sketches,
                   sketch_ids=sketch_ids, sketch_cams=sketch_cams, text_queries=texts,
                   text_ids=text_ids, text_photos=text_photos, feedback=feedback)


# ----------------------------------------------------------------------------
# From the config (the interface every loader offers ``datasets``) and the checker
# ----------------------------------------------------------------------------

def config_train_samples(cfg, members: list, trial=None) -> list:
    return train_samples(Path(cfg.data.root), members, cfg.data.sketch_pairing,
                         cfg.data.pre_caption, cfg.data.empty_missing_backtrans,
                         cfg.data.skip_missing_sketches,
                         drop_captions_without_backtrans=cfg.data.drop_captions_without_backtrans)


def config_eval_sets(cfg, members: list, split: str, trial=None) -> list:
    return [eval_set(Path(cfg.data.root), member, split, cfg.data.pre_caption,
                     cfg.test.sketch_queries, cfg.data.skip_missing_sketches)
            for member in members]


def config_has_split(cfg, members: list, split: str) -> bool:
    return all(has_split(Path(cfg.data.root), member, split) for member in members)


def scan(report, cfg, members: list) -> None:
    """``datasets.check``: counts per split and every problem, through the parsers above."""
    for member in members:
        _scan_one(report, Path(cfg.data.root), member)


def _scan_one(report, root: Path, name: str) -> None:
    folder = FOLDERS[name]
    require_path(root, "data.root", layout(name))
    require_path(root / folder, f"{name} folder", layout(name))
    table = report.table(folder, ["identities", "photos", "sketches", "captions"])
    totals = {"ids": set(), "photos": 0, "sketches": 0, "captions": 0}
    for split in ("train", "val", "test"):
        if split == "val" and not has_split(root, name, split):
            continue  # optional: training then selects on test
        try:
            entries, problems = parse_annotations(root, name, split)
        except DatasetError as error:  # no annotation file for this split
            report.problem("layout", str(error).splitlines()[0])
            continue
        found, located = locate(root, name, split, entries)
        for kind, message in problems + located:
            report.problem(kind, message)
        ids = {entry["id"] for entry, _, _ in found}
        sketches = [sketch for _, _, sketch in found if sketch is not None]
        for _entry, photo, sketch in found:
            report.image(photo, f"{folder} {split} photo")
            if sketch is not None:
                report.image(sketch, f"{folder} {split} sketch")
        captions = sum(len(entry["captions"]) for entry in entries)
        table["rows"][split] = {"identities": len(ids), "photos": len(found),
                                "sketches": len(sketches), "captions": captions}
        totals["ids"] |= {(split, pid) for pid in ids}
        totals["photos"] += len(found)
        totals["sketches"] += len(sketches)
        totals["captions"] += captions
    table["rows"]["total"] = {"identities": len(totals["ids"]), "photos": totals["photos"],
                              "sketches": totals["sketches"], "captions": totals["captions"]}
