"""Check a dataset before training: what is there, and every problem that would stop a run.

    python -m datasets.check --config config/TriPEDES_pretrain.yaml data.root=/data
    python -m datasets.check --config config/Market_finetune.yaml
    python -m datasets.check --config config/PKU_finetune.yaml data.trials=[1,2] --json check.json

The dataset is the config's ``data.dataset`` under ``data.root`` (``tri-pedes`` checks its
three PEDES sets), read with the same path conventions as the loaders. Printed per split:

- PEDES sets: identities, photos, sketches and captions of train, val and test, from
  TBPS-CLIP's ``*_reid.json`` files or the dataset's own annotation file;
- Market-Sketch-1K: identities, photos and sketches (in all and per artist style) of
  train and query, and how many of those people have attributes;
- PKU-Sketch: identities, photos, sketches and captions of train and test of every trial
  in ``data.trials`` (from ``idx/``, or drawn from ``seed`` as the loader does).

Everything is read with the loaders' own parsers (``pedes.parse_annotations`` and
``locate``, ``market_sketch.person_id``, ``pku_sketch.parse_captions``, ``parse_index``,
``scan_photos``...), which return every problem instead of stopping at the first.

Then every problem, in groups (20 of each are listed, then a count): annotation files or
folders that are missing or cannot be parsed, annotation entries pointing at nothing,
missing sketches, people whose sketch has no photo (or no attributes), unreadable
images (every image is decoded, in parallel) and empty splits.

Exit status: 0 when training would work, 1 when it would fail (any problem above;
unreadable images do not count when ``data.skip_bad_images=true``, which skips them), 2
for bad input (an unknown ``data.dataset``, a missing ``data.root`` or dataset folder).

Options besides the config's: ``--json FILE`` also writes the counts and the full list of
problems as JSON; ``--workers N`` sets the processes that decode images (default: the
number of CPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from datasets import check_name, market_sketch, pedes, pedes_members, pku_sketch
from datasets.base import PROBLEM_KINDS, image_files, require_path
from utils.config import config_from_command_line
from utils.errors import ConfigError, DatasetError, exit_on_user_error

LIST_LIMIT = 20  # problems printed per group; --json has them all

CATEGORIES = PROBLEM_KINDS


class Report:
    """Counts per table and split, problems per category, and the images to decode."""

    def __init__(self, dataset: str, root: Path):
        self.dataset, self.root = dataset, root
        self.tables = {}  # title -> {"columns": [...], "rows": {split: {column: int}}}
        self.problems = {key: [] for key in CATEGORIES}
        self._seen = set()
        self.images = {}  # path -> where it is used (first use)
        self.images_checked = 0

    def table(self, title: str, columns: list) -> dict:
        return self.tables.setdefault(title, {"columns": list(columns), "rows": {}})

    def problem(self, category: str, message: str, key=None) -> None:
        """Record a problem once per ``key`` (default: the message); PKU trials share files."""
        key = (category, message if key is None else key)
        if key not in self._seen:
            self._seen.add(key)
            self.problems[category].append(message)

    def image(self, path: Path, where: str) -> None:
        self.images.setdefault(path, where)

    def name(self, path: Path) -> str:
        """``path`` relative to data.root where it lies inside it."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def count(self) -> int:
        return sum(len(items) for items in self.problems.values())


# ----------------------------------------------------------------------------
# PEDES: CUHK-PEDES, ICFG-PEDES, RSTPReid
# ----------------------------------------------------------------------------

def scan_pedes(report: Report, root: Path, name: str) -> None:
    folder = pedes.FOLDERS[name]
    require_path(root, "data.root", pedes.layout(name))
    require_path(root / folder, f"{name} folder", pedes.layout(name))
    table = report.table(folder, ["identities", "photos", "sketches", "captions"])
    totals = {"ids": set(), "photos": 0, "sketches": 0, "captions": 0}
    for split in ("train", "val", "test"):
        if split == "val" and not pedes.has_split(root, name, split):
            continue  # optional: training then selects on test
        try:
            entries, problems = pedes.parse_annotations(root, name, split)
        except DatasetError as error:  # no annotation file for this split
            report.problem("layout", str(error).splitlines()[0])
            continue
        found, located = pedes.locate(root, name, split, entries)
        for kind, message in problems + located:
            report.problem(kind, message)
        ids = {entry["id"] for entry, _, _ in found}
        sketches = [sketch for _, _, sketch in found if sketch is not None]
        for entry, photo, sketch in found:
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


