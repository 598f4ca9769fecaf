"""Benchmark gallery search at scale: exact (chunked, memory-mapped) against FAISS IVF and
HNSW (``engine.gallery``), on synthetic features.

    python -m bench.search --gallery 1000000                  # random unit vectors, dim 512
    python -m bench.search --gallery 1000000 --clusters 1000  # points around 1000 centres
    python -m bench.search --gallery 1000000 --methods ivf --nprobe 16,32,64,128

The gallery is written as a real index folder (``engine.gallery.write_index``: float16,
memory-mapped) in ``--workdir`` (a temporary folder unless given); each method then runs
in a fresh process, so that its peak memory is its own:

* ``exact``: ``exact_topk`` over the memory-mapped features; its top 10 of every query is
  the truth that recall@10 is measured against. Build time: writing the features file.
* ``ivf`` / ``hnsw``: ``build_ann`` (FAISS, float16 vectors), as ``search.py --ann`` builds
  it, with ``engine.gallery.AnnSettings``' defaults unless ``--nlist``, ``--m`` or
  ``--ef-construction`` say otherwise; build time includes writing the file. Each
  ``--nprobe`` / ``--ef`` value (comma-separated) is one line, all on the same built index.

Per line: build_s, query latency p50_ms and p95_ms over ``--queries`` single queries
(after one warm-up query), recall_at_10 (the share of the exact top 10 found), peak_rss_mb
(the process's own peak resident memory, from /proc: Linux; it counts the pages of the
memory-mapped features it touched, and the index being built), start_rss_mb (the same
before any data, i.e. the interpreter with torch and faiss; the table shows the
difference) and disk_mb (the method's own file: the features, or the FAISS index). One
JSON line each, then a table.

Data. Random mode (``--clusters 0``): uniform random unit vectors, the worst case for an
approximate index (no structure to exploit: in 512 dimensions every point is nearly as far
as every other). Clustered mode: ``--clusters C`` random unit centres and points
normalise(centre + noise * g / sqrt(dim)), g standard normal (``--noise 1``: a point's
cosine to its centre is about 0.7, to another point of its cluster about 0.5, and about 0
across clusters), which is closer to what an encoder gives. Queries are drawn the same way
(new points). A fixed ``--seed`` gives the same data.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import emit
from engine.gallery import (
    AnnSettings,
    ann_search,
    build_ann,
    exact_topk,
    read_index,
    require_faiss,
    write_index,
)
from utils.config import REPO_ROOT

MODEL_KEY = "bench.search synthetic features"
BLOCK_ROWS = 65536  # rows generated at a time (the data do not depend on it)
RECALL_AT = 10


# --------------------------------------------------------------------------- the data
def cluster_centres(clusters: int, dim: int, seed: int = 0) -> torch.Tensor | None:
    """[C, dim] random unit centres, or None for ``clusters=0`` (uniform data)."""
    if not clusters:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(clusters, dim, generator=generator), dim=1)


def synthetic_rows(count: int, dim: int, centres: torch.Tensor | None = None,
                   noise: float = 1.0, seed: int = 0) -> torch.Tensor:
    """[count, dim] float32 unit vectors: uniform on the sphere, or around random
    ``centres`` (normalise(centre + noise * g / sqrt(dim)))."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(count, dim, generator=generator)
    if centres is not None:
        which = torch.randint(len(centres), (count,), generator=generator)
        points = centres[which] + noise * points / math.sqrt(dim)
    return torch.nn.functional.normalize(points, dim=1)


def write_gallery(folder: Path, count: int, dim: int, centres, noise: float, seed: int) -> float:
    """Write ``count`` synthetic photos as an index folder; seconds it took."""
    files = [[f"{row:09d}.jpg", 0, 0] for row in range(count)]

    def fill(out: np.ndarray) -> None:
        for block, start in enumerate(range(0, count, BLOCK_ROWS)):
            rows = min(BLOCK_ROWS, count - start)
            out[start:start + rows] = synthetic_rows(
                rows, dim, centres, noise, seed * 1_000_003 + block + 1).half().numpy()

    started = time.perf_counter()
    write_index(folder, MODEL_KEY, files, dim, 1, fill)
    return time.perf_counter() - started


