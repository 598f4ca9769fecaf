"""A gallery of photos embedded once and searched by query features: the index folder of a
gallery folder (built, resumed, updated, read memory-mapped), or a list of photos held in
memory; exact search, FAISS search and k-reciprocal re-ranking. ``engine.api.Retriever``
adds the model that embeds the photos and the queries.

The gallery index is a folder (format 2)::

    <index>/index.json          the header: format, model key, generation N, count, dim, the
                                features file, and [path, size, mtime_ns] of every photo in
                                row order (sorted paths)
    <index>/features-gN.npy     float16 [count, dim], opened memory-mapped (never read whole)
    <index>/ivf-gN-nlistL.faiss, hnsw-gN-mM-efcC.faiss   FAISS indexes of --ann (optional)
    <index>/neighbours-gN-k1_K.pt                         gallery neighbour lists of --rerank
                                (``utils.rerank.gallery_neighbours`` with k1 = K, torch.save)
    <index>/pending/*.npz       photos embedded by a build that has not finished yet (resume)

Every file is written to a temporary name and renamed into place; renaming the header is
what commits a new generation, so a crash leaves the previous index whole (a new generation
takes a number no file in the folder has). Files of older generations are removed after
the commit (a process that still has them open keeps reading them). Format 1, one
``torch.save`` file, is converted once on first use. A folder that holds anything else is
never written into.

Exact search is the default: the memory-mapped features are scored in chunks of
``EXACT_CHUNK_ROWS`` rows, each turned into float32 and multiplied with the float32
queries, and the top k are merged across chunks, so memory stays flat whatever the gallery
size. ``--ann ivf|hnsw`` searches a FAISS index instead (see
``AnnSettings`` for the defaults).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from datasets.base import IMAGE_SUFFIXES
from utils.checkpoint import UNREADABLE_FILE_ERRORS, save_atomic
from utils.distributed import barrier, is_main, rank, world_size
from utils.errors import UserError
from utils.rerank import gallery_neighbours, rerank_queries

try:  # POSIX: one process at a time updates an index; elsewhere the last rename wins
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

INDEX_FORMAT = 2            # the folder above; format 1 was one torch.save file
HEADER = "index.json"
PENDING = "pending"
# Rows scored at a time by exact search (dim 512: an 8 MB float32 buffer); one query over
# 100k photos took 12 ms in chunks of 4096 rows, 23 ms in chunks of 16384 (2 CPU cores).
EXACT_CHUNK_ROWS = 4096
SAVE_EVERY = 4096           # photos embedded between two saves of a build (what a kill loses)
ANN_KINDS = ("ivf", "hnsw")
FAISS_MISSING = "--ann needs faiss-cpu (pip install faiss-cpu)"
GENERATION_FILE = re.compile(r"^(features|ivf|hnsw|neighbours)-g(\d+)[-.]")


def list_images(folder: Path) -> list:
    """Image files under ``folder`` (recursively), as sorted relative POSIX paths."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def file_signature(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def default_index_path(model_file: Path, gallery: Path) -> Path:
    """``<folder of model_file>/gallery_index/<gallery name>-<hash of its absolute path>``
    (a folder): beside a checkpoint, or inside an ONNX export (``model_file``: its
    config.json)."""
    digest = hashlib.sha1(str(gallery.resolve()).encode()).hexdigest()[:10]
    return model_file.resolve().parent / "gallery_index" / f"{gallery.name}-{digest}"


