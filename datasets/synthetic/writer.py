"""Writing: render the image jobs (in worker processes), the annotation files and markers.

:func:`generate` is the one entry to it, :func:`main` its command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from .design import best_possible, design_counts, format_design
from .drawing import TRACED, render_drawn_sketch, render_photo, sketch_from_labels
from .layouts import (
    FOLDERS,
    MANIFEST_FILES,
    MANIFEST_FOLDERS,
    DrawnJob,
    Job,
    PhotoJob,
    Plan,
    TracedJob,
    plan_dataset,
    plan_manifest,
)
from .persons import DATASETS, _rng

# the package's logger, so that messages are named as before the module became a package
log = logging.getLogger(__package__)

JPEG_QUALITY = 92
MARKER = ".synthetic.json"
FORMAT_VERSION = 3               # of the files written; a folder in another format is rewritten
LAYOUTS = ("default", "manifest")  # the real datasets' layouts | a manifest (datasets.manifest)

IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def _save(img: Image.Image, path: str) -> None:
    """Write ``img`` in the format its file suffix names (JPEG at ``JPEG_QUALITY``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot tell the image format from {suffix!r}; "
                         f"expected one of {', '.join(IMAGE_FORMATS)}")
    fmt = IMAGE_FORMATS[suffix]
    if fmt == "JPEG":
        img.save(path, format=fmt, quality=JPEG_QUALITY, subsampling=0, optimize=False)
    else:
        img.save(path, format=fmt)


def _run_job(job: Job) -> None:
    """Render and write one image (or a photo and its traced sketch)."""
    rng = _rng(*job.seed_key)
    if isinstance(job, TracedJob):
        photo, lab = render_photo(job.person, rng)
        _save(photo, job.photo)
        _save(sketch_from_labels(lab, TRACED, rng), job.sketch)
    elif isinstance(job, PhotoJob):
        _save(render_photo(job.person, rng)[0], job.photo)
    elif isinstance(job, DrawnJob):
        _save(render_drawn_sketch(job.person, job.style, rng), job.sketch)
    else:
        raise TypeError(f"not an image job: {job!r}")


def _dirs_of(plan: Plan) -> Iterable[Path]:
    seen = set()
    for job in plan.jobs:
        for path in job.paths:
            d = Path(path).parent
            if d not in seen:
                seen.add(d)
                yield d


def _write_meta(plan: Plan, root: Path) -> None:
    from scipy.io import savemat

    for rel, content in plan.texts.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):     # exact bytes (byte-order mark, CRLF)
            with path.open("wb") as fh:
                fh.write(content)
            continue
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            if isinstance(content, str):
                fh.write(content)
            else:
                json.dump(content, fh, indent=1, ensure_ascii=False)
                fh.write("\n")
    for rel, content in plan.mats.items():
        savemat(str(root / rel), content, do_compression=False, oned_as="row")
        _clear_mat_timestamp(root / rel)


def _clear_mat_timestamp(path: Path) -> None:
    """MAT files carry a creation date in their text header: blank it for reproducibility."""
    with path.open("r+b") as fh:
        header = fh.read(116)
        text = header.split(b"\x00")[0].rstrip(b" ")
        fixed = b"MATLAB 5.0 MAT-file Platform: posix, Created by: datasets.synthetic"
        if text.startswith(b"MATLAB 5.0 MAT-file"):
            fh.seek(0)
            fh.write(fixed.ljust(116, b" "))


def _design(plan: Plan) -> dict:
    """People per sentence, signature and both, per split; for Market-Sketch-1K also the
    best possible R1/mAP of its test split (queries: its people; gallery: its photos)."""
    design = {"splits": design_counts(plan.people)}
    if plan.name == "mask1k":
        queries = [p for p in plan.people if p.split == "query"]
        if plan.rows:  # the manifest layout: its gallery rows (its query rows' photos are not)
            person = {p.pid: p for p in plan.people}
            gallery = [person[row["person_id"]] for row in plan.rows if row["split"] == "gallery"]
        else:
            gallery = [job.person for job in plan.jobs
                       if isinstance(job, PhotoJob) and job.person.split == "query"]
        design["best_possible"] = best_possible(queries, gallery)
    return design


def _summary(plan: Plan, path: str, status: str, seed: int, scale: float) -> dict:
    return {"dataset": plan.name, "folder": path, "status": status, "seed": seed,
            "scale": scale, "people": len(plan.people), "photos": plan.photos,
            "sketches": plan.sketches, "design": _design(plan),
            "persons": [p.to_dict() for p in plan.people],
            "sketch_styles": {str(pid): styles for pid, styles in plan.styles.items()}}


def _folder_size(path: str) -> int:
    return sum((Path(d) / f).stat().st_size for d, _, fs in os.walk(path) for f in fs)


