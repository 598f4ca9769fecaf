"""Evaluate a checkpoint of either stage and write ``results.json``.

    python test.py --checkpoint outputs/TriPEDES_pretrain/checkpoint_best.pth
    python test.py --checkpoint outputs/Market_finetune/checkpoint_best.pth data.root=/data
    python test.py --checkpoint outputs/PKU_finetune      # every trial_<t>/, mean and std
    python test.py --checkpoint checkpoint/ViT-B-16.pt data.dataset=cuhk-pedes   # zero-shot

The model is rebuilt from the config stored in the checkpoint; KEY=VALUE overrides it (e.g.
``data.root``, ``device``, ``test.batch_size``). Results go to ``results.json`` beside the
checkpoint, or into ``output_dir=<folder>`` when given, with ``queries.json``: every query's
image, person id and the exact text of each text-bearing task. Checkpoints written by the
paper's own code (InteractReID) and exported weights (``python -m utils.export``) are read
too. A file of CLIP weights (OpenAI's, a state dict, open_clip's) is evaluated zero-shot on
the stage-1 tasks (text->image, sketch->image), the first row of a results table; its
results go to ``outputs/zero_shot_<file name>/`` unless ``output_dir`` is given.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from engine.evaluation import METRICS, format_table, results_rows
from engine.models import load_for_inference
from engine.visualize import line_plot, rank_sheet
from utils.config import to_plain
from utils.distributed import resolve_device
from utils.errors import UserError, exit_on_user_error
from utils.logger import setup_logging

log = logging.getLogger("test")


def checkpoints_to_evaluate(path: Path) -> list:
    """[(trial or None, checkpoint file)]: a file, a run dir, or a run dir of trials."""
    if path.is_file():
        return [(None, path)]
    if not path.is_dir():
        raise UserError(f"checkpoint not found: {path}")
    if (path / "checkpoint_best.pth").is_file():
        return [(None, path / "checkpoint_best.pth")]
    trials = sorted(path.glob("trial_*/checkpoint_best.pth"),
                    key=lambda p: int(p.parent.name.split("_")[1]))
    if trials:
        return [(int(p.parent.name.split("_")[1]), p) for p in trials]
    raise UserError(f"{path} holds no checkpoint_best.pth (nor trial_<t>/checkpoint_best.pth); "
                    "train first or give a checkpoint file")


def evaluate_checkpoint(path: Path, overrides: list, trial=None, examples: bool = True) -> tuple:
    loaded = load_for_inference(path, overrides)
    cfg, stage = loaded.cfg, loaded.stage
    if loaded.zero_shot and cfg.data.dataset not in stage.datasets:
        raise UserError(f"{path} holds CLIP weights, which are tested zero-shot on the stage-1 "
                        f"tasks only (data.dataset={'|'.join(stage.datasets)}); "
                        f"{cfg.data.dataset} needs a stage-2 checkpoint (train_token.py)")
    device = resolve_device(cfg.device)
    model = loaded.model.to(device)
    if loaded.zero_shot:
        log.info("evaluating %s zero-shot (CLIP weights, no training) on %s", path,
                 cfg.data.dataset)
    else:
        trial = loaded.checkpoint.get("trial", trial)
        log.info("evaluating %s (%s, epoch %s) on %s", path, stage.title,
                 loaded.checkpoint.get("epoch"),
                 cfg.data.dataset + (f" trial {trial}" if trial is not None else ""))
    count = cfg.test.visualize if examples else 0
    results = stage.evaluate(model, cfg, "test", device, trial, examples=count, queries=True)
    return ({**results, "zero_shot": True} if loaded.zero_shot else results), cfg


def mean_over_trials(trial_results: list) -> dict:
    """Mean and (sample) standard deviation of every metric of every task over trials."""
    tasks, spread = {}, {}
    for task in trial_results[0]["tasks"]:
        values = {m: [r["tasks"][task][m] for r in trial_results] for m in METRICS}
        tasks[task] = {m: statistics.fmean(v) for m, v in values.items()}
        spread[task] = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values.items()}
    averaged = {"tasks": tasks, "std": spread}
    if "rounds" in trial_results[0]:
        averaged["rounds"] = [
            {"round": rounds[0]["round"],
             **{m: statistics.fmean(r[m] for r in rounds) for m in METRICS}}
            for rounds in zip(*(result["rounds"] for result in trial_results))]
    return averaged


@exit_on_user_error
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging(None)
    path = Path(args.checkpoint)
    jobs = checkpoints_to_evaluate(path)
    runs = [(trial, *evaluate_checkpoint(file, args.overrides, trial, examples=index == 0))
            for index, (trial, file) in enumerate(jobs)]
    examples = runs[0][1].pop("examples", [])
    asked = [(trial, result.pop("queries")) for trial, result, _ in runs]
    if len(runs) == 1:
        results = runs[0][1]
        queries = {"dataset": results["dataset"], "queries": asked[0][1]}
    else:
        trials = [{"trial": trial, **{key: result[key] for key in ("tasks", "rounds")
                                      if key in result}} for trial, result, _ in runs]
        results = {"dataset": runs[0][2].data.dataset, **mean_over_trials(trials),
                   "trials": trials}
        queries = {"dataset": results["dataset"],
                   "trials": [{"trial": trial, "queries": entries} for trial, entries in asked]}
    results["checkpoint"] = str(path)
    results["config"] = to_plain(runs[0][2])
    given = any(item.startswith("output_dir=") for item in args.overrides)
    if given:
        output_dir = Path(runs[0][2].output_dir)
    elif results.get("zero_shot"):
        output_dir = Path("outputs") / f"zero_shot_{path.stem}"
    else:
        output_dir = path if path.is_dir() else path.parent
    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{results['dataset']} test"
    if len(runs) > 1:
        title += f" (mean of {len(runs)} trials)"
    print(format_table(results_rows(results), title))
    with (output_dir / "results.json").open("w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    print(f"results written to {output_dir / 'results.json'}")
    with (output_dir / "queries.json").open("w", encoding="utf-8") as handle:
        json.dump(queries, handle, indent=1)
    print(f"query texts written to {output_dir / 'queries.json'}")
    write_pictures(results, examples, output_dir)
    return results


def write_pictures(results: dict, examples: list, output_dir: Path) -> None:
    """Rank pictures of ``test.visualize`` queries, and the metrics per feedback round."""
    if examples:
        (output_dir / "vis").mkdir(exist_ok=True)
        for number, example in enumerate(examples):
            sheet = rank_sheet(Path(example["query"]), example["text"],
                               [Path(p) for p in example["ranked"]], example["scores"],
                               example["correct"], title=f"query {number}: {example['query']}")
            sheet.save(output_dir / "vis" / f"query_{number:03d}.png")
        print(f"{len(examples)} rank pictures written to {output_dir / 'vis'}")
    rounds = results.get("rounds")
    if rounds:
        print(format_table({f"round {r['round']}": r for r in rounds}, "feedback rounds"))
        line_plot({"R1": [r["R1"] for r in rounds], "mAP": [r["mAP"] for r in rounds]},
                  [r["round"] for r in rounds], "rounds of text feedback",
                  output_dir / "rounds.png", title=f"{results['dataset']}: interactive queries")
        print(f"plot written to {output_dir / 'rounds.png'}")


if __name__ == "__main__":
    main()
