"""Compare a benchmark between two checkouts of this repository, run in turn.

Machines drift while a benchmark runs (other jobs, clocks, caches), so two versions timed
one after the other can differ by more than the change being measured. Here the two run
alternately, each in a fresh process, for ``--rounds`` rounds, and every round gives a
ratio before / after; the median ratio is the result::

    git worktree add /tmp/before <older commit>
    python -m bench.ab --before /tmp/before --rounds 7 -- \\
        --stage adapt --steps 3 --batch-size 4 device=cpu \\
        model.pretrained=/tmp/vitb16.pt model.image_size=[224,224]

The arguments after ``--`` go to ``python -m bench.train_step`` (``--bench`` picks
another module that prints a JSON line with the ``--metric`` field) in both checkouts,
this one being "after". Prints a line per run, then one JSON line: the medians of each
side, the median of the per-round time ratios, and the ratio of the medians of
``peak_mem_mb`` (after / before).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run_once(checkout: Path, module: str, args: list) -> dict:
    """One run of ``python -m module args`` in ``checkout``; its last JSON line."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=checkout,
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"error: {module} failed in {checkout}: {tail}")
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the other checkout (the baseline)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bench", default="bench.train_step", help="benchmark module")
    parser.add_argument("--metric", default="step_ms", help="JSON field to compare")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the benchmark's "
                        "arguments")
    args = parser.parse_args(argv)
    before = Path(args.before).resolve()
    if not (before / args.bench.replace(".", "/")).with_suffix(".py").is_file():
        sys.exit(f"error: {before} has no {args.bench}; give a checkout of this repository")
    if args.rounds < 1:
        sys.exit("error: --rounds must be at least 1")
    bench_args = args.args[1:] if args.args[:1] == ["--"] else args.args

    results = {"before": [], "after": []}
    for round_index in range(args.rounds):
        for side, checkout in (("before", before), ("after", HERE)):
            record = run_once(checkout, args.bench, bench_args)
            results[side].append(record)
            print(f"round {round_index + 1} {side:6s} {args.metric}={record[args.metric]} "
                  f"peak_mem_mb={record.get('peak_mem_mb')}", flush=True)

    def values(side, key):
        return [record[key] for record in results[side] if record.get(key) is not None]

    ratios = [b[args.metric] / a[args.metric]
              for b, a in zip(results["before"], results["after"])]
    summary = {"bench": "ab", "module": args.bench, "metric": args.metric,
               "rounds": args.rounds, "before": str(before), "args": bench_args,
               "before_median": statistics.median(values("before", args.metric)),
               "after_median": statistics.median(values("after", args.metric)),
               "ratios": [round(ratio, 3) for ratio in ratios],
               "ratio_median": round(statistics.median(ratios), 3),
               "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}
    memory = values("before", "peak_mem_mb"), values("after", "peak_mem_mb")
    if all(memory):
        summary["peak_mem_mb_before"] = statistics.median(memory[0])
        summary["peak_mem_mb_after"] = statistics.median(memory[1])
        summary["peak_mem_ratio"] = round(summary["peak_mem_mb_after"]
                                          / summary["peak_mem_mb_before"], 3)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
