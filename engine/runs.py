"""The runs of one training command: one per seed of ``seeds`` (``output_dir/seed_<s>/``)
and, on PKU-Sketch, one per trial of ``data.trials`` (``.../trial_<t>/``).

With ``train.resume=true`` a finished run is skipped and an unfinished one resumes where it
stopped; runs not begun yet start. Stage 2 pairs each seed with the same seed's stage-1
checkpoint when ``model.init_from`` names a multi-seed stage-1 run, or takes the one file
it names. Several seeds end with ``output_dir/results.json``: every seed's test results at
its best epoch, their mean and std (``engine.results``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path

from engine.evaluation import format_table, results_rows
from engine.results import RESULTS_FILE, best_epoch_results, combine, table_title
from engine.trainer import Trainer, prepare_output_dir
from utils import distributed
from utils.checkpoint import CHECKPOINT_NAMES, checkpoint_progress
from utils.config import config_from_command_line, to_plain
from utils.errors import ConfigError, UserError
from utils.logger import setup_logging

log = logging.getLogger(__name__)
TRIAL_DATASETS = ("pku-sketch",)  # datasets tested over several splits (trials)


@dataclasses.dataclass
class Run:
    cfg: object            # this run's config (seed, output_dir, init_from resolved)
    seed: int | None       # None unless several seeds are run
    trial: int | None      # None unless the dataset has trials

    @property
    def name(self) -> str:
        parts = [f"seed {self.seed}"] * (self.seed is not None)
        parts += [f"trial {self.trial}"] * (self.trial is not None)
        return " ".join(parts) or str(self.cfg.output_dir)


def seed_list(cfg) -> list:
    """The seeds of ``seeds`` when there are several, else [] (one run with ``seed``)."""
    seeds = cfg.seeds
    if any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise ConfigError(f"seeds={seeds!r} must be a list of integers, e.g. seeds=[1,2,3]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds!r} names a seed twice")
    return list(seeds) if len(seeds) > 1 else []


def plan_runs(cfg, stage) -> list:
    """Every run of ``cfg``, each with its own config (see the module docstring)."""
    seeds = seed_list(cfg)
    _check_layout(Path(cfg.output_dir), several=bool(seeds))
    runs = []
    for seed in seeds or [None]:
        seed_cfg = copy.deepcopy(cfg)
        if seed is not None:
            seed_cfg.output_dir = str(Path(cfg.output_dir) / f"seed_{seed}")
        if cfg.seeds:
            seed_cfg.seed, seed_cfg.seeds = (seed if seed is not None else cfg.seeds[0]), []
        if stage.name == "token" and seed_cfg.model.init_from:
            seed_cfg.model.init_from = stage1_checkpoint(seed_cfg.model.init_from, seed_cfg.seed,
                                                         label=f"seed {seed}" if seeds else "")
        trials = cfg.data.trials if cfg.data.dataset in TRIAL_DATASETS else [None]
        for trial in trials:
            run_cfg = copy.deepcopy(seed_cfg)
            if trial is not None:
                run_cfg.output_dir = str(Path(seed_cfg.output_dir) / f"trial_{trial}")
            runs.append(Run(run_cfg, seed, trial))
    if len(runs) > 1:  # resuming several runs: those not begun yet start afresh
        for run in runs:
            if not (Path(run.cfg.output_dir) / "checkpoint_last.pth").exists():
                run.cfg.train.resume = False
    return runs


def _check_layout(output_dir: Path, several: bool) -> None:
    """One folder holds one kind of run: a single seed's checkpoints, or seed folders."""
    top = [name for name in CHECKPOINT_NAMES if (output_dir / name).exists()]
    seed_dirs = sorted(path.name for path in output_dir.glob("seed_*") if path.is_dir())
    if several and top:
        raise UserError(f"{output_dir} holds a single-seed run ({', '.join(top)}); give the "
                        "seeds a new folder with output_dir=<new folder>")
    if not several and seed_dirs:
        raise UserError(f"{output_dir} holds a multi-seed run ({', '.join(seed_dirs)}); "
                        "continue it with the same seeds=[...], or use output_dir=<new folder>")


