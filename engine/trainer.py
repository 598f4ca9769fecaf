"""The one training loop of both stages: devices, processes, precision, schedule, evaluation,
checkpoints and resume. What differs per stage lives in a ``Stage`` (utils/stages.py)."""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.sampler import EpochSampler
from engine import training_log
from engine.evaluation import format_table, results_rows
from model.clip import trim_to_bucket
from utils import distributed
from utils.checkpoint import (
    CHECKPOINT_NAMES,
    load_checkpoint,
    random_states,
    restore_random_states,
    save_atomic,
)
from utils.config import save_config, to_plain
from utils.errors import ConfigError, UserError
from utils.logger import setup_logging
from utils.precision import autocast, full_float32, training_dtype
from utils.schedule import learning_rate

log = logging.getLogger(__name__)
MAX_SKIPPED_STEPS = 5  # consecutive non-finite fp16 steps the grad scaler may skip
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss is no longer finite)."""


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def prepare_output_dir(cfg) -> Path:
    """Create the run folder; refuse to start a new run over an old run's checkpoints."""
    output_dir = Path(cfg.output_dir)
    existing = [name for name in CHECKPOINT_NAMES if (output_dir / name).exists()]
    if existing and not cfg.train.resume:
        raise UserError(f"{output_dir} already holds {', '.join(existing)}; continue that run "
                        f"with train.resume=true, or start a new one with output_dir=<new folder>")
    if cfg.train.resume and not (output_dir / "checkpoint_last.pth").exists():
        raise UserError(f"train.resume=true but {output_dir / 'checkpoint_last.pth'} "
                        f"does not exist")
    return output_dir


def build_optimizer(model: torch.nn.Module, cfg, lr_scales: dict | None = None):
    """AdamW; no weight decay on 1-D parameters (biases, norms, the class embedding) or the
    logit scale. ``lr_scales`` maps a parameter-name prefix to a learning-rate multiplier.

    The fused kernel (one pass over all parameters) wherever torch has it for the
    parameters' device (CUDA, and the CPU since torch 2.4), else the foreach one.
    """
    lr_scales = lr_scales or {}
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        prefix = next((prefix for prefix in lr_scales if name.startswith(prefix)), None)
        scale = lr_scales[prefix] if prefix else 1.0
        decay = parameter.ndim >= 2
        key = (scale, decay)
        group_name = (prefix or "model.").rstrip(".") + ("" if decay else "/no_decay")
        groups.setdefault(key, {"params": [], "lr_scale": scale, "name": group_name,
                                "weight_decay": cfg.train.weight_decay if decay else 0.0})
        groups[key]["params"].append(parameter)
    settings = {"lr": cfg.train.lr, "betas": tuple(cfg.train.betas), "eps": cfg.train.eps}
    try:
        return torch.optim.AdamW(list(groups.values()), fused=True, **settings)
    except RuntimeError as error:  # a device (or torch version) without the fused kernel
        log.info("fused AdamW is not available here (%s); using the foreach implementation",
                 str(error).splitlines()[0][:120])
        return torch.optim.AdamW(list(groups.values()), foreach=True, **settings)