# ---------------------------------------------------------------------- one method
def resident_mb(field: str = "VmHWM") -> float:
    """This process's own peak (``VmHWM``) or current (``VmRSS``) resident memory, from
    /proc (Linux). Not getrusage's ru_maxrss: that keeps the peak of the parent a child was
    forked from (here the one that wrote the gallery), across the exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def latencies_ms(search, queries: torch.Tensor) -> tuple:
    """(per-query milliseconds, [Q, k] rows found) of single-query searches; one warm-up."""
    search(queries[:1])
    times, found = [], []
    for row in range(len(queries)):
        started = time.perf_counter()
        _, rows = search(queries[row:row + 1])
        times.append((time.perf_counter() - started) * 1000.0)
        found.append(rows[0])
    return times, found


def recall(found: list, truth: np.ndarray) -> float:
    """The mean share of each query's true top ``RECALL_AT`` among its found top."""
    return float(np.mean([len(set(rows[:RECALL_AT].tolist()) & set(best.tolist())) / len(best)
                          for rows, best in zip(found, truth)]))


def run_method(args) -> None:
    """Child process: one method on the gallery in ``--workdir``; JSON lines on stdout."""
    start_mb = resident_mb("VmRSS")  # the interpreter and its libraries, before any data
    workdir = Path(args.workdir)
    stored = read_index(workdir / "index", MODEL_KEY)
    queries = torch.from_numpy(np.load(workdir / "queries.npy"))
    base = json.loads((workdir / "gallery.json").read_text())
    if args.child == "exact":
        started = time.perf_counter()
        _, truth = exact_topk(stored.features, queries, RECALL_AT)  # all queries at once
        batch_s = time.perf_counter() - started
        np.save(workdir / "truth.npy", truth.numpy())
        times, found = latencies_ms(lambda q: exact_topk(stored.features, q, RECALL_AT),
                                    queries)
        path = stored.folder / json.loads((stored.folder / "index.json").read_text())["features"]
        report(base, "exact", {}, base["write_s"], times, recall(found, truth.numpy()), path,
               start_mb, {"batch_ms_per_query": round(batch_s * 1000 / len(queries), 3)})
        return
    truth = np.load(workdir / "truth.npy")
    settings = AnnSettings(args.child, nlist=args.nlist, m=args.m,
                           ef_construction=args.ef_construction)
    faiss = require_faiss()
    path = workdir / f"{args.child}.faiss"
    started = time.perf_counter()
    index = build_ann(stored.features, settings)
    faiss.write_index(index, str(path))
    build_s = time.perf_counter() - started
    values = args.nprobe if args.child == "ivf" else args.ef
    for value in values:
        tuned = AnnSettings(settings.kind, nlist=settings.nlist, nprobe=value, m=settings.m,
                            ef_construction=settings.ef_construction, ef_search=value)
        times, found = latencies_ms(lambda q, s=tuned: ann_search(index, s, q, RECALL_AT),
                                    queries)
        built = ({"nlist": settings.lists(len(stored.files)), "nprobe": value}
                 if args.child == "ivf" else
                 {"m": settings.m, "ef_construction": settings.ef_construction,
                  "ef_search": value})
        report(base, args.child, built, build_s, times, recall(found, truth), path, start_mb)


def report(base: dict, method: str, settings: dict, build_s: float, times: list,
           recall_at_10: float, path: Path, start_mb: float, extra: dict | None = None) -> None:
    emit({**base, "method": method, "settings": settings, "build_s": round(build_s, 2),
          "p50_ms": round(float(np.percentile(times, 50)), 3),
          "p95_ms": round(float(np.percentile(times, 95)), 3),
          "recall_at_10": round(recall_at_10, 4),
          "peak_rss_mb": round(resident_mb()), "start_rss_mb": round(start_mb),
          "disk_mb": round(path.stat().st_size / 2 ** 20), **(extra or {})})


# ----------------------------------------------------------------------------- main
SHORT_NAMES = {"ef_construction": "efC", "ef_search": "ef"}  # settings, in the table


