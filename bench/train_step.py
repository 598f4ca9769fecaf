"""Benchmark one training step of stage 1 (adapt) or stage 2 (token).

The model, optimizer, loss inputs and precision are those of training: the model comes
from the stage's ``build_model``, the optimizer from ``engine.trainer.build_optimizer`` with
the stage's learning-rate groups, the loss inputs from ``stage.loss_inputs`` (epoch 1, so
stage 1's soft-target share is at its full ``loss.softlabel_ratio``), and the step runs
under the trainer's autocast (``train.amp_dtype``: fp16 with a grad scaler by default, or
bf16; fp32 on the CPU or with ``train.amp=false``) with the trainer's zero-grad,
backward, optional clipping and optimizer step. The data is a fixed batch kept in memory:
random normal images at ``model.image_size`` (the scale of normalised images) and a few
captions tokenised once before timing, so that only the model's work is measured; the
data pipeline has its own benchmark (``bench.loader``). MixGen mixes in the collate
function and so is left out here.

``--warmup`` steps run first; then ``--steps`` steps are timed one by one (the device is
synchronised around each) and the median and minimum are reported. One JSON line:
step_ms, step_ms_min, samples_per_s, peak_mem_mb (peak RSS of the process on the CPU,
peak allocated GPU memory on CUDA), params_trainable, tflop_per_step (the analytic
count of ``bench.common``: about 3x the forward matmul FLOPs of both towers),
achieved_tflops (that count over the median step time: the useful work, without the
gradient-free first pass of ``--accum-steps`` or a separate soft-target pass) and, on
CUDA, mfu (achieved over the dense bf16 peak of H100 SXM / H200 / A100; null on the CPU
and for other GPUs); executed_tflop_per_step, executed_tflops and mfu_executed count those
extra passes too (``bench.common.executed_step_flops``), so both readings are there.

``--profile`` then runs one more step (after a warm-up) under ``torch.profiler``, the batch
first copied from the host, and prints its time by category (``bench.profile``: matrix
products, attention, element-wise, copies, optimizer, data, framework, and on CUDA the
GPU's idle time) with the achieved TFLOP/s of the timed steps against a matrix-product
peak measured on this machine in the step's precision; the JSON line gains profile_ms,
profile_step_ms, matmul_peak_tflops and of_matmul_peak. ``text_length`` is the number of
tokens the text tower ran on (the batch's longest text; the FLOP count follows it).

``--reference-attention`` makes every attention of this run's model a
``bench.common.ExplicitAttention``: an explicit softmax(Q K^T / sqrt(d)) with the weights
materialised, as ``nn.MultiheadAttention(need_weights=True)`` computes it.
``loss.separate_soft_target_pass=true`` adds the extra no-grad forward pass for the soft
targets. Both together emulate the reference implementation's way of doing a stage-1
step (an emulation: the rest of the model is this project's).

Stage 2 starts from ``model.init_from`` (a stage-1 checkpoint); ``model.init_from=null``
starts from ``model.pretrained`` instead. Without OpenAI's weights, make a random CLIP of
the same shapes first (timings do not depend on the weights' values).

(a) Stage 1 at ViT-B/16, 224x224, batch 4, fp32 on the CPU::

    python -m model.random_clip --out /tmp/vitb16-random.pt --preset vit-b-16
    python -m bench.train_step --stage adapt --steps 3 --batch-size 4 device=cpu \\
        model.pretrained=/tmp/vitb16-random.pt model.image_size=[224,224]

(b) The same step done the reference implementation's way::

    python -m bench.train_step --stage adapt --steps 3 --batch-size 4 device=cpu \\
        model.pretrained=/tmp/vitb16-random.pt model.image_size=[224,224] \\
        loss.separate_soft_target_pass=true --reference-attention

``--accum-steps K`` times one step over a contrastive batch of K x ``--batch-size`` made
of K micro-batches (``train.accum_steps``: feature caching, ``engine.trainer.accumulated_step``);
compare its ``peak_mem_mb`` with a plain step of the whole batch (run each in its own
process: the CPU figure is the process's peak RSS)::

    python -m bench.train_step --stage adapt --steps 2 --batch-size 16 device=cpu \
        model.pretrained=/tmp/vitb16-random.pt
    python -m bench.train_step --stage adapt --steps 2 --batch-size 4 --accum-steps 4 \
        device=cpu model.pretrained=/tmp/vitb16-random.pt

Stage 2 likewise::

    python -m bench.train_step --stage token --steps 3 --batch-size 4 device=cpu \\
        model.pretrained=/tmp/vitb16-random.pt model.init_from=null
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import torch

from bench.common import (
    CAPTIONS,
    PeakMemory,
    emit,
    executed_step_flops,
    finite_round,
    peak_flops,
    summarize_ms,
    timed_ms,
    train_step_flops,
    use_explicit_attention,
)
from bench.profile import DATA_REGION, format_profile, matmul_peak_flops, profile_step
from engine.stages import STAGES
from engine.trainer import (
    accumulated_step,
    build_optimizer,
    compile_choice,
    seed_everything,
    text_buckets,
    train_step,
)
from model.clip import trim_to_bucket
from model.tokenizer import tokenize
from utils.config import flatten, load_config, parse_overrides
from utils.distributed import resolve_device
from utils.precision import training_dtype

DEFAULT_CONFIGS = {"adapt": "config/TriPEDES_pretrain.yaml", "token": "config/Market_finetune.yaml"}


class StandInDataset:
    """What ``AdaptStage.build_model`` asks of the training set: its number of identities."""

    def __init__(self, classes: int):
        self.classes = classes

    def num_classes(self) -> int:
        return self.classes


def make_batch(stage: str, cfg, batch_size: int, num_classes: int,
               device: torch.device, buckets: tuple = ()) -> dict:
    """A fixed in-memory batch with the keys the stage's dataset yields, its tokens cut
    on the host to ``buckets`` as the trainer cuts them."""
    generator = torch.Generator().manual_seed(cfg.seed)
    height, width = cfg.model.image_size

    def images():
        return torch.randn(batch_size, 3, height, width, generator=generator)

    batch = {"photo": images(), "sketch": images(),
             "label": torch.randint(0, num_classes, (batch_size,), generator=generator)}
    if stage == "adapt":
        captions = [CAPTIONS[index % len(CAPTIONS)] for index in range(batch_size)]
        batch["tokens"] = trim_to_bucket(tokenize(captions, cfg.model.context_length), buckets)
        if cfg.loss.ss > 0:
            batch["photo_view"] = images()
    return {key: value.to(device) for key, value in batch.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), default="adapt")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--batch-size", type=int, help="samples per step (default: "
                        "train.batch_size of the config)")
    parser.add_argument("--config", help="stage YAML file (default: "
                        f"{DEFAULT_CONFIGS['adapt']} / {DEFAULT_CONFIGS['token']})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--accum-steps", type=int, default=1,
                        help="micro-batches of --batch-size per step (feature caching)")
    parser.add_argument("--num-classes", type=int, default=1000,
                        help="identities of the stand-in training set (stage 1's id head)")
    parser.add_argument("--reference-attention", action="store_true",
                        help="explicit attention with materialised weights, as the reference")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step: time by category (bench.profile) and the "
                             "achieved TFLOP/s against a matmul peak measured here")
    parser.add_argument("--jsonl", help="also append the JSON line to this file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.accum_steps < 1:
        parser.error("--steps and --accum-steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = args.config or DEFAULT_CONFIGS[args.stage]
    cfg = load_config(config, args.overrides)
    batch_size = args.batch_size or cfg.train.batch_size
    cfg.train.batch_size = batch_size
    device = resolve_device(cfg.device)
    if args.stage == "token" and cfg.model.init_from and not Path(cfg.model.init_from).is_file():
        sys.exit(f"error: model.init_from={cfg.model.init_from} does not exist; give a stage-1 "
                 "checkpoint, or model.init_from=null to start from model.pretrained")
    seed_everything(cfg.seed)

    stage = STAGES[args.stage]()
    if args.stage == "adapt":
        model = stage.build_model(cfg, StandInDataset(args.num_classes))
    else:
        model = stage.build_model(cfg)
    model = model.to(device).train()
    if args.reference_attention:
        use_explicit_attention(model)
    optimizer = build_optimizer(model, cfg, stage.lr_scales(cfg))
    for group in optimizer.param_groups:
        group["lr"] = cfg.train.lr * group["lr_scale"]
    dtype = training_dtype(device, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    # Compiled as the trainer compiles (train.compile, train.compile_mode), the tokens cut
    # on the host as it cuts them (train.text_buckets).
    mode = compile_choice(cfg, device)
    train_model = torch.compile(model, mode=mode) if mode else model
    features = torch.compile(model.features, mode=mode) if mode else model.features
    accum = args.accum_steps
    batch = make_batch(args.stage, cfg, batch_size * accum, args.num_classes, device,
                       text_buckets(cfg, mode is not None))
    micro_batches = [{key: value[i * batch_size:(i + 1) * batch_size]
                      for key, value in batch.items()} for i in range(accum)]
    loss_inputs = stage.loss_inputs(cfg, 1, 0, 1)
    last_loss = []

    def step():
        if accum == 1:
            loss, _ = train_step(train_model, optimizer, scaler, batch, loss_inputs, device,
                                 dtype, cfg.train.grad_clip)
        else:
            loss, _ = accumulated_step(model, optimizer, scaler, micro_batches, loss_inputs,
                                       device, dtype, cfg.train.grad_clip, features=features)
        last_loss[:] = [loss]

    with PeakMemory(device) as memory:  # the steps alone, not building the model before
        for _ in range(args.warmup):
            timed_ms(step, device)
        times = [timed_ms(step, device) for _ in range(args.steps)]
    loss = float(last_loss[0])
    if not math.isfinite(loss):
        sys.exit(f"error: the loss is not finite ({loss})")

    timing = summarize_ms(times)
    contrastive_batch = batch_size * accum
    text_tokens = batch["tokens"] if args.stage == "adapt" else model.prompt_tokens
    text_length = model.clip.trim_padding(text_tokens).shape[1]
    flops = train_step_flops(args.stage, cfg, model.clip.arch, contrastive_batch, text_length)
    achieved = flops / (timing["median"] / 1000.0)
    executed = executed_step_flops(args.stage, cfg, model.clip.arch, contrastive_batch, accum,
                                   text_length)
    executed_rate = executed / (timing["median"] / 1000.0)
    peak = peak_flops(device)
    record = {
        "bench": "train_step", "stage": args.stage, "device": str(device),
        "device_name": device_name(device),
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
        "image_size": list(cfg.model.image_size), "batch_size": batch_size,
        "accum_steps": accum, "contrastive_batch": contrastive_batch,
        "steps": args.steps, "warmup": args.warmup,
        "reference_attention": args.reference_attention,
        "separate_soft_target_pass": bool(cfg.loss.separate_soft_target_pass),
        "step_ms": round(timing["median"], 2), "step_ms_min": round(timing["min"], 2),
        "samples_per_s": round(contrastive_batch / (timing["median"] / 1000.0), 3),
        "peak_mem_mb": None if memory.peak_mb is None else round(memory.peak_mb, 1),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "tflop_per_step": float(f"{flops / 1e12:.4g}"),
        "achieved_tflops": finite_round(achieved / 1e12, 4),
        "mfu": float(f"{achieved / peak:.4g}") if peak else None,
        "executed_tflop_per_step": float(f"{executed / 1e12:.4g}"),
        "executed_tflops": finite_round(executed_rate / 1e12, 4),
        "mfu_executed": float(f"{executed_rate / peak:.4g}") if peak else None,
        "loss": round(loss, 4),
        "text_length": text_length,
        "config": {"config": config, **flatten(parse_overrides(args.overrides))},
    }
    if args.profile:
        record.update(profile_record(step, batch, device, dtype, achieved))
    return emit(record, args.jsonl)


def profile_record(step, batch: dict, device: torch.device, dtype,
                   achieved_flops: float) -> dict:
    """Steps under the profiler, the batch first copied from the host (the data category),
    printed as a table with ``achieved_flops`` (FLOP/s of the timed steps) against a matmul
    peak measured in the step's precision; the fields it adds to the JSON line."""
    host_batch = {key: value.cpu() for key, value in batch.items()}
    if device.type == "cuda":
        host_batch = {key: value.pin_memory() for key, value in host_batch.items()}

    def step_with_data():
        with torch.profiler.record_function(DATA_REGION):
            moved = {key: value.to(device, non_blocking=True) for key, value in host_batch.items()}
        batch.update(moved)
        step()

    result = profile_step(step_with_data, device)
    peak = matmul_peak_flops(device, dtype or torch.float32)
    print(format_profile(result, achieved_flops, peak), flush=True)
    return {"profile_ms": {key: round(ms, 2) for key, ms in result["ms"].items()},
            "profile_step_ms": round(result["wall_ms"], 2),
            "matmul_peak_tflops": finite_round(peak / 1e12, 4),
            "of_matmul_peak": finite_round(achieved_flops / peak, 4)}


if __name__ == "__main__":
    main()
