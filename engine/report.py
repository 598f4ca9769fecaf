"""Collect ``results.json`` files into one Markdown table, or draw a run's curves.

    python -m engine.report outputs/TriPEDES_pretrain/results.json \
        outputs/Market_finetune/results.json outputs/PKU_finetune/results.json --out results.md
    python -m engine.report outputs/TriPEDES_pretrain     # -> outputs/TriPEDES_pretrain/curves.png

A results file of test.py with ``test.rerank=true`` says so in its rows' label (re-ranked,
k1, k2, lambda).

A run folder gives ``curves.png``: the loss terms and the learning rates over the steps
(``train.jsonl``), and R1 and mAP of every evaluation over the epochs (``metrics.jsonl``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.evaluation import METRICS, results_rows
from engine.results import describe_rerank, describe_runs, read_results, rerank_of, spread_rows
from engine.training_log import FILE as TRAIN_LOG
from engine.training_log import read_records
from engine.visualize import curve_panel, stack
from utils.errors import UserError, exit_on_user_error


def markdown_table(named_results: list) -> str:
    """[(label, results dict)] -> Markdown table, one row per dataset and task; ``± std``
    wherever the results are the mean of several seeds or trials."""
    lines = ["| run | task | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for label, results in named_results:
        several = describe_runs(results)
        spread = spread_rows(results) if several else {}
        if several:
            label += f", mean ± std of {several}"
        for task, metrics in results_rows(results).items():
            cells = []
            for metric in METRICS:
                cell = f"{metrics[metric]:.2f}"
                if task in spread:
                    cell += f" ± {spread[task][metric]:.2f}"
                cells.append(cell)
            lines.append(f"| {label} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw_curves(run_dir: Path, out: Path | None = None) -> Path:
    """``curves.png`` of a run folder (see the module docstring); returns its path."""
    steps = read_records(run_dir / TRAIN_LOG)
    evaluations = read_records(run_dir / "metrics.jsonl")
    if not steps and not evaluations:
        raise UserError(f"{run_dir} holds neither {TRAIN_LOG} nor metrics.jsonl: not a run "
                        "folder, or one that has not logged yet")
    panels = []
    if steps:
        xs = [record["step"] for record in steps]
        names = ["loss"] + sorted({name for record in steps for name in record["losses"]})
        losses = {name: (xs, [record["loss"] if name == "loss" else record["losses"].get(name)
                              for record in steps]) for name in names}
        panels.append(curve_panel(losses, f"{run_dir.name}: training loss", "step"))
        groups = sorted({name for record in steps for name in record["lr"]})
        rates = {name: (xs, [record["lr"].get(name) for record in steps]) for name in groups}
        panels.append(curve_panel(rates, "learning rate", "step"))
    if evaluations:
        epochs = [record["epoch"] for record in evaluations]
        rows = [results_rows(record["test"]) for record in evaluations]
        for metric in ("R1", "mAP"):
            series = {name: (epochs, [row.get(name, {}).get(metric) for row in rows])
                      for name in rows[-1]}
            panels.append(curve_panel(series, f"test {metric} (%)", "epoch"))
    out = out or run_dir / "curves.png"
    stack(panels).save(out)
    return out


@exit_on_user_error
def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files, or one run folder")
    parser.add_argument("--out", help="Markdown file to write (default: print only); for a "
                        "run folder, the picture (default: <run folder>/curves.png)")
    args = parser.parse_args(argv)
    if len(args.results) == 1 and Path(args.results[0]).is_dir():
        out = draw_curves(Path(args.results[0]), Path(args.out) if args.out else None)
        print(f"curves written to {out}")
        return str(out)
    named = []
    for name in args.results:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"results file not found: {path}")
        results = read_results(path)
        rerank = f", {describe_rerank(results)}" if rerank_of(results) else ""
        named.append((f"{results.get('dataset', '?')} ({path.parent.name}{rerank})", results))
    table = markdown_table(named)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return table


if __name__ == "__main__":
    main()
