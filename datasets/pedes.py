"""Text-based person search datasets with sketches: CUHK-PEDES, ICFG-PEDES, RSTPReid and
their union Tri-PEDES.

- CUHK-PEDES (Li et al., CVPR 2017): 40,206 photos of 13,003 people, two captions each.
- ICFG-PEDES (Ding et al., 2021): 54,522 photos of 4,102 people, one caption each.
- RSTPReid (Zhu et al., ACM MM 2021): 20,505 photos of 4,101 people, two captions each.
- Tri-PEDES (Chen et al., "Towards Modality-Agnostic Person Re-identification with
  Descriptive Query", CVPR 2023): the three above, each photo paired with a sketch.

On disk, per dataset folder::

    <root>/CUHK-PEDES/
        train_reid.json  val_reid.json  test_reid.json
        imgs/<file_path>          photo
        imgs-sketch/<file_path>   its sketch (same relative path)

each JSON a list of ``{"id": int, "file_path": str, "captions": [str], "split": str}``,
optionally with ``"captions_bt"`` (back-translated captions).
"""
from __future__ import annotations

import json
from pathlib import Path

from datasets.base import EvalSet, TrainSample, require_path
from datasets.captions import pre_caption
from utils.errors import ConfigError, DatasetError

FOLDERS = {"cuhk-pedes": "CUHK-PEDES", "icfg-pedes": "ICFG-PEDES", "rstpreid": "RSTPReid"}
LAYOUT = """  <data.root>/{folder}/
      train_reid.json  val_reid.json  test_reid.json   (lists of {{"id", "file_path", "captions", "split"}})
      imgs/<file_path>            photos
      imgs-sketch/<file_path>     sketches, same relative paths"""


def read_annotations(root: Path, name: str, split: str) -> list:
    """The entries of ``<root>/<Folder>/<split>_reid.json``, checked for the required fields."""
    folder = Path(root) / FOLDERS[name]
    layout = LAYOUT.format(folder=FOLDERS[name])
    require_path(Path(root), "data.root", layout)
    require_path(folder, f"{name} folder", layout)
    path = require_path(folder / f"{split}_reid.json", f"{name} {split} annotations", layout)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON at line {error.lineno}, column "
                           f"{error.colno}: {error.msg}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    for position, entry in enumerate(entries):
        missing = [key for key in ("id", "file_path", "captions")
                   if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise DatasetError(f"{path}: entry {position} lacks {', '.join(missing)}")
    if not entries:
        raise DatasetError(f"{path}: the {split} split is empty")
    return entries


def photo_and_sketch(root: Path, name: str, file_path: str) -> tuple:
    folder = Path(root) / FOLDERS[name]
    return folder / "imgs" / file_path, folder / "imgs-sketch" / file_path


def check_files_exist(root: Path, name: str, split: str, entries: list) -> None:
    """Every annotation must point at a photo and a sketch (checked once, up front)."""
    for entry in entries:
        for path in photo_and_sketch(root, name, entry["file_path"]):
            if not path.is_file():
                raise DatasetError(f"{FOLDERS[name]}/{split}_reid.json: entry id {entry['id']} "
                                   f"points at a missing file: {path}")


def train_samples(root: Path, names: list, sketch_pairing: str = "own", clean: bool = True,
                  empty_missing_backtrans: bool = False) -> list:
    """One sample per (photo, caption); person ids relabelled to 0..N-1 over all ``names``,
    kept apart per dataset (the same number in two datasets is two people).

    ``sketch_pairing``: "own" pairs each sketch with the photo it was traced from (the
    paper); "other" with the person's other photos when there are any, so that matching
    cannot lean on the pixel positions the tracing preserved. ``clean``: captions (and
    back-translations) go through ``pre_caption``. ``empty_missing_backtrans``: an entry
    without ``captions_bt`` gets empty back-translations, so that the back-translation
    draw sometimes trains on an empty caption (the paper's code does this).
    """
    if sketch_pairing not in ("own", "other"):
        raise ConfigError(f"data.sketch_pairing={sketch_pairing!r} is not one of own, other")
    samples, labels = [], {}
    for name in names:
        entries = read_annotations(root, name, "train")
        check_files_exist(root, name, "train", entries)
        photos_of = {}
        for entry in entries:
            photos_of.setdefault(entry["id"], []).append(
                photo_and_sketch(root, name, entry["file_path"])[0])
        for entry in entries:
            label = labels.setdefault((name, entry["id"]), len(labels))
            photo, sketch = photo_and_sketch(root, name, entry["file_path"])
            others = tuple(p for p in photos_of[entry["id"]] if p != photo)
            photos = others if sketch_pairing == "other" and others else (photo,)
            captions_bt = tuple(entry.get("captions_bt") or ())
            if empty_missing_backtrans and "captions_bt" not in entry:
                captions_bt = ("",) * len(entry["captions"])
            for position, caption in enumerate(entry["captions"]):
                # A back-translation at the same position paraphrases this caption.
                bt = (captions_bt[position],) if position < len(captions_bt) else ()
                if clean:
                    caption, bt = pre_caption(caption), tuple(pre_caption(text) for text in bt)
                samples.append(TrainSample(label, photos, sketch, (caption,), bt))
    return samples


SKETCH_QUERIES = ("per_caption", "per_photo")


def eval_set(root: Path, name: str, split: str, clean: bool = True,
             sketch_queries: str = "per_caption") -> EvalSet:
    """Gallery = photos of the split; queries = its captions (cleaned by ``pre_caption``
    with ``clean``) and its sketches: one sketch query per caption of its photo (as the
    paper's code counts them) or one per photo. Each sketch's cam is the index of its own
    photo, so that photo is left out of its ranking. The stage-2 feedback of a sketch is
    the first caption of its photo, as written."""
    if sketch_queries not in SKETCH_QUERIES:
        raise ConfigError(f"test.sketch_queries={sketch_queries!r} is not one of "
                          f"{', '.join(SKETCH_QUERIES)}")
    entries = read_annotations(root, name, split)
    check_files_exist(root, name, split, entries)
    gallery_paths, gallery_ids, texts, text_ids, text_photos = [], [], [], [], []
    sketches, sketch_ids, sketch_cams, feedback = [], [], [], []
    for index, entry in enumerate(entries):
        photo, sketch = photo_and_sketch(root, name, entry["file_path"])
        gallery_paths.append(photo)
        gallery_ids.append(entry["id"])
        captions = list(entry["captions"])
        texts.extend(pre_caption(text) if clean else text for text in captions)
        text_ids.extend([entry["id"]] * len(captions))
        text_photos.extend([photo] * len(captions))
        copies = len(captions) if sketch_queries == "per_caption" else 1
        sketches.extend([sketch] * copies)
        sketch_ids.extend([entry["id"]] * copies)
        sketch_cams.extend([index] * copies)
        feedback.extend([captions[0] if captions else ""] * copies)
    return EvalSet(name=name, gallery_paths=gallery_paths, gallery_ids=gallery_ids,
                   gallery_cams=list(range(len(entries))), sketch_paths=sketches,
                   sketch_ids=sketch_ids, sketch_cams=sketch_cams, text_queries=texts,
                   text_ids=text_ids, text_photos=text_photos, feedback=feedback)


def has_split(root: Path, name: str, split: str) -> bool:
    return (Path(root) / FOLDERS[name] / f"{split}_reid.json").is_file()