def stage1_checkpoint(init_from: str, seed: int, label: str = "") -> str:
    """The stage-1 checkpoint a stage-2 run of ``seed`` starts from: the file
    ``model.init_from`` names, the ``checkpoint_best.pth`` of the folder it names, or, in a
    multi-seed stage-1 run, the one of the same seed (``<folder>/seed_<seed>/<name>``)."""
    path = Path(init_from)
    folder, name = (path, "checkpoint_best.pth") if path.is_dir() else (path.parent, path.name)
    prefix = f"{label}: " if label else ""
    if path.is_file():
        log.info("%sstage 2 starts from %s (model.init_from)", prefix, path)
        return str(path)
    if (folder / name).is_file():
        log.info("%sstage 2 starts from %s (model.init_from's folder)", prefix, folder / name)
        return str(folder / name)
    own = folder / f"seed_{seed}" / name
    if own.is_file():
        log.info("%sstage 2 starts from %s, stage 1's seed %d (model.init_from=%s is a "
                 "multi-seed run)", prefix, own, seed, init_from)
        return str(own)
    others = sorted(int(p.parent.name.split("_")[1]) for p in folder.glob(f"seed_*/{name}")
                    if p.parent.name.split("_")[1].isdigit())
    if others:
        raise UserError(f"model.init_from={init_from}: {folder} is a multi-seed stage-1 run "
                        f"(seeds {', '.join(map(str, others))}) without seed {seed}; run stage "
                        f"2 with seeds={others} to pair the seeds, or name one checkpoint, "
                        f"e.g. model.init_from={folder / f'seed_{others[0]}' / name}")
    return init_from  # missing: loading it says so


def finished(run: Run) -> bool:
    """Whether ``run`` (being resumed) already trained every epoch."""
    progress = checkpoint_progress(Path(run.cfg.output_dir) / "checkpoint_last.pth")
    return progress is not None and progress["epoch"] >= run.cfg.train.epochs


def train_command(argv, description: str, default_config: str, stage):
    """What ``train_adapt.py`` and ``train_token.py`` do: read the config, train every run,
    leave the process group whatever happens."""
    cfg, _ = config_from_command_line(argv, description, default_config)
    stage.check_dataset(cfg)
    try:
        result = train_runs(cfg, stage)
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return result


def train_runs(cfg, stage):
    """Train every run of ``cfg`` in turn. Returns the history of the last evaluation of a
    single run, ``{trial: history}`` for trials of one seed, and for several seeds the
    results written to ``output_dir/results.json`` (on the main process; {} elsewhere)."""
    main = int(os.environ.get("RANK", 0)) == 0
    setup_logging(None, main)
    runs = plan_runs(cfg, stage)
    for run in runs:  # refuse before any run starts, not half-way through
        prepare_output_dir(run.cfg)
    histories = {}
    for run in runs:
        if run.cfg.train.resume and finished(run):
            log.info("%s: already trained (all %d epoch(s)), skipped", run.name,
                     run.cfg.train.epochs)
            histories[(run.seed, run.trial)] = {}
            continue
        if len(runs) > 1:
            log.info("%s -> %s", run.name, run.cfg.output_dir)
        histories[(run.seed, run.trial)] = Trainer(run.cfg, stage, run.trial).fit()
        setup_logging(None, main)  # the next run's lines leave this run's log.txt
    if not seed_list(cfg):
        if runs[0].trial is None:
            return histories[(None, None)]
        return {trial: history for (_, trial), history in histories.items()}
    if not main:  # the run folders may live on the main node only
        return {}
    results = collect_results(cfg, runs)
    write_results(results, Path(cfg.output_dir))
    return results


def collect_results(cfg, runs: list) -> dict:
    """``results.json`` of a multi-seed run folder from each run's best epoch."""
    results = combine([(run.seed, run.trial, best_epoch_results(Path(run.cfg.output_dir)))
                       for run in runs])
    # Training's evaluations never re-rank (test.rerank is test.py's).
    return {"dataset": cfg.data.dataset, "rerank": False, **results,
            "output_dir": str(cfg.output_dir), "config": to_plain(cfg)}


def write_results(results: dict, output_dir: Path) -> None:
    """Log the table and write ``results.json`` into ``output_dir``."""
    title = table_title(results, f"{results['dataset']} test, each seed at its best epoch")
    log.info("\n%s", format_table(results_rows(results), title))
    path = output_dir / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    log.info("results written to %s", path)
