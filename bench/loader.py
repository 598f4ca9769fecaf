"""Benchmark the training data pipeline: samples/s per number of loader processes.

The pipeline is the trainer's: the stage's ``train_dataset`` (image reading, the training
augmentation, tokenisation) behind a ``DataLoader`` with ``datasets.sampler.EpochSampler``,
the stage's collate function, ``drop_last`` and pinned memory when CUDA is present. For
each count in ``--workers`` a fresh loader is started; the first batch (which includes
starting the worker processes) is timed on its own as ``first_batch_ms``, then
``--batches`` further batches give ``samples_per_s`` and ``batch_ms`` (median time between
batches). One JSON line per worker count. Runs past the end of an epoch go on into the
next one, as training does.

On the synthetic data::

    python -m datasets.synthetic --out data/synthetic
    python -m bench.loader --workers 0,1,2 --batches 20 data.root=data/synthetic
    python -m bench.loader --stage token --workers 0,2 data.root=data/synthetic
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import emit
from datasets.sampler import EpochSampler
from engine.stages import STAGES
from engine.trainer import build_train_loader
from utils.config import flatten, load_config, parse_overrides
from utils.errors import UserError

DEFAULT_CONFIGS = {"adapt": "config/TriPEDES_pretrain.yaml", "token": "config/Market_finetune.yaml"}


def worker_counts(text: str) -> list:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--workers takes counts like 0,1,2, not {text!r}") from None
    if not counts or any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError(f"--workers takes counts like 0,1,2, not {text!r}")
    return counts


def add_pipeline_arguments(parser, workers: list) -> None:
    """--stage, --config and --workers (default ``workers``), as the pipeline benchmarks
    (this one and ``bench.epoch``) take them."""
    parser.add_argument("--stage", choices=sorted(STAGES), default="adapt")
    parser.add_argument("--config", help="stage YAML file (default: "
                        f"{DEFAULT_CONFIGS['adapt']} / {DEFAULT_CONFIGS['token']})")
    text = ",".join(map(str, workers))
    parser.add_argument("--workers", type=worker_counts, default=workers,
                        help=f"comma-separated loader process counts (default {text})")


def batches(dataset, cfg, stage, batch_size: int, workers: int, device: torch.device):
    """Batches forever, epoch after epoch, from the trainer's own loader."""
    cfg.train.batch_size, cfg.data.num_workers = batch_size, workers
    sampler = EpochSampler(len(dataset), batch_size, cfg.seed)
    loader = build_train_loader(dataset, sampler, cfg, device, stage.collate(cfg), cfg.seed)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure(dataset, cfg, stage, batch_size: int, workers: int, count: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stream = batches(dataset, cfg, stage, batch_size, workers, device)
    start = time.perf_counter()
    next(stream)
    first_ms = (time.perf_counter() - start) * 1000.0
    gaps = []
    started = last = time.perf_counter()
    for _ in range(count):
        next(stream)
        now = time.perf_counter()
        gaps.append((now - last) * 1000.0)
        last = now
    total = last - started
    stream.close()  # shuts the loader's workers down
    return {"first_batch_ms": round(first_ms, 2),
            "batch_ms": round(statistics.median(gaps), 2),
            "samples_per_s": round(count * batch_size / total, 2)}


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(parser, [0, 1, 2])
    parser.add_argument("--batches", type=int, default=10,
                        help="timed batches per worker count, after the first")
    parser.add_argument("--batch-size", type=int,
                        help="samples per batch (default: train.batch_size of the config)")
    parser.add_argument("--jsonl", help="also append the JSON lines to this file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.batches < 1:
        parser.error("--batches must be >= 1")
    config = args.config or DEFAULT_CONFIGS[args.stage]
    cfg = load_config(config, args.overrides)
    batch_size = args.batch_size or cfg.train.batch_size
    stage = STAGES[args.stage]()
    dataset = stage.train_dataset(cfg)
    if len(dataset) < batch_size:
        raise UserError(f"batch size {batch_size} is larger than the {len(dataset)} training "
                        "samples; give --batch-size")
    records = []
    for workers in args.workers:
        result = measure(dataset, cfg, stage, batch_size, workers, args.batches)
        records.append(emit({
            "bench": "loader", "stage": args.stage, "dataset": cfg.data.dataset,
            "samples": len(dataset), "image_size": list(cfg.model.image_size),
            "batch_size": batch_size, "workers": workers, "batches": args.batches, **result,
            "config": {"config": config, **flatten(parse_overrides(args.overrides))},
        }, args.jsonl))
    return records


if __name__ == "__main__":
    main()