# ----------------------------------------------------------------------------
# Market-Sketch-1K
# ----------------------------------------------------------------------------

def _market_ids(report: Report, paths: list) -> list:
    """``(path, person id)`` of the files whose name starts with a person id, junk (-1)
    and distractors (0000) left out."""
    named = []
    for path in paths:
        try:
            pid = market_sketch.person_id(path)
        except DatasetError as error:
            report.problem("layout", str(error))
            continue
        if pid not in (market_sketch.JUNK, market_sketch.DISTRACTOR):
            named.append((path, pid))
    return named


def scan_market(report: Report, root: Path) -> None:
    folder = market_sketch._folder(root)  # data.root and the dataset folder: input errors
    sketch_root = folder / "sketch"
    styles = sorted(path.name for path in sketch_root.iterdir() if path.is_dir()) \
        if sketch_root.is_dir() else []
    if not sketch_root.is_dir():
        report.problem("layout", f"no sketch folder {report.name(sketch_root)}")
    attributes = None
    mat_path = folder / market_sketch.ATTRIBUTE_FILE
    if not mat_path.is_file():
        report.problem("layout", f"no attribute file {report.name(mat_path)} (needed for "
                                 "the test feedback)")
    else:
        try:
            attributes = market_sketch.read_attributes(mat_path)
        except DatasetError as error:
            report.problem("layout", str(error))
    table = report.table(market_sketch.FOLDER, ["identities", "photos", "sketches"]
                         + [f"style {style}" for style in styles] + ["attributes"])
    totals = {"ids": set(), "photos": 0, "sketches": 0, "attributes": 0}
    for part in ("train", "query"):
        photo_dir = folder / "photo" / part
        if photo_dir.is_dir():
            photos = _market_ids(report, image_files(photo_dir))
        else:
            report.problem("layout", f"no {part} photo folder {report.name(photo_dir)}")
            photos = []
        row, sketches = {}, []
        for style in styles:
            style_dir = sketch_root / style / part
            found = _market_ids(report, image_files(style_dir)) if style_dir.is_dir() else []
            row[f"style {style}"] = len(found)
            sketches.extend(found)
        photo_ids = {pid for _, pid in photos}
        sketch_ids = {pid for _, pid in sketches}
        for path, pid in photos:
            report.image(path, f"Market-Sketch-1K {part} photo")
        for path, pid in sketches:
            report.image(path, f"Market-Sketch-1K {part} sketch")
            if part == "train" and pid not in photo_ids:
                report.problem("unmatched", f"training sketch {report.name(path)}: no "
                                            f"training photo of person {pid:04d}")
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


# ----------------------------------------------------------------------------
# PKU-Sketch
# ----------------------------------------------------------------------------

def _pku_index(report: Report, folder: Path, path: Path) -> list:
    """``(path, id)`` of the lines of an idx file whose image exists; the others are
    problems."""
    if not path.is_file():
        report.problem("layout", f"no split file {report.name(path)}")
        return []
    entries, problems = pku_sketch.parse_index(folder, path)
    for kind, message in problems:
        report.problem(kind, message, key=message.split(": ", 1)[-1])
    return [(image, pid) for image, pid, _ in entries]