# ------------------------------------------------------------------------ index files
@dataclasses.dataclass
class GalleryIndex:
    """One committed generation of an index folder."""

    folder: Path
    generation: int
    files: list            # [[path, size, mtime_ns], ...] in row order
    features: torch.Tensor  # [G, E] float16, memory-mapped (copy-on-write: never written back)

    @property
    def paths(self) -> list:
        return [entry[0] for entry in self.files]

    def file_name(self, stem: str, *details: str) -> Path:
        """``<folder>/<stem>-g<generation>[-<detail>...]``: a file of this generation."""
        return self.folder / "-".join([stem, f"g{self.generation}", *details])


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def _temporary(folder: Path, name: str):
    """A temporary path in ``folder`` (where ``name`` will live); removed unless the body
    renamed it into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _commit(temporary: Path, path: Path) -> None:
    """fsync ``temporary``, rename it to ``path`` and make the rename durable."""
    with temporary.open("rb+") as stream:
        os.fsync(stream.fileno())
    temporary.replace(path)
    _fsync_folder(path.parent)


def write_json_atomic(payload, path: Path) -> None:
    with _temporary(path.parent, path.name) as temporary:
        temporary.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
        _commit(temporary, path)


def read_index(folder: Path, model_key: str) -> GalleryIndex | None:
    """The committed index in ``folder``, or None (with one log line) when there is none for
    this model or it cannot be read."""
    header_path = folder / HEADER
    if not header_path.is_file():
        return None
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
        if header.get("format") != INDEX_FORMAT or header.get("model") != model_key:
            log.info("gallery index %s was made with another model; rebuilding it", folder)
            return None
        features = np.load(folder / header["features"], mmap_mode="c")
        files = header["files"]
        if features.dtype != np.float16 or features.shape != (len(files), header["dim"]):
            raise ValueError(f"features {features.dtype}{features.shape} do not match "
                             f"{len(files)} photos of dim {header['dim']}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("gallery index %s is unreadable (%s); rebuilding it", folder, error)
        return None
    return GalleryIndex(folder, int(header["generation"]), files, torch.from_numpy(features))


def write_index(folder: Path, model_key: str, files: list, dim: int, generation: int,
                fill: Callable[[np.ndarray], None]) -> None:
    """Commit generation ``generation`` of ``folder``: ``fill(out)`` writes the rows of
    ``out`` (float16 [len(files), dim], memory-mapped), in ``files`` order."""
    folder.mkdir(parents=True, exist_ok=True)
    features_name = f"features-g{generation}.npy"
    with _temporary(folder, features_name) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float16,
                                        shape=(len(files), dim))
        fill(out)
        out.flush()
        del out
        _commit(temporary, folder / features_name)
    write_json_atomic({"format": INDEX_FORMAT, "model": model_key, "generation": generation,
                       "count": len(files), "dim": dim, "features": features_name,
                       "files": files}, folder / HEADER)
    remove_stale_files(folder, generation)


def remove_stale_files(folder: Path, generation: int) -> None:
    """Files of other generations and temporary files that a killed writer left (callers
    hold the index lock, so no writer is using them)."""
    for path in folder.iterdir():
        match = GENERATION_FILE.match(path.name)
        stale = (match and int(match.group(2)) != generation) or \
            (path.name.startswith(".") and path.name.endswith(".tmp"))
        if stale and path.is_file():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def index_lock(folder: Path):
    """Hold ``.<name>.lock`` beside the index folder: one process updates it at a time (a
    second waits, then finds the work done)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".{folder.name}.lock").open("a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another process that is updating %s", folder)
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _fill_from(source: torch.Tensor, rows: int = 65536):
    def fill(out: np.ndarray) -> None:
        for start in range(0, len(out), rows):
            out[start:start + rows] = source[start:start + rows].to(torch.float16).numpy()
    return fill