def table(records: list) -> str:
    """The records as a table; RSS is the peak over the process's start (the interpreter
    and its libraries, about 0.7 GB here with torch)."""
    header = (f"{'data':<14}{'method':<7}{'settings':<26}{'build s':>9}{'p50 ms':>9}"
              f"{'p95 ms':>9}{'recall@10':>11}{'RSS +MB':>9}{'disk MB':>9}")
    lines = [header, "-" * len(header)]
    for r in records:
        data = f"clusters {r['clusters']}" if r["clusters"] else "random"
        settings = " ".join(f"{SHORT_NAMES.get(key, key)}={value}"
                            for key, value in r["settings"].items())
        lines.append(f"{data:<14}{r['method']:<7}{settings:<26}{r['build_s']:>9.1f}"
                     f"{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['recall_at_10']:>11.3f}"
                     f"{r['peak_rss_mb'] - r['start_rss_mb']:>9,}{r['disk_mb']:>9,}")
    return "\n".join(lines)


def integers(text: str) -> list:
    return [int(value) for value in text.split(",") if value]


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=100_000, help="photos (default 100000)")
    parser.add_argument("--dim", type=int, default=512, help="feature size (default 512)")
    parser.add_argument("--clusters", type=int, default=0,
                        help="0: uniform random unit vectors (default); C: points around C "
                        "random centres")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="clustered mode: spread around the centres (default 1.0)")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="exact,ivf,hnsw",
                        help="comma-separated, of exact, ivf, hnsw (exact always runs first: "
                        "it gives the truth)")
    defaults = AnnSettings()
    parser.add_argument("--nprobe", type=integers, default=[defaults.nprobe],
                        help=f"ivf: lists searched, comma-separated (default {defaults.nprobe})")
    parser.add_argument("--ef", type=integers, default=[defaults.ef_search],
                        help=f"hnsw: efSearch, comma-separated (default {defaults.ef_search})")
    parser.add_argument("--nlist", type=int, default=None,
                        help="ivf: lists (default round(sqrt(gallery)))")
    parser.add_argument("--m", type=int, default=defaults.m,
                        help=f"hnsw: links per photo (default {defaults.m})")
    parser.add_argument("--ef-construction", type=int, default=defaults.ef_construction,
                        help=f"hnsw: efConstruction (default {defaults.ef_construction})")
    parser.add_argument("--workdir", help="where the index is written (default: a temporary "
                        "folder, removed afterwards); an existing one is reused")
    parser.add_argument("--jsonl", help="also append the JSON lines to this file")
    parser.add_argument("--child", choices=("exact", "ivf", "hnsw"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_method(args)
        return []
    methods = [name for name in ("exact", "ivf", "hnsw") if name in args.methods.split(",")]
    unknown = set(args.methods.split(",")) - {"exact", "ivf", "hnsw"}
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from exact, ivf, hnsw")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        return run_all(args, ["exact", *[m for m in methods if m != "exact"]], workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run_all(args, methods: list, workdir: Path) -> list:
    workdir.mkdir(parents=True, exist_ok=True)
    gallery_file = workdir / "gallery.json"
    base = {"bench": "search", "gallery": args.gallery, "dim": args.dim,
            "clusters": args.clusters, "noise": args.noise if args.clusters else None,
            "queries": args.queries, "seed": args.seed, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    previous = json.loads(gallery_file.read_text()) if gallery_file.is_file() else {}
    if {key: previous.get(key) for key in base} != base:
        centres = cluster_centres(args.clusters, args.dim, args.seed)
        base["write_s"] = round(write_gallery(workdir / "index", args.gallery, args.dim,
                                              centres, args.noise, args.seed), 2)
        queries = synthetic_rows(args.queries, args.dim, centres, args.noise,
                                 args.seed * 1_000_003)
        np.save(workdir / "queries.npy", queries.numpy())
        gallery_file.write_text(json.dumps(base))
    else:
        base = previous
    records = []
    for method in methods:
        command = [sys.executable, "-m", "bench.search", "--child", method,
                   "--workdir", str(workdir), "--nprobe", ",".join(map(str, args.nprobe)),
                   "--ef", ",".join(map(str, args.ef)), "--m", str(args.m),
                   "--ef-construction", str(args.ef_construction)]
        if args.nlist:
            command += ["--nlist", str(args.nlist)]
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                cwd=REPO_ROOT)
        if result.returncode != 0:
            sys.exit(f"bench.search: {method} failed:\n{result.stderr.strip()}")
        for line in result.stdout.splitlines():
            if line.startswith("{"):
                records.append(emit(json.loads(line), args.jsonl))
    print(table(records))
    return records


if __name__ == "__main__":
    main()
