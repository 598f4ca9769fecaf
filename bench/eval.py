"""Benchmark retrieval evaluation: feature matching + ``rank_metrics``.

Run from the repository root, e.g.::

    python -m bench.eval --queries 2000 --gallery 10000 --reference

Random L2-normalised features stand in for encoder outputs; ids and cameras
are drawn at random (Market-1501-like counts by default).  Matching (one
matmul) and ``utils.metrics.rank_metrics`` are each timed as the median of
``--repeats`` runs after one warm-up run.  Prints one JSON line.

With ``--reference`` fast-reid's Market-1501 evaluator is timed once on the same
problem (``reference_ms``, ``speedup`` = reference_ms / rank_metrics_ms) and the
metrics are checked to agree (``max_abs_diff`` in percentage points, ``agree``
when below ``agree_tol``).  ``--reference-impl`` picks which of fast-reid's two:

* ``cython``: the compiled ``evaluate_cy`` its users run, built here from the
  ``rank_cy.pyx`` in the installed wheel with Cython and the C compiler (once,
  into a cache folder; see ``bench/fastreid_cython.py``).  It sums AP and INP in
  float32, so ``agree_tol`` is 1e-5 rather than 1e-9.
* ``python``: its pure-Python ``eval_market1501``.
* ``auto`` (default): ``cython`` when it builds, otherwise ``python`` with one
  line on stderr saying why (``cython`` asked for by name exits instead).

``reference_impl`` names the one timed::

    python -m bench.eval --queries 2000 --gallery 10000 --reference
    python -m bench.eval --queries 2000 --gallery 10000 --reference --reference-impl python

With ``--encoders`` the line also holds the throughput of the two CLIP towers at
batch ``--encoder-batch`` (64): ``encode_image_per_s`` (images/s at ``--image-size``)
and ``encode_text_per_s`` (texts/s, captions tokenised beforehand), each the median
of ``--encoder-repeats`` timed calls after one warm-up, without gradients, in
``--encoder-precision`` (bfloat16 autocast by default on CUDA; always float32 on the
CPU).  The CLIP is ``--clip FILE`` (e.g. one made by ``python -m model.random_clip
--preset vit-b-16``), or a random ViT-B/16 built in memory when no file is given::

    python -m bench.eval --queries 2000 --gallery 10000 --encoders
    python -m bench.eval --queries 2000 --gallery 10000 --encoders \
        --clip /tmp/vitb16-random.pt --image-size 384 128
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench import fastreid_cython
from utils.metrics import rank_metrics

KEYS = ("R1", "R5", "R10", "mAP", "mINP")
CYTHON = "fast-reid cython (compiled here)"
PYTHON = "fast-reid python"
# Largest |ours - reference| (percentage points) that counts as agreement: the Python
# evaluator works in float64; the compiled one sums AP and INP in float32 (eps 1.2e-7,
# on a 0-100 scale).
AGREE_TOL = {PYTHON: 1e-9, CYTHON: 1e-5}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int):
    fn()  # warm-up: allocator, kernels, caches
    _sync(device)
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), result


def _load_reference(choice: str):
    """``(evaluate, name)``: fast-reid's evaluator picked by ``--reference-impl``
    (``auto``, ``cython`` or ``python``), called as ``evaluate(distances, q_ids, g_ids,
    q_cams, g_cams, max_rank)``.  Its files are loaded by path, so the package's
    ``__init__`` never runs."""
    spec = importlib.util.find_spec("fastreid")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("--reference needs fastreid installed (pip install fastreid --no-deps)")
    evaluation = Path(list(spec.submodule_search_locations)[0], "evaluation")
    if choice != "python":
        pyx = evaluation / "rank_cylib" / "rank_cy.pyx"
        try:
            return fastreid_cython.load_evaluate_cy(pyx), CYTHON
        except fastreid_cython.BuildError as error:
            if choice == "cython":
                sys.exit(f"--reference-impl cython: {error}")
            print(f"{error}; timing fast-reid's pure-Python evaluator instead",
                  file=sys.stderr)
    return _load_python_reference(evaluation / "rank.py"), PYTHON


def _load_python_reference(path: Path):
    """``eval_market1501`` of fast-reid's rank.py, loaded on its own."""
    rank_spec = importlib.util.spec_from_file_location("_fastreid_rank", path)
    module = importlib.util.module_from_spec(rank_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cython unavailable" notice
        rank_spec.loader.exec_module(module)
    return module.eval_market1501  # the pure-Python implementation


def _reference_metrics(eval_fn, dist, q_ids, g_ids, q_cams, g_cams):
    all_cmc, all_ap, all_inp = eval_fn(dist, q_ids, g_ids, q_cams, g_cams, 50)
    n_valid = len(all_ap)
    # CMC comes back as float32 fractions: recover exact counts of queries.
    out = {f"R{k}": 100.0 * round(float(all_cmc[k - 1]) * n_valid) / n_valid
           for k in (1, 5, 10)}
    out["mAP"] = 100.0 * float(np.mean(all_ap))
    out["mINP"] = 100.0 * float(np.mean(all_inp))
    return out


def _max_diff(a, b) -> float:
    return max(abs(a[k] - b[k]) for k in KEYS)


def _encoder_throughput(args, device: torch.device) -> dict:
    """Images/s and texts/s of the CLIP towers at batch ``args.encoder_batch``."""
    from bench.common import CAPTIONS
    from model.clip import build_clip, load_clip
    from model.random_clip import PRESETS, random_clip_state_dict
    from model.tokenizer import tokenize
    from utils.precision import autocast, autocast_dtype

    image_size = tuple(args.image_size)
    if args.clip:
        clip = load_clip(args.clip, image_size)
        source = args.clip
    else:
        clip = build_clip(random_clip_state_dict(PRESETS["vit-b-16"], seed=args.seed), image_size)
        source = "random vit-b-16"
    clip = clip.to(device).eval()
    batch = args.encoder_batch
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(batch, 3, *image_size, generator=gen).to(device)
    tokens = tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)],
                      clip.context_length).to(device)

    precision = args.encoder_precision
    dtype = autocast_dtype(device, precision != "float32",
                           "float16" if precision == "float32" else precision)

    def run(encode, inputs):
        with torch.no_grad(), autocast(device, dtype):
            return encode(inputs)

    image_ms, _ = _median_ms(lambda: run(clip.encode_image, images), device,
                             args.encoder_repeats)
    text_ms, _ = _median_ms(lambda: run(clip.encode_text, tokens), device,
                            args.encoder_repeats)
    return {"encoder_clip": source, "encoder_image_size": list(image_size),
            "encoder_batch": batch,
            "encode_image_ms": round(image_ms, 2), "encode_text_ms": round(text_ms, 2),
            "encode_image_per_s": round(batch / (image_ms / 1000.0), 2),
            "encode_text_per_s": round(batch / (text_ms / 1000.0), 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, required=True)
    parser.add_argument("--gallery", type=int, required=True)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--reference", action="store_true",
                        help="also time fast-reid's Market-1501 evaluator")
    parser.add_argument("--reference-impl", choices=("auto", "cython", "python"),
                        help="which of fast-reid's evaluators --reference times (default: "
                        "auto, the compiled one when it builds, else the Python one)")
    parser.add_argument("--ids", type=int, default=751, help="identities")
    parser.add_argument("--cams", type=int, default=6, help="cameras")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoders", action="store_true",
                        help="also time CLIP's encode_image and encode_text")
    parser.add_argument("--clip", help="CLIP file for --encoders (default: a random "
                        "ViT-B/16 built in memory)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[224, 224],
                        metavar=("H", "W"), help="input size for --encoders")
    parser.add_argument("--encoder-batch", type=int, default=64)
    parser.add_argument("--encoder-repeats", type=int, default=3)
    parser.add_argument("--encoder-precision", choices=("float32", "float16", "bfloat16"),
                        default="bfloat16", help="autocast of --encoders on CUDA")
    parser.add_argument("--jsonl", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    if args.reference_impl and not args.reference:
        parser.error("--reference-impl needs --reference")

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(args.seed)
    q_feat = torch.nn.functional.normalize(
        torch.randn(args.queries, args.dim, generator=gen), dim=1).to(device)
    g_feat = torch.nn.functional.normalize(
        torch.randn(args.gallery, args.dim, generator=gen), dim=1).to(device)
    q_ids = torch.randint(0, args.ids, (args.queries,), generator=gen)
    g_ids = torch.randint(0, args.ids, (args.gallery,), generator=gen)
    q_cams = torch.randint(0, args.cams, (args.queries,), generator=gen)
    g_cams = torch.randint(0, args.cams, (args.gallery,), generator=gen)
    labels = [t.to(device) for t in (q_ids, g_ids, q_cams, g_cams)]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    match_ms, sim = _median_ms(lambda: q_feat @ g_feat.T, device, args.repeats)
    rank_ms, metrics = _median_ms(lambda: rank_metrics(sim, *labels), device,
                                  args.repeats)

    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        # Linux reports ru_maxrss in KiB; read before the reference runs.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out = {"bench": "eval", "queries": args.queries, "gallery": args.gallery,
           "dim": args.dim, "device": args.device,
           "match_ms": round(match_ms, 3), "rank_metrics_ms": round(rank_ms, 3),
           "reference_ms": None, "reference_impl": None, "speedup": None,
           "peak_mem_mb": round(peak_mb, 1)}
    out.update({k: metrics[k] for k in KEYS})

    if args.reference:
        eval_fn, impl = _load_reference(args.reference_impl or "auto")
        tolerance = AGREE_TOL[impl]
        sim_np = sim.cpu().numpy()
        ids_np = [t.numpy() for t in (q_ids, g_ids, q_cams, g_cams)]
        start = time.perf_counter()
        ref = _reference_metrics(eval_fn, -sim_np, *ids_np)
        ref_ms = (time.perf_counter() - start) * 1000.0
        diff = _max_diff(metrics, ref)
        out["raw_abs_diff"] = diff
        if diff >= tolerance:
            # float32 scores can tie exactly, and numpy's default argsort (both
            # evaluators use it) orders ties arbitrarily while rank_metrics keeps
            # gallery order.  Re-check (untimed) with each score replaced by its
            # position in a stable descending sort: same ranking, no ties (the
            # positions stay exact in the compiled evaluator's float32 below 2**24).
            order = np.argsort(-sim_np, axis=1, kind="stable")
            position = np.empty_like(order)
            np.put_along_axis(position, order,
                              np.arange(sim_np.shape[1])[None, :], axis=1)
            diff = _max_diff(metrics, _reference_metrics(eval_fn, position, *ids_np))
            out["ties_rechecked"] = True
        out["reference_ms"] = round(ref_ms, 3)
        out["reference_impl"] = impl
        out["speedup"] = round(ref_ms / rank_ms, 2)
        out["max_abs_diff"] = diff
        out["agree_tol"] = tolerance
        out["agree"] = diff < tolerance

    if args.encoders:
        out.update(_encoder_throughput(args, device))

    print(json.dumps(out))
    if args.jsonl:
        with Path(args.jsonl).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(out) + "\n")
    if args.reference and not out["agree"]:
        sys.exit(1)
    return out


if __name__ == "__main__":
    main()