def _read_legacy(path: Path) -> dict | None:
    """The contents of a format-1 index file, or None when ``path`` is not one."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS:
        return None
    is_index = isinstance(stored, dict) and stored.get("format") == 1 \
        and {"model", "paths", "files", "features"} <= stored.keys()
    return stored if is_index else None


def convert_legacy_index(folder: Path, model_key: str, legacy: Path | None = None) -> None:
    """A format-1 index (one torch file: at ``folder`` itself, at ``legacy``, e.g. the old
    default name ``<folder>.pt``, or the backup a killed conversion left) becomes format 2
    in ``folder`` when it was made with this model, or is removed when it was not; one log
    line either way."""
    backup = folder.parent / f".{folder.name}.format1"
    for path in folder.parent.iterdir():  # what a conversion killed before its renames left
        if path.name.startswith(f".{folder.name}.") and path.name.endswith(".converting"):
            shutil.rmtree(path, ignore_errors=True)
    if (folder / HEADER).is_file():
        backup.unlink(missing_ok=True)  # a conversion killed after its last rename
        return
    for candidate in (folder, backup, legacy):
        if candidate is None or not candidate.is_file():
            continue
        stored = _read_legacy(candidate)
        if stored is not None:
            break
        if candidate == folder:  # never overwrite a file that is not ours
            raise UserError(f"{folder} is a file but not a gallery index; give --index a "
                            "folder (it is created) or an index file of format 1")
    else:
        return
    if stored["model"] != model_key:
        log.warning("gallery index %s is in an old format and was made with another model; "
                    "rebuilding it as %s", candidate, folder)
        candidate.unlink()
        return
    features = stored["features"]
    files = [[path, *stored["files"][path]] for path in stored["paths"]]
    if candidate == folder:  # the folder takes the file's place: built aside, then swapped in
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".converting",
                                      dir=folder.parent))
        write_index(aside, model_key, files, features.shape[1], 1, _fill_from(features))
        candidate.replace(backup)
        aside.replace(folder)
        backup.unlink()
    else:
        write_index(folder, model_key, files, features.shape[1], _next_generation(folder),
                    _fill_from(features))
        candidate.unlink()
    _fsync_folder(folder.parent)
    log.warning("converted gallery index %s (format 1, %d photos) to format %d in %s",
                candidate, len(files), INDEX_FORMAT, folder)


def _next_generation(folder: Path) -> int:
    """One more than any generation with a file in ``folder`` (whatever model made it), so
    that a new generation never writes over a file that the committed header names."""
    numbers = [int(match.group(2)) for path in folder.iterdir()
               if (match := GENERATION_FILE.match(path.name))] if folder.is_dir() else []
    return max(numbers, default=0) + 1


def check_index_folder(folder: Path) -> None:
    """A ``UserError`` unless ``folder`` is absent, empty or holds an index's files only: an
    index is never written into a folder of other files (e.g. the gallery itself)."""
    if not folder.is_dir() or (folder / HEADER).is_file():
        return
    foreign = sorted(path.name for path in folder.iterdir()
                     if not (GENERATION_FILE.match(path.name) or path.name == PENDING
                             or (path.name.startswith(".") and path.name.endswith(".tmp"))))
    if foreign:
        raise UserError(f"{folder} holds other files (e.g. {foreign[0]}), not a gallery "
                        "index; give --index a new or empty folder")


# ------------------------------------------------------------------ building an index
def _save_chunk(pending: Path, model_key: str, files: list, features: torch.Tensor) -> None:
    """One finished piece of a build: ``files`` and their float16 features, atomically."""
    name = f"r{rank()}-{uuid.uuid4().hex[:12]}.npz"
    with _temporary(pending, name) as temporary:
        with temporary.open("wb") as stream:
            np.savez(stream, model=np.array(model_key), files=np.array(json.dumps(files)),
                     features=features.to(torch.float16).numpy())
        _commit(temporary, pending / name)


def _read_chunk(path: Path, model_key: str, with_features: bool = False):
    """(files, features or None) of a saved piece, or None for one of another model or an
    unreadable one."""
    try:
        with np.load(path) as chunk:
            if str(chunk["model"]) != model_key:
                return None
            files = json.loads(str(chunk["files"]))
            return files, (chunk["features"] if with_features else None)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def finished_chunks(pending: Path, model_key: str) -> dict:
    """{path: [size, mtime_ns]} of every photo embedded by earlier, unfinished builds;
    pieces of another model or unreadable ones are removed."""
    done = {}
    for path in sorted(pending.glob("*.npz")) if pending.is_dir() else []:
        chunk = _read_chunk(path, model_key)
        if chunk is None:
            path.unlink(missing_ok=True)
            continue
        done.update((entry[0], entry[1:]) for entry in chunk[0])
    return done


def _broadcast(value):
    """``value`` of the main process, on every process."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def build_index(folder: Path, gallery: Path, model_key: str,
                embed: Callable[[list], torch.Tensor], save_every: int = SAVE_EVERY,
                legacy: Path | None = None) -> GalleryIndex | None:
    """Bring the index in ``folder`` up to date with the photos in ``gallery`` and return it
    (None on processes other than the main one); a format-1 index at ``folder`` or
    ``legacy`` is converted first (``convert_legacy_index``).

    Stored features of unchanged photos are kept; new and changed photos are embedded
    (``embed(paths)`` -> [n, E]) ``save_every`` at a time, each piece saved under
    ``pending/`` as it is done, so a killed build resumes where it stopped. Under torchrun
    every process embeds its share of the photos; the main process merges the pieces and
    commits the new generation."""
    with index_lock(folder) if is_main() else contextlib.nullcontext():
        plan = None
        if is_main():
            try:
                plan = _plan(folder, gallery, model_key, legacy)
            except UserError as error:
                plan = {"error": str(error)}
        shared = _broadcast({key: plan[key] for key in ("todo", "error") if key in plan}
                            if is_main() else None)
        if "error" in shared:
            raise UserError(shared["error"])
        todo = shared["todo"]
        started = time.perf_counter()
        if todo:
            share = math.ceil(len(todo) / world_size())
            mine = todo[rank() * share:(rank() + 1) * share]
            pending = folder / PENDING
            for start in range(0, len(mine), save_every):
                piece = mine[start:start + save_every]
                features = embed([gallery / entry[0] for entry in piece])
                _save_chunk(pending, model_key, piece, features.cpu())
        barrier()
        if not is_main():
            return None
        if todo:
            seconds = time.perf_counter() - started
            log.info("embedded %d photos in %.1f s: %.1f images/s over %d process(es)",
                     len(todo), seconds, len(todo) / max(seconds, 1e-9), world_size())
        stored = read_index(folder, model_key)
        if plan["changed"]:
            _merge(folder, model_key, plan["files"], stored)
            stored = read_index(folder, model_key)
        return stored