def load_optimizer_state(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` that keeps the kernel chosen by ``build_optimizer``:
    a checkpoint's groups carry the fused/foreach flags of the run that saved it, and torch
    places the loaded state (the step counters) by those flags, so they are set first."""
    kernels = [{key: group.get(key) for key in ("fused", "foreach")}
               for group in optimizer.param_groups]
    if len(state["param_groups"]) == len(kernels):  # else torch names the mismatch
        state = {**state, "param_groups": [{**saved, **kernel} for saved, kernel
                                           in zip(state["param_groups"], kernels)]}
    optimizer.load_state_dict(state)


def to_cpu(value):
    """Tensors anywhere in nested dicts/lists/tuples, copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def accumulation_steps(cfg, world_size: int) -> int:
    """Micro-batches per optimizer step: from ``train.global_batch`` (the contrastive batch
    over all processes) when set, else ``train.accum_steps``."""
    accum = cfg.train.accum_steps
    if accum < 1:
        raise ConfigError(f"train.accum_steps={accum} must be at least 1")
    target = cfg.train.global_batch
    if not target:
        return accum
    per_micro_batch = cfg.train.batch_size * world_size
    if target < 0 or target % per_micro_batch:
        raise ConfigError(f"train.global_batch={target} is not a multiple of train.batch_size "
                          f"x processes = {cfg.train.batch_size} x {world_size}; change "
                          "train.batch_size (or train.global_batch=0 to turn it off)")
    derived = target // per_micro_batch
    if accum not in (1, derived):
        raise ConfigError(f"train.accum_steps={accum} contradicts train.global_batch={target} "
                          f"({derived} steps of {cfg.train.batch_size} x {world_size}); set one")
    return derived


def _optimizer_step(optimizer, scaler, grad_clip: float) -> None:
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def train_step(train_model, optimizer, scaler, batch: dict, loss_inputs: dict, device,
               dtype, grad_clip: float = 0.0) -> tuple:
    """One optimizer step: forward under autocast, sum of the ``*_loss`` terms, scaled
    backward, optional clipping, step. Returns (total loss, dict of loss terms)."""
    with autocast(device, dtype):
        losses = train_model(batch, **loss_inputs)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    _optimizer_step(optimizer, scaler, grad_clip)
    return loss.detach(), losses


def _random_state(device: torch.device):
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_random_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def accumulated_step(model, optimizer, scaler, micro_batches: list, loss_inputs: dict, device,
                     dtype, grad_clip: float = 0.0, features=None) -> tuple:
    """One optimizer step whose contrastive batch is all of ``micro_batches``, with the
    activation memory of one (feature caching, after Gao et al., "Scaling Deep Contrastive
    Learning Batch Size under Memory Limited Setup", 2021):

    1. every micro-batch's features, without a graph, keeping the random state each began
       with (dropout);
    2. the losses over all those features, backward to the features only;
    3. each micro-batch again, from its kept random state (so dropout draws the same
       masks), backward from its rows of the feature gradient.

    The gradient equals that of one step on the whole batch. ``model`` has
    ``features(batch)`` and ``losses(feats, labels, **loss_inputs)``; with several
    processes, the gradients are averaged here (give the bare model, not DDP).
    ``features``: the callable that computes them (default ``model.features``; the trainer
    gives a compiled one). Returns (total loss, dict of loss terms).
    """
    features = features or model.features
    states, cached = [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(_random_state(device))
            with autocast(device, dtype):
                cached.append(features(batch))
    after_first_pass = _random_state(device)
    leaves = {key: torch.cat([feats[key] for feats in cached]).requires_grad_()
              for key in cached[0]}
    labels = torch.cat([batch["label"] for batch in micro_batches])
    with autocast(device, dtype):
        losses = model.losses(leaves, labels, **loss_inputs)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    grads = {key: leaf.grad for key, leaf in leaves.items() if leaf.grad is not None}
    start = 0
    for batch, state in zip(micro_batches, states):
        stop = start + batch["label"].shape[0]
        _set_random_state(state, device)
        with autocast(device, dtype):
            feats = features(batch)
        torch.autograd.backward([feats[key] for key in grads],
                                [grad[start:stop] for grad in grads.values()])
        start = stop
    _set_random_state(after_first_pass, device)
    distributed.average_gradients(model.parameters())
    _optimizer_step(optimizer, scaler, grad_clip)
    return loss.detach(), losses


class LossWatch:
    """Non-finite losses, counted on the device step after step and read on the host only
    when ``check`` is called (at a log line, a save, the end of an epoch), so that a step
    never waits for the device to say whether its loss was finite.

    fp16 with a grad scaler may skip a few steps in a row (``allowed`` consecutive
    non-finite losses); any other precision none.
    """

    def __init__(self, device: torch.device, allowed: int):
        self.allowed = allowed
        self.streak = torch.zeros((), dtype=torch.int64, device=device)
        self.longest = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_losses = None  # the terms of the last non-finite step (on the device)

    def update(self, loss: torch.Tensor, losses: dict) -> None:
        bad = ~torch.isfinite(loss)
        self.streak = (self.streak + 1) * bad
        self.longest = torch.maximum(self.longest, self.streak)
        terms = {name: value.detach().float() for name, value in losses.items()}
        self.bad_losses = terms if self.bad_losses is None else {
            name: torch.where(bad, terms[name], self.bad_losses[name]) for name in terms}

    def check(self, step: int, epoch: int, last_good: Path) -> None:
        """TrainingError when too many steps in a row had a non-finite loss since the last
        check (one host read)."""
        longest = int(self.longest)
        if longest > self.allowed:
            terms = ", ".join(f"{name}={float(value):.4g}"
                              for name, value in self.bad_losses.items())
            raise TrainingError(
                f"the loss is not finite ({longest} step(s) in a row by epoch {epoch + 1} "
                f"step {step}; {terms}); stopped, {last_good} holds the last good state (try "
                "a lower train.lr)")
        self.longest.copy_(self.streak)  # a run of bad steps goes on across checks


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run the step here (None when it can)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton, which torch.compile needs on CUDA, is not installed"
    return None


def compile_choice(cfg, device: torch.device) -> str | None:
    """The ``torch.compile`` mode the step runs under, or None for eager: ``train.compile``
    true, false or null (auto: on CUDA), unless it cannot be used here, which the log says
    in one line."""
    wanted = cfg.train.compile
    if wanted not in (True, False, None):
        raise ConfigError(f"train.compile={wanted!r} is not one of true, false, null (auto: "
                          "on CUDA)")
    if wanted is False or (wanted is None and device.type != "cuda"):
        return None
    if cfg.train.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode={cfg.train.compile_mode!r} is not one of "
                          f"{', '.join(COMPILE_MODES)}")
    reason = compile_unavailable(device)
    if reason is not None:
        log.warning("train.compile: running eagerly (%s)", reason)
        return None
    return cfg.train.compile_mode


def text_buckets(cfg, compiled: bool) -> tuple:
    """The lengths a training batch's tokens are cut to on the host: ``train.text_buckets``,
    or (null) a few fixed lengths when the step is compiled and the exact length of each
    batch's longest text otherwise."""
    buckets = cfg.train.text_buckets
    context = cfg.model.context_length
    if buckets is None:
        return tuple(sorted({length for length in (16, 32, 48, 64) if length < context}
                            | {context})) if compiled else ()
    if not isinstance(buckets, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= context
            for b in buckets):
        raise ConfigError(f"train.text_buckets={buckets!r} must be null or a list of lengths "
                          f"from 2 to model.context_length ({context})")
    return tuple(sorted(set(buckets)))


def build_train_loader(dataset, sampler, cfg, device: torch.device, collate=None,
                       seed: int = 0) -> DataLoader:
    """The training DataLoader: batches of ``train.batch_size`` in ``sampler``'s order
    (``sampler.set_epoch`` before each pass). Workers persist across epochs; the loader's
    own generator keeps worker seeding off the global random stream (exact resume)."""
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                      num_workers=cfg.data.num_workers, drop_last=True,
                      pin_memory=device.type == "cuda", collate_fn=collate,
                      persistent_workers=cfg.data.num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


class PreemptionGuard:
    """Turns SIGTERM/SIGINT into a flag checked between steps, so the loop can save first."""

    def __init__(self):
        self.requested = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs ``stage`` with ``cfg``: train, evaluate after epochs, keep last and best."""

    def __init__(self, cfg, stage, trial: int | None = None):
        self.cfg, self.stage, self.trial = cfg, stage, trial
        self.device = distributed.init_distributed(cfg.device)
        self.main = distributed.is_main()
        self.output_dir = prepare_output_dir(cfg)
        training_log.check(cfg)
        setup_logging(None, self.main)
        seed_everything(cfg.seed + distributed.rank())

        # Everything that can fail on bad input happens before the run folder is touched.
        self.train_set = stage.train_dataset(cfg, trial)
        stage.check_selection(cfg)
        self.select_on = stage.selection_split(cfg, trial)
        for split in {"test", self.select_on}:
            stage.eval_sets(cfg, split, trial)
        self.accum_steps = accumulation_steps(cfg, distributed.world_size())
        self.amp_dtype = training_dtype(self.device, cfg)
        self.model = stage.build_model(cfg, self.train_set).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg, stage.lr_scales(cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.sampler = EpochSampler(len(self.train_set), cfg.train.batch_size, cfg.seed,
                                    distributed.rank(), distributed.world_size(),
                                    self.accum_steps)
        self.global_batch = cfg.train.batch_size * distributed.world_size() * self.accum_steps
        if self.sampler.batches_per_epoch == 0:
            raise UserError(f"the contrastive batch of {self.global_batch} (train.batch_size="
                            f"{cfg.train.batch_size} x {distributed.world_size()} process(es) x "
                            f"{self.accum_steps} accumulation step(s)) is larger than the "
                            f"{len(self.train_set)} training samples; lower train.batch_size")
        self.loader = build_train_loader(self.train_set, self.sampler, cfg, self.device,
                                         stage.collate(cfg), seed=cfg.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch // self.accum_steps
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = round(cfg.train.warmup_epochs * self.steps_per_epoch)
        self.epoch, self.step, self.best_score = 0, 0, -math.inf
        if cfg.train.resume:
            self._resume()

        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if not cfg.train.resume:
                save_config(cfg, self.output_dir / "config.yaml")
        distributed.barrier()
        setup_logging(self.output_dir, self.main)
        self.training_log = (training_log.TrainingLog(cfg, self.output_dir, self.step,
                                                      self.global_batch) if self.main else None)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        log.info("%s: %d training samples, %s parameters trainable, %s frozen, device %s, "
                 "%d process(es)", stage.title, len(self.train_set), f"{trainable:,}",
                 f"{frozen:,}", self.device, distributed.world_size())
        log.info("contrastive batch %d = %d per process x %d process(es) x %d accumulation "
                 "step(s); %d optimizer steps per epoch; precision %s", self.global_batch,
                 cfg.train.batch_size, distributed.world_size(), self.accum_steps,
                 self.steps_per_epoch, "float32" if self.amp_dtype is None
                 else f"{self.amp_dtype} autocast")
        self.train_model = self.model
        if distributed.world_size() > 1:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eager_model = self.train_model
        self.features = self.model.features  # the accumulation path's passes
        self.compile_mode = compile_choice(cfg, self.device)
        if self.compile_mode is not None:
            self.train_model = torch.compile(self.train_model, mode=self.compile_mode)
            self.features = torch.compile(self.model.features, mode=self.compile_mode)
            log.info("the step is compiled (torch.compile, mode %s)", self.compile_mode)
        self.compile_checked = self.compile_mode is None  # the first step tells
        self.text_buckets = text_buckets(cfg, self.compile_mode is not None)
        self.loss_watch = LossWatch(self.device, MAX_SKIPPED_STEPS
                                    if self.amp_dtype == torch.float16 else 0)

    # ----------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        cfg = self.cfg
        history = None
        try:
            with PreemptionGuard() as guard:
                while self.epoch < cfg.train.epochs:
                    finished = self._train_epoch(guard)
                    if not finished:
                        self._save("checkpoint_last.pth")
                        log.info("stopped by %s at epoch %d step %d; checkpoint saved, resume "
                                 "with train.resume=true", guard.requested, self.epoch + 1,
                                 self.step)
                        raise SystemExit(143 if guard.requested == "SIGTERM" else 130)
                    self.epoch += 1
                    last = self.epoch == cfg.train.epochs
                    if last or self.epoch % cfg.train.eval_every == 0:
                        history = self._evaluate_and_select()
                    self._save("checkpoint_last.pth")
        finally:
            if self.training_log is not None:
                self.training_log.close()
        return history or {}

    def micro_batch_groups(self, loader):
        """The loader's micro-batches on the device, ``accum_steps`` at a time."""
        group = []
        for batch in loader:
            if "tokens" in batch:  # cut on the host: the step reads no length back
                batch["tokens"] = trim_to_bucket(batch["tokens"], self.text_buckets)
            group.append({key: value.to(self.device, non_blocking=True)
                          for key, value in batch.items()})
            if len(group) == self.accum_steps:
                yield group
                group = []

    def train_on(self, group: list, loss_inputs: dict) -> tuple:
        if self.compile_checked:
            return self._run_step(group, loss_inputs)
        # The first compiled step compiles; should that fail, the run goes on eagerly.
        state = _random_state(self.device)
        try:
            result = self._run_step(group, loss_inputs)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            log.warning("train.compile: the compiled step failed (%s: %s); running eagerly",
                        type(error).__name__, first_line[:200])
            self.train_model, self.features = self.eager_model, self.model.features
            self.compile_mode = None
            self.optimizer.zero_grad(set_to_none=True)
            _set_random_state(state, self.device)
            result = self._run_step(group, loss_inputs)
        self.compile_checked = True
        return result

    def _run_step(self, group: list, loss_inputs: dict) -> tuple:
        if self.accum_steps == 1:
            return train_step(self.train_model, self.optimizer, self.scaler, group[0],
                              loss_inputs, self.device, self.amp_dtype, self.cfg.train.grad_clip)
        return accumulated_step(self.model, self.optimizer, self.scaler, group, loss_inputs,
                                self.device, self.amp_dtype, self.cfg.train.grad_clip,
                                features=self.features)

    def _train_epoch(self, guard: PreemptionGuard) -> bool:
        cfg = self.cfg
        start_step = self.step - self.epoch * self.steps_per_epoch
        self.sampler.set_epoch(self.epoch, start_step * self.accum_steps)
        self.train_model.train()
        progress = tqdm(self.micro_batch_groups(self.loader),
                        desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", initial=start_step,
                        total=self.steps_per_epoch, disable=not self.main, dynamic_ncols=True)
        last_good = self.output_dir / "checkpoint_last.pth"
        for group in progress:
            lr = learning_rate(self.step, self.total_steps, self.warmup_steps, cfg.train.lr,
                               cfg.train.lr_start, cfg.train.lr_end)
            for param_group in self.optimizer.param_groups:
                param_group["lr"] = lr * param_group["lr_scale"]
            step_in_epoch = self.step - self.epoch * self.steps_per_epoch
            loss, losses = self.train_on(group, self.stage.loss_inputs(
                cfg, self.epoch, step_in_epoch, self.steps_per_epoch))
            # Nothing is read back from the device here: the loss is checked and shown
            # at log lines, saves and the end of the epoch (fp16: the grad scaler skips
            # a non-finite step; a few in a row are fine).
            self.loss_watch.update(loss, losses)
            self.step += 1
            save_now = cfg.train.save_every_steps and self.step % cfg.train.save_every_steps == 0 \
                and self.step % self.steps_per_epoch
            if self.step % cfg.log.every_steps == 0 or save_now or guard.requested \
                    or self.step % self.steps_per_epoch == 0:
                self.loss_watch.check(self.step, self.epoch, last_good)
            if self.main and self.training_log.due(self.step):
                progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
                self.training_log.write(
                    self.step, self.step / self.steps_per_epoch, loss.item(), losses,
                    self.optimizer, float(self.model.logit_scale().detach()), self.device)
                terms = " ".join(f"{k} {v.item():.4f}" for k, v in losses.items())
                log.info("epoch %d step %d lr %.3e loss %.4f (%s)", self.epoch + 1, self.step,
                         lr, loss.item(), terms)
            if save_now:
                self._save("checkpoint_last.pth")
            if guard.requested:
                return False
        return True

    # ------------------------------------------------------------------------ evaluate
    def _evaluate_and_select(self) -> dict:
        cfg, stage = self.cfg, self.stage
        record = {"epoch": self.epoch, "step": self.step}
        if self.main:
            with full_float32():
                score = self._evaluate(record)
            if score > self.best_score:
                self.best_score = score
                self._save("checkpoint_best.pth")
                log.info("new best %s %.2f on %s: saved checkpoint_best.pth",
                         stage.selection_name(cfg), score, self.select_on)
        distributed.barrier()
        return record

    def _evaluate(self, record: dict) -> float:
        """Evaluate on the test split (and the selection split), log, append to
        metrics.jsonl; return the selection score."""
        cfg, stage = self.cfg, self.stage
        model = self.model.eval()
        started = time.time()
        select_on = self.select_on
        record["test"] = stage.evaluate(model, cfg, "test", self.device, self.trial)
        self.training_log.evaluation(self.step, results_rows(record["test"]), "test")
        log.info("\n%s", format_table(results_rows(record["test"]),
                                      f"epoch {self.epoch} test"))
        if select_on != "test":
            record[select_on] = stage.evaluate(model, cfg, select_on, self.device, self.trial)
            log.info("\n%s", format_table(results_rows(record[select_on]),
                                          f"epoch {self.epoch} {select_on}"))
        score = stage.selection_score(record[select_on], cfg)
        record["select"] = {"split": select_on, "score": score}
        record["eval_seconds"] = round(time.time() - started, 1)
        with (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return score

    # ---------------------------------------------------------------------- checkpoints
    def _save(self, name: str) -> None:
        if not self.main:
            return
        # On the CPU, so that the file loads on a machine without a GPU.
        state = {"stage": self.stage.name, "model": to_cpu(self.model.state_dict()),
                 "config": to_plain(self.cfg), "epoch": self.epoch, "step": self.step,
                 "trial": self.trial, "optimizer": to_cpu(self.optimizer.state_dict()),
                 "scaler": self.scaler.state_dict(), "best_score": self.best_score,
                 "rng": random_states()}
        save_atomic(state, self.output_dir / name)

    def _resume(self) -> None:
        path = self.output_dir / "checkpoint_last.pth"
        checkpoint = load_checkpoint(path, self.stage.name)
        self.stage.load_model_state(self.model, checkpoint["model"], str(path))
        load_optimizer_state(self.optimizer, checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.best_score = checkpoint["best_score"]
        if distributed.world_size() == 1:
            restore_random_states(checkpoint["rng"])
        log.info("resumed from %s at epoch %d, step %d (best so far %.2f)", path,
                 self.epoch + 1, self.step, self.best_score)
