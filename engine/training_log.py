"""The record of a run as it trains: ``output_dir/train.jsonl`` (one line every
``log.every_steps`` steps) and, with ``log.tensorboard=true``, TensorBoard events in
``output_dir/tensorboard/``. ``python -m engine.report RUN_DIR`` draws it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from utils.errors import ConfigError, UserError

FILE = "train.jsonl"


def check(cfg) -> None:
    """Refuse what cannot work before the run folder is touched."""
    if cfg.log.every_steps < 1:
        raise ConfigError(f"log.every_steps={cfg.log.every_steps} must be at least 1")
    if cfg.log.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError("log.tensorboard=true needs the tensorboard package (pip install "
                              "tensorboard); or set log.tensorboard=false") from None


def keep_until(path: Path, step: int) -> None:
    """Drop the lines written after ``step`` (by a run that stopped before saving them)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_records(path: Path) -> list:
    """The records of a JSON-lines file (``train.jsonl``, ``metrics.jsonl``); [] when it does
    not exist, one clear error naming the line when one is malformed."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"{path}, line {number}: malformed JSON: {error.msg}") from None
    return records


class TrainingLog:
    """Appends one record per ``log.every_steps`` steps (main process only): step, epoch
    (fractional), total and per-term loss, learning rate per parameter group, logit scale,
    samples/s since the last record and, on CUDA, peak memory."""

    def __init__(self, cfg, output_dir: Path, resume_step: int | None, global_batch: int):
        self.every, self.global_batch = cfg.log.every_steps, global_batch
        self.path = Path(output_dir) / FILE
        if resume_step is not None:
            keep_until(self.path, resume_step)
        self.handle = self.path.open("a", encoding="utf-8")
        self.writer = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"),
                                        purge_step=resume_step)
        self.since, self.steps_since = time.perf_counter(), 0

    def due(self, step: int) -> bool:
        """Count a finished step; True when this one is to be written."""
        self.steps_since += 1
        return step % self.every == 0

    def write(self, step: int, epoch: float, loss, losses: dict, optimizer, logit_scale: float,
              device: torch.device) -> dict:
        """Write (and return) the record of ``step``."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        record = {"step": step, "epoch": round(epoch, 4), "loss": float(loss),
                  "losses": {name: float(value.detach()) for name, value in losses.items()},
                  "lr": {group.get("name", str(index)): group["lr"]
                         for index, group in enumerate(optimizer.param_groups)},
                  "logit_scale": logit_scale,
                  "samples_per_s": round(self.steps_since * self.global_batch / elapsed, 3)}
        if device.type == "cuda":
            record["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.writer is not None:
            scalars = {"loss/total": record["loss"], "logit_scale": logit_scale,
                       "samples_per_s": record["samples_per_s"],
                       **{f"loss/{name}": value for name, value in record["losses"].items()},
                       **{f"lr/{name}": value for name, value in record["lr"].items()}}
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
        self.since, self.steps_since = time.perf_counter(), 0
        return record

    def evaluation(self, step: int, rows: dict, split: str) -> None:
        """TensorBoard scalars of an evaluation ({row name: {metric: value}})."""
        if self.writer is None:
            return
        for row, metrics in rows.items():
            for metric, value in metrics.items():
                self.writer.add_scalar(f"{split}/{row.replace(' ', '/')}/{metric}", value, step)

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()