def _plan(folder: Path, gallery: Path, model_key: str, legacy: Path | None) -> dict:
    """What a build has to do: the photos now (``files``), those still to embed (``todo``)
    and whether the index changes."""
    paths = list_images(gallery)
    if not paths:
        raise UserError(f"the gallery {gallery} holds no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    files = [[path, *file_signature(gallery / path)] for path in paths]
    check_index_folder(folder)
    convert_legacy_index(folder, model_key, legacy)
    stored = read_index(folder, model_key)
    known = {entry[0]: entry[1:] for entry in stored.files} if stored else {}
    pending = folder / PENDING
    done = finished_chunks(pending, model_key)
    todo = [entry for entry in files if known.get(entry[0]) != entry[1:]
            and done.get(entry[0]) != entry[1:]]
    reused = sum(known.get(entry[0]) == entry[1:] for entry in files)
    changed = stored is None or stored.files != files
    if todo:
        resumed = len(files) - reused - len(todo)
        log.info("embedding %d of %d gallery photos (%d reused from %s%s)", len(todo),
                 len(files), reused, folder,
                 f", {resumed} from an unfinished build" if resumed else "")
    if changed:
        pending.mkdir(parents=True, exist_ok=True)
    else:  # pieces of an old build that the index no longer needs
        shutil.rmtree(pending, ignore_errors=True)
    return {"files": files, "todo": todo, "changed": changed}


def _merge(folder: Path, model_key: str, files: list, stored: GalleryIndex | None) -> None:
    """Commit the next generation: rows of ``files`` from the stored features (unchanged
    photos) and from the pieces under ``pending/``, one piece in memory at a time; then
    remove the pieces."""
    row_of = {entry[0]: row for row, entry in enumerate(files)}
    pending = folder / PENDING
    pieces = [path for path in sorted(pending.glob("*.npz"))
              if _read_chunk(path, model_key) is not None]
    if stored is not None:
        dim = stored.features.shape[1]
    elif pieces:
        dim = _read_chunk(pieces[0], model_key, with_features=True)[1].shape[1]
    else:
        raise RuntimeError(f"no embedded photos under {pending}")

    def rows_to_copy(entries: list) -> np.ndarray:
        """[n, 2] (row in ``files``, row in ``entries``) of the entries still wanted."""
        pairs = [(row_of[entry[0]], row) for row, entry in enumerate(entries)
                 if entry[0] in row_of and files[row_of[entry[0]]] == entry]
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def fill(out: np.ndarray) -> None:
        filled = np.zeros(len(files), dtype=bool)
        if stored is not None:
            pairs = rows_to_copy(stored.files)
            for start in range(0, len(pairs), 65536):
                block = pairs[start:start + 65536]
                out[block[:, 0]] = stored.features.numpy()[block[:, 1]]
                filled[block[:, 0]] = True
        for path in pieces:
            chunk = _read_chunk(path, model_key, with_features=True)
            if chunk is None:  # unreadable since it was listed: its photos are missed below
                continue
            pairs = rows_to_copy(chunk[0])
            out[pairs[:, 0]] = chunk[1][pairs[:, 1]]
            filled[pairs[:, 0]] = True
        if not filled.all():
            missing = files[int(np.flatnonzero(~filled)[0])][0]
            raise RuntimeError(f"{(~filled).sum()} photos of {folder} were not embedded "
                               f"(e.g. {missing})")

    write_index(folder, model_key, files, dim, _next_generation(folder), fill)
    shutil.rmtree(pending, ignore_errors=True)


# ---------------------------------------------------------------------------- search
@torch.no_grad()
def exact_topk(features: torch.Tensor, queries: torch.Tensor, k: int,
               chunk_rows: int = EXACT_CHUNK_ROWS) -> tuple:
    """The ``k`` best gallery rows for each query by inner product: ``features`` [G, E] (any
    dtype, e.g. the memory-mapped float16 ones), ``queries`` [Q, E] float32 ->
    (scores [Q, k'], rows [Q, k']), best first, k' = min(k, G). Rows are scored
    ``chunk_rows`` at a time in float32 and the top k merged across chunks."""
    queries = queries.float()
    k = min(k, len(features))
    buffer = torch.empty(min(chunk_rows, len(features)), features.shape[1])
    best_scores = torch.empty(len(queries), 0)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long)
    for start in range(0, len(features), chunk_rows):
        block = buffer[:min(chunk_rows, len(features) - start)]
        block.copy_(features[start:start + len(block)])
        scores = queries @ block.t()  # [Q, chunk]
        top = scores.topk(min(k, len(block)), dim=1)
        candidates = torch.cat([best_scores, top.values], dim=1)
        rows = torch.cat([best_rows, top.indices + start], dim=1)
        best = candidates.topk(min(k, candidates.shape[1]), dim=1)
        best_scores, best_rows = best.values, rows.gather(1, best.indices)
    return best_scores, best_rows


