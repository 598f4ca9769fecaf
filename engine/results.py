"""Results of several runs of one evaluation (seeds, PKU-Sketch trials) as one results dict:
the mean of every metric where a single run has it, the sample standard deviation beside it
(``"std"``), and every run below (``"trials"``, ``"seeds"``).

    {"tasks": {task: {metric: value}}, "rounds": [...]}                 one run
    {"datasets": {name: {"tasks": ...}}}                                one run, Tri-PEDES
    {"tasks": mean, "std": std, "trials": [{"trial": t, "tasks": ...}]}  PKU-Sketch trials
    {"tasks": mean, "std": std, "seeds": [{"seed": s, "tasks": ...}]}    several seeds

With several seeds of PKU-Sketch each seed holds the mean and std over its trials and its
``"trials"``; the top level holds the mean over seeds of those means and their std over
seeds. Tri-PEDES keeps ``"tasks"`` and ``"std"`` inside each of its ``"datasets"``.

A ``results.json`` also says how it ranked: ``"rerank": false``, or test.py's
``test.rerank=true`` as ``{"k1": 20, "k2": 6, "lambda": 0.3}`` (k-reciprocal re-ranking).
Training's results (each seed at its best epoch) are never re-ranked; a file without the
key is from before it was recorded, and was not re-ranked either.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from engine.evaluation import METRICS
from engine.training_log import read_records
from utils.checkpoint import checkpoint_progress
from utils.errors import UserError

RESULTS_FILE = "results.json"
# The keys of a run's results that hold its numbers (the rest describe it).
RESULT_KEYS = ("tasks", "std", "datasets", "rounds", "trials", "seeds")


def numbers(results: dict) -> dict:
    """The keys of ``results`` that hold its numbers."""
    return {key: results[key] for key in RESULT_KEYS if key in results}


def summarize(runs: Sequence[dict]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one run) of every metric over
    ``runs`` (results of the same evaluation), in their shape; rounds of feedback averaged."""
    first = runs[0]
    if "datasets" in first:
        return {"datasets": {name: summarize([run["datasets"][name] for run in runs])
                             for name in first["datasets"]}}
    tasks, spread = {}, {}
    for task in first["tasks"]:
        values = {metric: [run["tasks"][task][metric] for run in runs] for metric in METRICS}
        tasks[task] = {metric: statistics.fmean(v) for metric, v in values.items()}
        spread[task] = {metric: statistics.stdev(v) if len(v) > 1 else 0.0
                        for metric, v in values.items()}
    summary = {"tasks": tasks, "std": spread}
    if all("rounds" in run for run in runs):
        summary["rounds"] = [
            {"round": rounds[0]["round"],
             **{metric: statistics.fmean(r[metric] for r in rounds) for metric in METRICS}}
            for rounds in zip(*(run["rounds"] for run in runs))]
    return summary


def combine(runs: Sequence[tuple]) -> dict:
    """[(seed or None, trial or None, results)] -> one results dict (module docstring).
    A single run without seed or trial is returned as it is."""
    if len(runs) == 1 and runs[0][0] is None and runs[0][1] is None:
        return numbers(runs[0][2])

    def over_trials(entries) -> dict:
        if entries[0][1] is None:
            return numbers(entries[0][2])
        trials = [{"trial": trial, **numbers(result)} for _, trial, result in entries]
        return {**summarize(trials), "trials": trials}

    seeds = list(dict.fromkeys(seed for seed, _, _ in runs))
    if seeds == [None]:
        return over_trials(list(runs))
    blocks = [{"seed": seed, **over_trials([run for run in runs if run[0] == seed])}
              for seed in seeds]
    return {**summarize(blocks), "seeds": blocks}


def spread_rows(results: dict) -> dict:
    """``results_rows``' row names -> the std of each metric, for rows that have one."""
    if "datasets" in results:
        return {f"{name} {task}": block["std"][task]
                for name, block in results["datasets"].items() for task in block.get("std", {})}
    return dict(results.get("std", {}))


def run_counts(results: dict) -> tuple:
    """(seeds, trials per seed) behind ``results``: (1, 1) for one run."""
    seeds = results.get("seeds")
    first = seeds[0] if seeds else results
    return (len(seeds) if seeds else 1), len(first.get("trials", [None]))


def describe_runs(results: dict) -> str:
    """'3 seeds x 10 trials', '10 trials', '3 seeds', or '' for one run."""
    seeds, trials = run_counts(results)
    parts = [f"{seeds} seeds"] * (seeds > 1) + [f"{trials} trials"] * (trials > 1)
    return " × ".join(parts)


def rerank_of(results: dict) -> dict | None:
    """The k-reciprocal re-ranking behind ``results`` (``{"k1", "k2", "lambda"}``), or None
    for plain ranking (``"rerank": false``, or a file from before test.py recorded it)."""
    return results.get("rerank") or None


def describe_rerank(results: dict) -> str:
    """'re-ranked (k1=20, k2=6, lambda=0.3)' or 'not re-ranked'."""
    rerank = rerank_of(results)
    if rerank is None:
        return "not re-ranked"
    return f"re-ranked (k1={rerank['k1']}, k2={rerank['k2']}, lambda={rerank['lambda']:g})"


def read_results(path: str | Path) -> dict:
    """A ``results.json``, given as the file or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"results not found: {path} (test.py --checkpoint <run folder> writes "
                        "it)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(results, dict) or not ("tasks" in results or "datasets" in results):
        raise UserError(f"{path} holds no results of test.py (no 'tasks' or 'datasets')")
    return results


def best_epoch_results(run_dir: Path) -> dict:
    """The test results of the epoch whose model ``checkpoint_best.pth`` holds, as the run
    recorded them in ``metrics.jsonl`` (the last record of that epoch: a resumed run may
    have evaluated it twice, to the same numbers)."""
    progress = checkpoint_progress(run_dir / "checkpoint_best.pth")
    if progress is None:
        raise UserError(f"{run_dir / 'checkpoint_best.pth'} is missing or unreadable")
    metrics = run_dir / "metrics.jsonl"
    chosen = [record for record in read_records(metrics)
              if record.get("epoch") == progress["epoch"]]
    if not chosen:
        raise UserError(f"{metrics} has no evaluation of epoch {progress['epoch']}, the epoch "
                        f"of {run_dir / 'checkpoint_best.pth'}")
    return chosen[-1]["test"]


def table_title(results: dict, what: str) -> str:
    """``what`` and, for several runs, what the numbers are the mean of."""
    runs = describe_runs(results)
    return f"{what} (mean of {runs})" if runs else what

