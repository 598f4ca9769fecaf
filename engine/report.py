"""Collect ``results.json`` files into one Markdown table.

    python -m engine.report outputs/TriPEDES_pretrain/results.json \
        outputs/Market_finetune/results.json outputs/PKU_finetune/results.json --out results.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.evaluation import METRICS, results_rows
from utils.errors import UserError, exit_on_user_error


def markdown_table(named_results: list) -> str:
    """[(label, results dict)] -> Markdown table, one row per dataset and task."""
    lines = ["| run | task | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for label, results in named_results:
        spread = results.get("std", {})
        for task, metrics in results_rows(results).items():
            cells = []
            for metric in METRICS:
                cell = f"{metrics[metric]:.2f}"
                if task in spread:
                    cell += f" ± {spread[task][metric]:.2f}"
                cells.append(cell)
            lines.append(f"| {label} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files")
    parser.add_argument("--out", help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    named = []
    for name in args.results:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"results file not found: {path}")
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from None
        named.append((f"{results.get('dataset', '?')} ({path.parent.name})", results))
    table = markdown_table(named)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return table


if __name__ == "__main__":
    main()
