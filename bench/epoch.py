"""Benchmark the training loop end to end: does the data pipeline keep up with the step?

Everything is the trainer's own (``engine.trainer.Trainer``, built from a stage config as
``train_adapt.py`` / ``train_token.py`` build it, into a temporary run folder): the
dataset with its image reading, augmentation and tokenisation, the ``DataLoader`` with its
sampler and pinned memory, the copy to the device and the text-length buckets
(``micro_batch_groups``), and the optimizer step with its precision, compilation and
accumulation (``train_on``). For each count in ``--workers`` three figures, each after
``--warmup`` unmeasured steps (compilation, worker start):

* ``loader_samples_per_s``: the micro-batches alone, on the device;
* ``step_samples_per_s``: the step alone, on one group of micro-batches used again;
* ``both_samples_per_s``: the loader feeding the step, as an epoch runs (without the
  log lines), and ``both_over_step``, its share of the step alone (1.0: the loader
  costs nothing).

A figure is over ``--steps`` optimizer steps of the contrastive batch. Give the data a
realistic size with the synthetic generator's ``--scale``::

    python -m datasets.synthetic --out data/scaled --scale 5 \\
        --datasets cuhk-pedes icfg-pedes rstpreid
    python -m bench.epoch --stage adapt --workers 4,8,16 --steps 30 data.root=data/scaled \\
        model.pretrained=/tmp/vitb16.pt model.image_size=[224,224] train.batch_size=60
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch

from bench.common import emit, sync
from bench.loader import DEFAULT_CONFIGS, add_pipeline_arguments
from engine.stages import STAGES
from engine.trainer import Trainer
from utils.config import flatten, load_config, parse_overrides


def groups_forever(trainer: Trainer):
    """The trainer's groups of micro-batches, epoch after epoch."""
    for epoch in itertools.count():
        trainer.sampler.set_epoch(epoch)
        yield from trainer.micro_batch_groups(trainer.loader)


def samples_per_s(run, steps: int, warmup: int, samples: int, device) -> float:
    """``samples`` x ``steps`` / seconds of ``steps`` calls of ``run()`` after ``warmup``."""
    for _ in range(warmup):
        run()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    return samples * steps / (time.perf_counter() - start)


def measure(trainer: Trainer, steps: int, warmup: int) -> dict:
    device, cfg = trainer.device, trainer.cfg
    samples = trainer.global_batch
    inputs = trainer.stage.loss_inputs(cfg, 0, 0, trainer.steps_per_epoch)
    trainer.train_model.train()

    groups = groups_forever(trainer)
    loader = samples_per_s(lambda: next(groups), steps, warmup, samples, device)
    group = next(groups)
    step = samples_per_s(lambda: trainer.train_on(group, inputs), steps, warmup, samples,
                         device)
    both = samples_per_s(lambda: trainer.train_on(next(groups), inputs), steps, warmup,
                         samples, device)
    groups.close()  # shuts the loader's workers down
    return {"loader_samples_per_s": round(loader, 2), "step_samples_per_s": round(step, 2),
            "both_samples_per_s": round(both, 2), "both_over_step": round(both / step, 3)}


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(parser, [0, 2])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per figure")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps before each")
    parser.add_argument("--jsonl", help="also append the JSON lines to this file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    config = args.config or DEFAULT_CONFIGS[args.stage]
    records = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = load_config(config, [*args.overrides, f"data.num_workers={workers}",
                                       f"output_dir={run_dir}", "train.resume=false"])
            trainer = Trainer(cfg, STAGES[args.stage]())
            result = measure(trainer, args.steps, args.warmup)
        records.append(emit({
            "bench": "epoch", "stage": args.stage, "dataset": cfg.data.dataset,
            "device": str(trainer.device), "samples": len(trainer.train_set),
            "image_size": list(cfg.model.image_size), "batch_size": cfg.train.batch_size,
            "accum_steps": trainer.accum_steps, "contrastive_batch": trainer.global_batch,
            "precision": {None: "fp32", torch.bfloat16: "bf16",
                          torch.float16: "fp16"}[trainer.amp_dtype],
            "compiled": trainer.compile_mode, "workers": workers, "steps": args.steps,
            **result, "config": {"config": config, **flatten(parse_overrides(args.overrides))},
        }, args.jsonl))
    return records


if __name__ == "__main__":
    main()
