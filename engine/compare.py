"""Two runs side by side: every metric of A and of B, the difference B - A, and, where both
are means over several seeds or trials, whether the difference exceeds their spread.

    python -m engine.compare outputs/baseline outputs/ablation
    python -m engine.compare A/results.json B/results.json --out compare.md --factor 2

Each of A and B is a folder holding test.py's ``results.json``, or that file. A difference
counts as beyond the spread when |B - A| > factor x the larger of the two standard deviations
(factor 2 by default); with a single run on either side there is no spread to judge by, and
the column says so. Where one of the two was k-reciprocal re-ranked (test.py's
``test.rerank=true``) and the other not, or with other parameters, a warning line says so
(on the screen and in ``--out``): their difference includes the re-ranking's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.evaluation import METRICS, results_rows
from engine.results import describe_rerank, describe_runs, read_results, rerank_of, spread_rows
from utils.errors import UserError, exit_on_user_error

BEYOND, WITHIN, NO_SPREAD = "beyond spread", "within spread", "one run"


def compare(first: dict, second: dict, factor: float = 2.0) -> list:
    """Rows ``{"row", "metric", "a", "b", "delta", "a_std", "b_std", "verdict"}`` for every
    (dataset and task, metric) that both results hold, in A's order."""
    rows_a, rows_b = results_rows(first), results_rows(second)
    common = [name for name in rows_a if name in rows_b]
    if not common:
        raise UserError(f"nothing to compare: A holds {', '.join(rows_a)} and B "
                        f"{', '.join(rows_b)}")
    several = bool(describe_runs(first)) and bool(describe_runs(second))
    spread_a, spread_b = spread_rows(first), spread_rows(second)
    table = []
    for name in common:
        for metric in METRICS:
            a, b = rows_a[name][metric], rows_b[name][metric]
            a_std = spread_a.get(name, {}).get(metric) if several else None
            b_std = spread_b.get(name, {}).get(metric) if several else None
            if a_std is None or b_std is None:
                verdict = NO_SPREAD
            else:
                verdict = BEYOND if abs(b - a) > factor * max(a_std, b_std) else WITHIN
            table.append({"row": name, "metric": metric, "a": a, "b": b, "delta": b - a,
                          "a_std": a_std, "b_std": b_std, "verdict": verdict})
    return table


def _value(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def rerank_warning(first: dict, second: dict) -> str:
    """A warning line where A and B were not ranked the same way (re-ranked or not, or
    re-ranked with other parameters); '' where they were."""
    if rerank_of(first) == rerank_of(second):
        return ""
    return (f"warning: A is {describe_rerank(first)} and B {describe_rerank(second)}: "
            "the differences include the re-ranking's")


def markdown(rows: list, label_a: str, label_b: str, factor: float, warning: str = "") -> str:
    """The comparison as a Markdown table (``warning``: a line above it)."""
    lines = [f"A: {label_a}  ", f"B: {label_b}  ",
             f"beyond spread: |B - A| > {factor:g} × the larger std", "",
             *([f"**{warning}**", ""] if warning else []),
             "| task | metric | A | B | B - A | |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['row']} | {row['metric']} | {_value(row['a'], row['a_std'])} | "
                     f"{_value(row['b'], row['b_std'])} | {row['delta']:+.2f} | "
                     f"{row['verdict']} |")
    return "\n".join(lines) + "\n"


def text_table(rows: list) -> str:
    """The comparison aligned for the screen."""
    cells = [["task", "metric", "A", "B", "B - A", ""]]
    cells += [[row["row"], row["metric"], _value(row["a"], row["a_std"]),
               _value(row["b"], row["b_std"]), f"{row['delta']:+.2f}", row["verdict"]]
              for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def label(path: str, results: dict) -> str:
    runs = describe_runs(results)
    rerank = f", {describe_rerank(results)}" if rerank_of(results) else ""
    return (f"{path} ({results.get('dataset', '?')}" + (f", mean of {runs}" if runs else "")
            + f"{rerank})")


@exit_on_user_error
def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="run folder holding results.json, or the file (A)")
    parser.add_argument("b", help="run folder holding results.json, or the file (B)")
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    parser.add_argument("--factor", type=float, default=2.0,
                        help="beyond the spread: |B - A| > factor x the larger std (default 2)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = parser.parse_args(argv)
    if args.factor <= 0:
        raise UserError(f"--factor {args.factor:g} must be positive")
    first, second = read_results(args.a), read_results(args.b)
    if first.get("dataset") != second.get("dataset"):
        raise UserError(f"A was tested on {first.get('dataset')} and B on "
                        f"{second.get('dataset')}: their numbers do not compare")
    rows = compare(first, second, args.factor)
    label_a, label_b = label(args.a, first), label(args.b, second)
    warning = rerank_warning(first, second)
    if warning:
        print(warning, file=sys.stderr)
    print(f"A: {label_a}\nB: {label_b}\n")
    print(text_table(rows))
    beyond = sum(row["verdict"] == BEYOND for row in rows)
    if all(row["verdict"] == NO_SPREAD for row in rows):
        print("\nno spread to judge by: run both with several seeds (seeds=[1,2,3]) or trials")
    else:
        print(f"\n{beyond} of {len(rows)} differences beyond {args.factor:g} × the larger std")
    if args.out:
        Path(args.out).write_text(markdown(rows, label_a, label_b, args.factor, warning),
                                  encoding="utf-8")
        print(f"table written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
