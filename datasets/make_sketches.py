"""Draw a line sketch of every photo in a folder, for datasets that come without sketches.

    python -m datasets.make_sketches data/NEW-PEDES/imgs data/NEW-PEDES/imgs-sketch
    python -m datasets.make_sketches SRC DST --workers 8 [--overwrite] [--debug]

Every image under ``SRC`` (searched recursively; ``.jpg .jpeg .png .bmp`` in any letter
case; hidden files and folders, whose names start with ``.``, are left out) gets a sketch
at the same relative path under ``DST``, with the same file name and format, so that a
PEDES-style ``imgs/<file_path>`` finds its sketch at ``imgs-sketch/<file_path>``.

Method: eXtended Difference of Gaussians (XDoG; Winnemöller, Kyprianidis and Olsen,
"XDoG: An eXtended difference-of-Gaussians compendium including advanced image
stylization", Computers & Graphics 36(6), 2012), applied to each colour channel:

1. each of R, G and B is contrast-stretched (its 1st and 99th percentiles go to 0 and 1,
   a range never stretched more than tenfold), so dim photos give lines as clear as
   crisp ones without turning sensor noise into specks;
2. ``D = G(sigma) - tau * G(k * sigma)`` with ``k = 1.6`` and ``tau = 0.98``: the
   difference of two Gaussian blurs, negative on the dark side of an edge and close to
   zero on flat areas whatever their shade, so clothes are outlined, not filled;
3. the channels are combined by taking the most negative ``D`` at each pixel, so that
   an edge between two colours of the same brightness (yellow trousers on a green
   lawn) is drawn as well as a change in brightness;
4. the soft threshold ``T = 1`` where ``D >= eps``, else ``1 + tanh(phi * (D - eps))``
   (``eps = -0.015``, ``phi = 150``) turns ``D`` into dark strokes on white paper; the
   slightly negative ``eps`` ignores faint texture.

``sigma`` grows with the image height (``height / 125``, at least 1 px), so strokes keep
the same width relative to the person at any resolution (about 2 px in a 128 px high
photo), which stays visible after the resize to the network input (64x32 and up). The
sketch has the photo's size and is saved greyscale (mode ``L``; the loaders read it as
RGB with R = G = B). Nothing is learnt or downloaded, and the same photo always gives
the same sketch.

Runs are resumable: a sketch that exists already is skipped (``--overwrite`` redoes it),
and each sketch is written to a temporary file beside its target and then renamed, so a
run that is killed never leaves half a file behind. An unreadable photo is reported by
name and counted; the run goes on, and the exit status is 1 when any photo failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.base import IMAGE_SUFFIXES
from utils.errors import UserError, exit_on_user_error

TEMP_SUFFIX = ".sketch-partial"  # temporary files of an unfinished write
JPEG_QUALITY = 95

# XDoG parameters (see the module docstring).
K = 1.6
TAU = 0.98
EPSILON = -0.015
PHI = 150.0
PIXELS_PER_SIGMA = 125.0  # sigma = image height / this ...
MIN_SIGMA = 1.0           # ... but never below this
MAX_STRETCH = 10.0        # contrast stretching multiplies a channel's range at most this much


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------

def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with mirrored borders."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = image
    for axis in (0, 1):
        size = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for offset, weight in enumerate(kernel):
            window = [slice(None), slice(None)]
            window[axis] = slice(offset, offset + size)
            acc += weight * padded[tuple(window)]
        out = acc
    return out


def sketch_of(image: Image.Image) -> Image.Image:
    """A line sketch of ``image``: dark strokes on a white background, greyscale (mode
    ``L``), the same size as ``image``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    height = rgb.shape[0]
    if rgb.size == 0:
        return Image.new("L", image.size, 255)
    sigma = max(MIN_SIGMA, height / PIXELS_PER_SIGMA)
    darkest = None
    for channel in np.moveaxis(rgb, 2, 0):
        low, high = np.percentile(channel, (1, 99))
        channel = np.clip((channel - low) / max(float(high - low), 1 / MAX_STRETCH), 0, 1)
        difference = _blur(channel, sigma) - TAU * _blur(channel, K * sigma)
        darkest = difference if darkest is None else np.minimum(darkest, difference)
    paper = np.where(darkest >= EPSILON, 1.0, 1.0 + np.tanh(PHI * (darkest - EPSILON)))
    return Image.fromarray(np.clip(paper * 255.0 + 0.5, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------

def find_images(src: Path) -> list:
    """Relative paths of the images under ``src``, sorted; hidden entries are skipped."""
    found = []
    for folder, subfolders, files in os.walk(src):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            path = Path(folder, name)
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path.relative_to(src))
    return found


def _format_of(path: Path) -> str:
    return Image.registered_extensions()[path.suffix.lower()]


def write_atomically(image: Image.Image, path: Path) -> None:
    """Save ``image`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _format_of(path)
    # Hidden, and unique per process: a run never gives one target to two workers.
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with temporary.open("wb") as stream:
            options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
            image.save(stream, format=fmt, **options)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _remove_leftovers(dst: Path) -> int:
    """Delete temporary files that a killed run left under ``dst``; return how many."""
    removed = 0
    if dst.is_dir():
        for leftover in dst.rglob(f".*{TEMP_SUFFIX}"):
            if leftover.is_file():
                leftover.unlink()
                removed += 1
    return removed


def _render_one(job: tuple) -> tuple:
    """Worker: ``(relative path, error message or None)``."""
    src, dst, relative = job
    try:
        with Image.open(src / relative) as photo:
            photo.load()
            sketch = sketch_of(photo)
        write_atomically(sketch, dst / relative)
    except Exception as error:  # decoders raise many types for damaged files
        return relative, f"{type(error).__name__}: {error}"
    return relative, None


def _check_folders(src: Path, dst: Path) -> tuple:
    if not src.exists():
        raise UserError(f"source folder not found: {src}")
    if not src.is_dir():
        raise UserError(f"source is not a folder: {src}")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or src_real in dst_real.parents:
        raise UserError(f"the sketch folder {dst} is inside the photo folder {src}; the "
                        "sketches would be taken for photos: choose a folder outside it")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"destination exists and is not a folder: {dst}")
    return src, dst


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets.make_sketches",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="folder of photos (searched recursively)")
    parser.add_argument("dst", type=Path, help="folder for the sketches (same relative paths)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes drawing sketches (default: the number of CPUs, "
                             "%(default)s here)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redraw sketches that exist already")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return parser


@exit_on_user_error
def main(argv=None) -> int:
    """Draw the sketches; return 0, or 1 when any photo could not be read."""
    from tqdm import tqdm

    args = _parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    src, dst = _check_folders(args.src, args.dst)
    start = time.perf_counter()
    images = find_images(src)
    if not images:
        raise UserError(f"no images ({' '.join(IMAGE_SUFFIXES)}) found under {src}")
    dst.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dst)
    todo = images if args.overwrite else [rel for rel in images if not (dst / rel).is_file()]
    skipped = len(images) - len(todo)
    failed = []
    jobs = [(src, dst, relative) for relative in todo]
    workers = min(args.workers, max(1, len(jobs)))
    progress = tqdm(total=len(jobs), unit="img", desc="sketches", file=sys.stderr,
                    dynamic_ncols=True, disable=not jobs)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    interrupted = False
    try:
        if pool:
            chunk = max(1, min(32, len(jobs) // (8 * workers)))
            results = pool.map(_render_one, jobs, chunksize=chunk)
        else:
            results = map(_render_one, jobs)
        for relative, error in results:
            if error is not None:
                failed.append(relative)
                progress.write(f"failed: {src / relative}: {error}", file=sys.stderr)
            progress.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        if pool:
            pool.shutdown(wait=not interrupted, cancel_futures=interrupted)
    if interrupted:
        print("interrupted: the sketches written so far are complete and kept; run the same "
              "command again to resume", file=sys.stderr)
        return 130
    written = len(jobs) - len(failed)
    print(f"{dst}: {written} written, {skipped} skipped (already there), {len(failed)} failed, "
          f"of {len(images)} images, in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