def _pku_drawn(report: Report, folder: Path, trial: int, seed: int) -> dict:
    """``{part: (photos, sketches)}`` of a trial drawn as the loader draws it."""
    photos_of, problems = pku_sketch.scan_photos(folder)
    sketch_of, sketch_problems = pku_sketch.scan_sketches(folder)
    styles, style_problems = pku_sketch.read_styles(folder)
    for kind, message in problems + sketch_problems + style_problems:
        report.problem(kind, message)
    try:
        parts_ids = pku_sketch.trial_split(list(photos_of), styles, trial, seed)
    except DatasetError as error:
        report.problem("empty_splits", f"PKU-Sketch trial {trial}: {error}")
        return {"train": ([], []), "test": ([], [])}
    parts = {}
    for part, ids in zip(("train", "test"), parts_ids):
        photos, sketches = [], []
        for pid in ids:
            photos.extend((path, pid) for path, _ in photos_of[pid])
            if pid in sketch_of:
                sketches.append((sketch_of[pid], pid))
            else:
                report.problem("missing_sketches", f"{report.name(folder / 'sketch')}/{pid}.jpg "
                                                   f"(person {pid} has photos)")
        parts[part] = (photos, sketches)
    return parts


def scan_pku(report: Report, root: Path, trials: list, seed: int) -> None:
    folder = pku_sketch._folder(root)  # data.root and the dataset folder: input errors
    caption_path = folder / pku_sketch.CAPTION_FILE
    captions = {}
    if caption_path.is_file():
        captions, problems = pku_sketch.parse_captions(caption_path)
        for kind, message in problems:
            report.problem(kind, message)
    else:
        report.problem("layout", f"no caption file {report.name(caption_path)}")
    index_dir = folder / "idx"
    report.pku_splits = "idx/" if index_dir.is_dir() else f"drawn from seed={seed}"
    table = report.table(f"{folder.name} (splits: {report.pku_splits})",
                         ["identities", "photos", "sketches", "captions"])
    every = {"ids": set(), "photos": set(), "sketches": set()}
    for trial in trials:
        if index_dir.is_dir():
            parts = {part: (_pku_index(report, folder, index_dir / f"{part}_visible_{trial}.txt"),
                            _pku_index(report, folder, index_dir / f"{part}_sketch_{trial}.txt"))
                     for part in ("train", "test")}
        else:
            parts = _pku_drawn(report, folder, trial, seed)
        for part, (photos, sketches) in parts.items():
            photo_ids = {pid for _, pid in photos}
            sketch_ids = {pid for _, pid in sketches}
            ids = photo_ids | sketch_ids
            for path, _ in photos:
                report.image(path, f"PKU-Sketch trial {trial} {part} photo")
            for path, pid in sketches:
                report.image(path, f"PKU-Sketch trial {trial} {part} sketch")
                if part == "train" and pid not in photo_ids:
                    report.problem("unmatched", f"PKU-Sketch trial {trial}: training sketch "
                                                f"{report.name(path)} has no training photo "
                                                f"of person {pid}", path)
            if not photos or not sketches:
                missing = "photos" if not photos else "sketches"
                report.problem("empty_splits", f"PKU-Sketch trial {trial} {part}: no {missing}")
            table["rows"][f"trial {trial} {part}"] = {
                "identities": len(ids), "photos": len(photos), "sketches": len(sketches),
                "captions": sum(len(captions.get(pid, ())) for pid in ids)}
            every["ids"] |= ids
            every["photos"] |= {path for path, _ in photos}
            every["sketches"] |= {path for path, _ in sketches}
    table["rows"]["all trials"] = {
        "identities": len(every["ids"]), "photos": len(every["photos"]),
        "sketches": len(every["sketches"]),
        "captions": sum(len(captions.get(pid, ())) for pid in every["ids"])}


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------

