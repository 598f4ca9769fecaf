"""Check a dataset before training: what is there, and every problem that would stop a run.

    python -m datasets.check --config config/TriPEDES_pretrain.yaml data.root=/data
    python -m datasets.check --config config/Market_finetune.yaml
    python -m datasets.check --config config/PKU_finetune.yaml data.trials=[1,2] --json check.json
    python -m datasets.check data.dataset=manifest data.manifest=mine/people.csv

The dataset is the config's ``data.dataset`` under ``data.root`` (``tri-pedes`` checks its
three PEDES sets; ``manifest`` the file ``data.manifest``, paths named from its folder),
read with the same path conventions as the loaders. Printed per split:

- PEDES sets: identities, photos, sketches and captions of train, val and test, from
  TBPS-CLIP's ``*_reid.json`` files or the dataset's own annotation file;
- Market-Sketch-1K: identities, photos and sketches (in all and per artist style) of
  train and query, and how many of those people have attributes;
- PKU-Sketch: identities, photos, sketches and captions of train and test of every trial
  in ``data.trials`` (from ``idx/``, or drawn from ``seed`` as the loader does);
- a manifest: identities, photos, cameras, sketches, captions and rows with feedback of
  its train, query, gallery and val rows.

Everything is read with the loaders' own parsers (``pedes.parse_annotations`` and
``locate``, ``market_sketch.person_id``, ``pku_sketch.parse_captions``, ``parse_index``,
``scan_photos``, ``manifest.load``...), which return every problem instead of stopping at
the first. A manifest's problems name the file, the line and the field.

Then every warning and every problem, in groups (20 of each are listed, then a count).
Warnings do not stop training: truncated images, which load as far as their data go with
``data.load_truncated_images=true`` (the default; with false they are unreadable), and
PKU-Sketch visible lists (``idx/*_visible_*.txt``) that disagree with ``photo/`` (the
loaders take every photo of a split's people from ``photo/``), and in a manifest query
sketches without feedback, queries whose every gallery photo shares their camera and
people both trained on and tested. Problems: annotation files
or folders that are missing or cannot be parsed, annotation entries pointing at nothing,
missing sketches, people whose sketch has no photo (or no attributes), unreadable images
(every image is decoded, in parallel) and empty splits.

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

import datasets as registry
from datasets import manifest
from datasets.base import PROBLEM_KINDS, check_image
from utils.config import config_from_command_line
from utils.errors import ConfigError, exit_on_user_error

LIST_LIMIT = 20  # problems printed per group; --json has them all

CATEGORIES = PROBLEM_KINDS
# What is worth knowing but does not stop training, by kind.
WARNING_KINDS = {
    "truncated": "truncated images, loaded as far as their data go "
                 "(data.load_truncated_images=true)",
    "split_lists": "visible lists that disagree with photo/ (the photos of a split's people "
                   "come from photo/)",
    **manifest.WARNING_KINDS,
}


class Report:
    """Counts per table and split, problems per category, and the images to decode."""

    def __init__(self, dataset: str, root: Path):
        self.dataset, self.root = dataset, root
        self.tables = {}  # title -> {"columns": [...], "rows": {split: {column: int}}}
        self.problems = {key: [] for key in CATEGORIES}
        self.warnings = {key: [] for key in WARNING_KINDS}
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

    def warning(self, kind: str, message: str) -> None:
        """Record something that does not stop training, once."""
        key = ("warning", kind, message)
        if key not in self._seen:
            self._seen.add(key)
            self.warnings[kind].append(message)

    def image(self, path: Path, where: str) -> None:
        self.images.setdefault(path, where)

    def photos_and_sketches(self, photos, sketches, where: str, training: bool,
                            person=str) -> None:
        """Queue every ``(path, person id)`` photo and sketch of ``where`` for the readability
        check; in a training part, a sketch whose person has no photo there is a problem
        (``person`` writes the id as the dataset names it)."""
        photo_ids = {pid for _, pid in photos}
        for path, _ in photos:
            self.image(path, f"{where} photo")
        for path, pid in sketches:
            self.image(path, f"{where} sketch")
            if training and pid not in photo_ids:
                self.problem("unmatched", f"{where}: training sketch {self.name(path)} has no "
                                          f"training photo of person {person(pid)}", path)

    def name(self, path: Path) -> str:
        """``path`` relative to data.root where it lies inside it."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def count(self) -> int:
        return sum(len(items) for items in self.problems.values())


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------

def check_images(report: Report, workers: int, load_truncated_images: bool = True) -> None:
    """Decode every queued image: unreadable ones are problems; truncated ones are warnings
    with ``load_truncated_images``, else problems."""
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
            results = pool.map(check_image, paths, chunksize=64) if pool \
                else map(check_image, paths)
            for path, found in zip(paths, results):
                if found.problem is not None:
                    message = f"{report.name(path)} ({report.images[path]}): {found.problem}"
                    if found.truncated and load_truncated_images:
                        report.warning("truncated", message)
                    else:
                        report.problem("unreadable", message)
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


def format_groups(groups: dict, headings: dict, notes: dict | None = None) -> list:
    """Lines of each non-empty group: its heading and count, then its first items."""
    lines = []
    for kind, heading in headings.items():
        items = groups[kind]
        if not items:
            continue
        lines.append(f"  {heading} ({len(items)}){(notes or {}).get(kind, '')}:")
        lines += [f"    {item}" for item in items[:LIST_LIMIT]]
        if len(items) > LIST_LIMIT:
            lines.append(f"    ... and {len(items) - LIST_LIMIT} more")
    return lines


def format_report(report: Report, fatal: bool, skip_bad_images: bool) -> str:
    parts = [f"dataset {report.dataset} under {report.root}", ""]
    for title, table in report.tables.items():
        parts += [format_table(title, table), ""]
    truncated = len(report.warnings["truncated"])
    parts.append(f"images decoded: {report.images_checked}, unreadable: "
                 f"{len(report.problems['unreadable'])}" +
                 (f", truncated (loaded as far as their data go): {truncated}"
                  if truncated else ""))
    parts.append("")
    warnings = sum(len(items) for items in report.warnings.values())
    if warnings:
        parts.append(f"warnings: {warnings}")
        parts += format_groups(report.warnings, WARNING_KINDS)
        parts.append("")
    if not report.count():
        parts.append("no problems: training would work")
        return "\n".join(parts)
    parts.append(f"problems: {report.count()}")
    notes = ({"unreadable": " (skipped at run time: data.skip_bad_images=true)"}
             if skip_bad_images else {})
    parts += format_groups(report.problems, CATEGORIES, notes)
    parts.append("")
    parts.append("training would fail: fix the problems above" if fatal else
                 "training would work (the unreadable images are skipped)")
    return "\n".join(parts)


def run_checks(cfg, workers: int) -> Report:
    name = registry.check_name(cfg.data.dataset)
    report = Report(name, Path(cfg.data.root))
    registry.loader(name).scan(report, cfg, registry.members(name))
    check_images(report, workers, bool(cfg.data.load_truncated_images))
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
                "tables": report.tables, "warnings": report.warnings,
                "problems": report.problems}
        own.json.parent.mkdir(parents=True, exist_ok=True)
        own.json.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