def generate(out_dir, seed: int = 0, scale: float = 1.0, datasets: Sequence[str] | None = None,
             overwrite: bool = False, workers: int | None = None,
             layout: str = "default") -> dict[str, dict]:
    """Write the synthetic datasets under ``out_dir``; return a summary per dataset.

    ``layout``: ``default`` writes each dataset in its real layout (``FOLDERS``);
    ``manifest`` writes the same people, photos and sketches with a manifest
    (``datasets.manifest``) in ``MANIFEST_FOLDERS[name]`` (Market-Sketch-1K only, the
    default there), whose summary also has ``manifest``: the paths of its ``.jsonl``
    and ``.csv`` files.

    Each entry has ``status`` (``generated``, ``skipped`` when a finished folder
    was there already, ``foreign`` when a folder not written by this module was
    there and left alone), ``people``, ``photos``, ``sketches``, ``folder``,
    ``design`` (per split, people per attribute sentence, per sketch signature and per
    both, :func:`.design.design_counts`; for ``mask1k`` also ``best_possible``, the R1/mAP
    ceilings of text-only, sketch-only and combined queries on its test split),
    ``persons`` (the attributes of every person, :meth:`Person.to_dict`) and
    ``sketch_styles`` (``{"<pid>": [style, ...]}``, the styles of ``STYLES`` each
    person's drawn sketches are in; empty for the PEDES sets, whose sketches are
    traced).  A finished folder written in another ``FORMAT_VERSION`` is
    regenerated even without ``overwrite``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    manifest = layout == "manifest"
    folders = MANIFEST_FOLDERS if manifest else FOLDERS
    names = list((MANIFEST_FOLDERS if manifest else DATASETS) if datasets is None else datasets)
    for nm in names:
        if nm not in folders:
            what = "the manifest layout is written for" if manifest else "choose from"
            raise ValueError(f"unknown dataset {nm!r}; {what} {', '.join(folders)}")
    if scale <= 0:
        raise ValueError("scale must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    todo: list[tuple[Plan, Path, Path]] = []
    for nm in names:
        final = out / folders[nm]
        marker = final / MARKER
        if final.exists():
            if not marker.is_file():
                log.warning("%s exists and was not written by this generator: left alone", final)
                summary[nm] = {"dataset": nm, "folder": str(final), "status": "foreign",
                               "people": 0, "photos": 0, "sketches": 0, "design": {},
                               "persons": [], "sketch_styles": {}}
                continue
            try:
                info = json.loads(marker.read_text())
            except ValueError:          # a damaged marker: treat as an unknown format
                info = {}
            if info.get("format") != FORMAT_VERSION:
                # our own folder in an older layout would only confuse the loaders
                log.warning("%s was written in format %s, not %s: regenerating it",
                            final, info.get("format"), FORMAT_VERSION)
            elif not overwrite:
                if (info.get("seed"), info.get("scale")) != (seed, scale):
                    log.warning("%s was generated with seed=%s scale=%s; keeping it "
                                "(use --overwrite to regenerate)",
                                final, info.get("seed"), info.get("scale"))
                else:
                    log.info("%s is complete: skipped", final)
                info.update(status="skipped", folder=str(final))
                summary[nm] = info
                continue
        tmp = out / f".{folders[nm]}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        plan = (plan_manifest if manifest else plan_dataset)(nm, seed, scale, str(tmp))
        for d in _dirs_of(plan):
            d.mkdir(parents=True, exist_ok=True)
        todo.append((plan, tmp, final))

    jobs = [job for plan, _, _ in todo for job in plan.jobs]
    if jobs:
        n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        start = time.perf_counter()
        if n_workers > 1 and len(jobs) > 50:
            with ProcessPoolExecutor(n_workers) as pool:
                list(pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (8 * n_workers))))
        else:
            for job in jobs:
                _run_job(job)
        log.info("rendered %d jobs in %.1f s with %d worker(s)", len(jobs),
                 time.perf_counter() - start, n_workers)

    for plan, tmp, final in todo:
        _write_meta(plan, tmp)
        info = _summary(plan, str(final), "generated", seed, scale)
        info["format"] = FORMAT_VERSION
        with (tmp / MARKER).open("w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in info.items() if k not in ("status", "folder")}, fh,
                      indent=1)
            fh.write("\n")
        if final.exists():            # only ever our own folder (checked above)
            shutil.rmtree(final)
        tmp.replace(final)
        log.info("%s: %d people, %d photos, %d sketches", final, len(plan.people),
                 plan.photos, plan.sketches)
        summary[plan.name] = info
    for nm in names if manifest else ():
        if summary[nm]["status"] != "foreign":
            summary[nm]["manifest"] = [str(out / folders[nm] / file) for file in MANIFEST_FILES]
    return {nm: summary[nm] for nm in names}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Write small procedural stand-ins for CUHK-PEDES, ICFG-PEDES, RSTPReid, "
                    "Market-Sketch-1K and PKU-Sketch in their real layouts.")
    parser.add_argument("--out", default="data/synthetic",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies the number of people (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                        help="only these datasets (default: all; with --layout manifest: "
                             f"{', '.join(MANIFEST_FOLDERS)})")
    parser.add_argument("--layout", choices=LAYOUTS, default="default",
                        help="default: each dataset in its real layout; manifest: a row per "
                             "photo in manifest.jsonl and manifest.csv, for data.dataset="
                             "manifest (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate folders this generator wrote before")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: up to 4)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        summary = generate(args.out, seed=args.seed, scale=args.scale, datasets=args.datasets,
                           overwrite=args.overwrite, workers=args.workers, layout=args.layout)
    except ValueError as error:  # a dataset the layout is not written for
        parser.error(str(error))
    parts = [f"{Path(s['folder']).name} {s['status']} ({s['people']} people, {s['photos']} "
             f"photos, {s['sketches']} sketches)" for s in summary.values()]
    parts += [f"manifest {s['manifest'][0]}" for s in summary.values() if "manifest" in s]
    size = sum(_folder_size(s["folder"]) for s in summary.values() if s["status"] != "foreign")
    print(f"{args.out}: " + "; ".join(parts)
          + f"; {size / 2 ** 20:.1f} MiB in {time.perf_counter() - start:.1f} s")
    table = format_design(summary)
    if len(table.splitlines()) > 2:
        print(table)
    return 0