@dataclasses.dataclass(frozen=True)
class AnnSettings:
    """Approximate search with FAISS on the normalised features (inner product). Both kinds
    hold the float16 values of the features file (IVF the vectors, not their residuals to
    the list's centre), so that a photo found has the score exact search gives it.

    ivf:  an inverted file of ``nlist`` k-means lists (default round(sqrt(N)), at least 1
          and at most N / 39, faiss's minimum of training points per list), trained on
          ``64 * nlist`` sampled photos; a query scans its ``nprobe`` nearest lists.
    hnsw: a graph of ``m`` links per photo built with ``ef_construction`` candidates; a
          query keeps ``ef_search`` candidates (at least k).

    Measured by ``bench.search`` at 1M photos of dim 512 on 2 CPU cores, around 1000
    centres: ivf (nlist 1000, nprobe 32) recall@10 1.0 at p95 5.6 ms, built in 31 s; hnsw
    0.73 at p95 1.1 ms, built in 4 min (inside a tight cluster every point is about as near
    as every other, which the graph cannot tell apart); exact search p95 146 ms. On uniform
    random vectors, the worst case, neither reaches 0.95 within 20 ms (ivf nprobe 128: 0.33).
    """

    kind: str = "hnsw"
    nlist: int | None = None
    nprobe: int = 32
    m: int = 32
    ef_construction: int = 100
    ef_search: int = 256

    def build_name(self, count: int) -> tuple:
        """The (stem, details) of the index file: what the build depends on."""
        if self.kind == "ivf":
            return "ivf", [f"nlist{self.lists(count)}.faiss"]
        return "hnsw", [f"m{self.m}", f"efc{self.ef_construction}.faiss"]

    def lists(self, count: int) -> int:
        if self.nlist is not None:
            return max(1, min(self.nlist, count))
        return max(1, min(round(math.sqrt(count)), count // 39))


def require_faiss():
    """The faiss module, or one line saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise UserError(FAISS_MISSING) from None
    return faiss


def build_ann(features: torch.Tensor, settings: AnnSettings, chunk_rows: int = 65536):
    """A FAISS index over ``features`` [G, E] (float16, memory-mapped), added in chunks."""
    faiss = require_faiss()
    count, dim = features.shape
    if settings.kind == "ivf":
        lists = settings.lists(count)
        index = faiss.index_factory(dim, f"IVF{lists},SQfp16", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).by_residual = False  # see AnnSettings
        sample = np.sort(np.random.default_rng(0).choice(
            count, size=min(count, 64 * lists), replace=False))
        index.train(features.numpy()[sample].astype(np.float32))
    else:
        index = faiss.index_factory(dim, f"HNSW{settings.m},SQfp16",
                                    faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(index).hnsw.efConstruction = settings.ef_construction
        index.train(features[:min(count, 1000)].float().numpy())  # float16: nothing to learn
    for start in range(0, count, chunk_rows):
        index.add(features[start:start + chunk_rows].float().numpy())
    return index


def _read_ann(path: Path):
    """The FAISS index in ``path``, or None when there is none or it is unreadable."""
    faiss = require_faiss()
    if not path.is_file():
        return None
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        log.warning("FAISS index %s is unreadable (%s); rebuilding it", path, error)
        return None


def _is_current(stored: GalleryIndex) -> bool:
    """Whether ``stored`` is still the committed generation of its folder (a newer one
    removes the older generation's features file)."""
    return (stored.folder / f"features-g{stored.generation}.npy").is_file()


def load_or_build_ann(stored: GalleryIndex, settings: AnnSettings):
    """The FAISS index of ``stored``'s generation: read from its file, or built and saved
    there (atomically, under the index lock, so that two processes never build it twice)
    when the photos changed or there is none yet."""
    faiss = require_faiss()
    stem, details = settings.build_name(len(stored.files))
    path = stored.file_name(stem, *details)
    index = _read_ann(path)
    if index is not None:
        return index
    with index_lock(stored.folder):
        index = _read_ann(path)  # built by another process while this one waited
        if index is not None:
            return index
        started = time.perf_counter()
        index = build_ann(stored.features, settings)
        if _is_current(stored):  # never leave a file of a generation that is gone
            with _temporary(path.parent, path.name) as temporary:
                faiss.write_index(index, str(temporary))
                _commit(temporary, path)
    log.info("built the %s index of %d photos in %.1f s: %s", settings.kind,
             len(stored.files), time.perf_counter() - started, path)
    return index


def ann_search(index, settings: AnnSettings, queries: torch.Tensor, k: int) -> tuple:
    """(scores [Q, k'], rows [Q, k']) from a FAISS index; k' <= k (an IVF search may find
    fewer than k photos in its lists; the missing ones are dropped)."""
    faiss = require_faiss()
    k = min(k, index.ntotal)
    if settings.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = settings.nprobe
    else:
        faiss.downcast_index(index).hnsw.efSearch = max(settings.ef_search, k)
    scores, rows = index.search(np.ascontiguousarray(queries.float().numpy()), k)
    found = int((rows >= 0).all(axis=0).sum())
    return torch.from_numpy(scores[:, :found]), torch.from_numpy(rows[:, :found])


def _read_neighbours(path: Path, k1: int, count: int) -> dict | None:
    """The neighbour lists in ``path`` when they are for ``k1`` and ``count`` photos."""
    if not path.is_file():
        return None
    try:
        neighbours = torch.load(path, map_location="cpu", weights_only=True)
        if neighbours["k1"] == k1 and neighbours["gallery_size"] == count:
            return neighbours
    except UNREADABLE_FILE_ERRORS as error:
        log.warning("neighbour lists %s are unreadable (%s); computing them again", path,
                    error)
    return None


def load_or_build_neighbours(stored: GalleryIndex, gallery_feats: torch.Tensor, k1: int) -> dict:
    """The gallery-to-gallery neighbour lists of ``stored``'s generation for re-ranking
    (``utils.rerank.gallery_neighbours`` of ``gallery_feats`` [G, E]): read from the index
    folder, or computed once and saved there (atomically, under the index lock)."""
    path = stored.file_name("neighbours", f"k1_{k1}.pt")
    neighbours = _read_neighbours(path, k1, len(stored.files))
    if neighbours is not None:
        return neighbours
    with index_lock(stored.folder):
        neighbours = _read_neighbours(path, k1, len(stored.files))
        if neighbours is not None:
            return neighbours
        started = time.perf_counter()
        neighbours = gallery_neighbours(gallery_feats, k1)
        if _is_current(stored):
            save_atomic(neighbours, path)
    log.info("computed the neighbour lists of %d photos (k1=%d) in %.1f s: %s",
             len(stored.files), k1, time.perf_counter() - started, path)
    return neighbours


# ------------------------------------------------------------------- an indexed gallery
class IndexedGallery:
    """Embedded photos, ranked for query features: exactly, by a FAISS index (``ann``), or by
    k-reciprocal re-ranking (``rerank``: (k1, k2, lambda), with the gallery's neighbour
    lists). ``from_folder`` keeps them in an index folder, ``from_files`` in memory. Under
    torchrun only the main process holds them (``paths`` is empty elsewhere)."""

    def __init__(self, paths: list, features: torch.Tensor | None, folder: Path | None = None,
                 index: GalleryIndex | None = None, ann: AnnSettings | None = None,
                 rerank: tuple | None = None):
        self.paths = paths        # what results name: relative to ``folder``, or as given
        self.features = features  # [G, E] float16 (memory-mapped from an index folder)
        self.folder = folder      # the gallery folder; None for a list of files
        self.index = index        # the committed generation of its index folder
        self.ann_settings, self.rerank = ann, rerank
        self.ann = self.neighbours = self.rerank_features = None
        if features is None:
            return
        if ann is not None:  # read from the index folder, or built (and stored there)
            self.ann = load_or_build_ann(index, ann) if index is not None \
                else build_ann(features, ann)
        if rerank is not None:
            # Float32, as re-ranking computes its distances from the features it is given.
            self.rerank_features = features.float()  # [G, E]
            self.neighbours = (
                load_or_build_neighbours(index, self.rerank_features, rerank[0])
                if index is not None else gallery_neighbours(self.rerank_features, rerank[0]))

    @classmethod
    def from_folder(cls, folder: Path, index_path: Path, model_key: str,
                    embed: Callable[[list], torch.Tensor], save_every: int = SAVE_EVERY,
                    legacy: Path | None = None, **options) -> IndexedGallery:
        """The photos under ``folder``, through the index folder ``index_path`` brought up to
        date by ``build_index`` (``embed(paths)`` -> normalised features [n, E] of new and
        changed photos); ``options``: ``ann``, ``rerank``."""
        stored = build_index(index_path, folder, model_key, embed, save_every, legacy)
        if stored is None:  # not the main process
            return cls([], None, folder)
        return cls(stored.paths, stored.features, folder, stored, **options)

    @classmethod
    def from_files(cls, paths: list, embed: Callable[[list], torch.Tensor],
                   **options) -> IndexedGallery:
        """The image files ``paths``, embedded now and held in memory (float16, as an index
        folder holds them); ``options``: ``ann``, ``rerank``."""
        features = embed([Path(path) for path in paths]).to(torch.float16)
        return cls([str(path) for path in paths], features, **options)

    def rank(self, queries: torch.Tensor, topk: int) -> tuple:
        """(scores [Q, k], rows [Q, k]) of the best ``topk`` gallery rows for ``queries``
        [Q, E] (float32, CPU): exact, by the FAISS index with ``ann``, or in the order of
        k-reciprocal re-ranking with ``rerank`` (the scores stay cosine similarities)."""
        if self.neighbours is not None:
            _, k2, lambda_value = self.rerank
            distances = rerank_queries(queries, self.rerank_features, self.neighbours, k2,
                                       lambda_value)  # [Q, G], lower is nearer
            rows = distances.topk(min(topk, distances.shape[1]), dim=1, largest=False).indices
            picked = self.rerank_features[rows.flatten()].view(*rows.shape, -1)  # [Q, k, E]
            return torch.einsum("qke,qe->qk", picked, queries), rows
        if self.ann is not None:
            return ann_search(self.ann, self.ann_settings, queries, topk)
        return exact_topk(self.features, queries, topk)