def image_problem(path: Path):
    """None when ``path`` decodes, else why not. JPEGs are decoded at 1/8 scale: every
    byte is still read, at a fraction of the cost."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # decoders raise many types for damaged files
        return f"{type(error).__name__}: {error}"
    return None


def check_images(report: Report, workers: int) -> None:
    from tqdm import tqdm

    paths = sorted(report.images)
    report.images_checked = len(paths)
    if not paths:
        return
    workers = max(1, min(workers, len(paths) // 64 or 1))
    with tqdm(total=len(paths), unit="img", desc="decoding images", file=sys.stderr,
              dynamic_ncols=True) as progress:
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            results = pool.map(image_problem, paths, chunksize=64) if pool \
                else map(image_problem, paths)
            for path, problem in zip(paths, results):
                if problem is not None:
                    report.problem("unreadable", f"{report.name(path)} ({report.images[path]}): "
                                                 f"{problem}")
                progress.update()
        finally:
            if pool:
                pool.shutdown()


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def format_table(title: str, table: dict) -> str:
    columns = table["columns"]
    labels = list(table["rows"])
    first = max([len("split")] + [len(label) for label in labels])
    widths = [max(len(column), 6) for column in columns]
    lines = [title, "  " + "split".ljust(first) + "".join(
        "  " + column.rjust(width) for column, width in zip(columns, widths))]
    for label in labels:
        row = table["rows"][label]
        lines.append("  " + label.ljust(first) + "".join(
            "  " + str(row.get(column, "")).rjust(width)
            for column, width in zip(columns, widths)))
    return "\n".join(lines)


def format_report(report: Report, fatal: bool, skip_bad_images: bool) -> str:
    parts = [f"dataset {report.dataset} under {report.root}", ""]
    for title, table in report.tables.items():
        parts += [format_table(title, table), ""]
    parts.append(f"images decoded: {report.images_checked}, unreadable: "
                 f"{len(report.problems['unreadable'])}")
    parts.append("")
    if not report.count():
        parts.append("no problems: training would work")
        return "\n".join(parts)
    parts.append(f"problems: {report.count()}")
    for category, heading in CATEGORIES.items():
        items = report.problems[category]
        if not items:
            continue
        note = ""
        if category == "unreadable" and skip_bad_images:
            note = " (skipped at run time: data.skip_bad_images=true)"
        parts.append(f"  {heading} ({len(items)}){note}:")
        parts += [f"    {item}" for item in items[:LIST_LIMIT]]
        if len(items) > LIST_LIMIT:
            parts.append(f"    ... and {len(items) - LIST_LIMIT} more")
    parts.append("")
    parts.append("training would fail: fix the problems above" if fatal else
                 "training would work (the unreadable images are skipped)")
    return "\n".join(parts)


def run_checks(cfg, workers: int) -> Report:
    name = check_name(cfg.data.dataset)
    root = Path(cfg.data.root)
    report = Report(name, root)
    if name == "mask1k":
        scan_market(report, root)
    elif name == "pku-sketch":
        trials = cfg.data.trials
        if not isinstance(trials, list) or not trials or \
                not all(isinstance(t, int) and not isinstance(t, bool) for t in trials):
            raise ConfigError(f"data.trials must be a non-empty list of integers, got {trials!r}")
        scan_pku(report, root, trials, int(cfg.seed or 0))
    else:
        for member in pedes_members(name):
            scan_pedes(report, root, member)
    check_images(report, workers)
    return report


def _split_own_options(argv):
    """(our options, the rest for the config parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser.parse_known_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    """Print the report; return 0 when training would work, else 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    own, rest = _split_own_options(argv)
    cfg, _ = config_from_command_line(rest, __doc__)
    if own.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {own.workers}")
    start = time.perf_counter()
    report = run_checks(cfg, own.workers)
    skip_bad = bool(cfg.data.skip_bad_images)
    fatal_count = sum(len(items) for category, items in report.problems.items()
                      if not (category == "unreadable" and skip_bad))
    status = 1 if fatal_count else 0
    print(format_report(report, bool(fatal_count), skip_bad))
    print(f"checked in {time.perf_counter() - start:.1f} s; exit status {status}")
    if own.json is not None:
        data = {"dataset": report.dataset, "root": str(report.root), "ok": status == 0,
                "exit_status": status, "images_checked": report.images_checked,
                "tables": report.tables,
                "problems": report.problems}
        own.json.parent.mkdir(parents=True, exist_ok=True)
        own.json.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
