"""Evaluate a checkpoint of either stage and write ``results.json``.

    python test.py --checkpoint outputs/TriPEDES_pretrain/checkpoint_best.pth
    python test.py --checkpoint outputs/Market_finetune/checkpoint_best.pth data.root=/data
    python test.py --checkpoint outputs/PKU_finetune      # every trial_<t>/, mean and std
    python test.py --checkpoint outputs/TriPEDES_seeds    # every seed_<s>/, mean and std
    python test.py --checkpoint checkpoint/ViT-B-16.pt data.dataset=cuhk-pedes   # zero-shot

The model is rebuilt from the config stored in the checkpoint; KEY=VALUE overrides it (e.g.
``data.root``, ``device``, ``test.batch_size``). Results go to ``results.json`` beside the
checkpoint, or into ``output_dir=<folder>`` when given, with ``queries.json``: every query's
image, person id and the exact text of each text-bearing task. Checkpoints written by the
paper's own code (InteractReID) and exported weights (``python -m engine.export``) are read
too. A file of CLIP weights (OpenAI's, a state dict, open_clip's) is evaluated zero-shot on
the stage-1 tasks (text->image, sketch->image), the first row of a results table; its
results go to ``outputs/zero_shot_<file name>/`` unless ``output_dir`` is given.

    python test.py --checkpoint outputs/Market_finetune test.rerank=true   # k-reciprocal re-ranking
    python test.py --checkpoint outputs/Market_finetune test.rerank=true test.rerank_k1=30

``test.rerank=true`` re-ranks every task (both stages' tasks, the ``*_mq`` ones, every
feedback round, and the order of the rank pictures) with k-reciprocal re-ranking (Zhong et
al., CVPR 2017; ``utils.rerank``), parameters ``test.rerank_k1``, ``test.rerank_k2`` and
``test.rerank_lambda``; each task's queries and photos form one neighbour graph, and a
photo of the query's person and camera is left out after re-ranking. It changes only this
evaluation: the evaluations during training, which pick ``checkpoint_best.pth``, never
re-rank. ``results.json`` records it as ``"rerank": {"k1": 20, "k2": 6, "lambda": 0.3}``,
or ``"rerank": false``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine.evaluation import format_table, rerank_setting, results_rows
from engine.models import load_for_inference
from engine.results import combine, describe_rerank, table_title
from engine.visualize import line_plot, rank_sheet
from utils.config import to_plain
from utils.distributed import resolve_device
from utils.errors import UserError, exit_on_user_error
from utils.logger import setup_logging

log = logging.getLogger("test")


def checkpoints_to_evaluate(path: Path) -> list:
    """[(seed or None, trial or None, checkpoint file)]: a file, a run folder, a run folder
    of trials (``trial_<t>/``), or of seeds (``seed_<s>/``, each a run or one of trials)."""
    if path.is_file():
        return [(None, None, path)]
    if not path.is_dir():
        raise UserError(f"checkpoint not found: {path}")
    jobs = [(None, trial, file) for trial, file in _run_checkpoints(path)]
    if not jobs:
        for seed, folder in _numbered(path, "seed"):
            jobs += [(seed, trial, file) for trial, file in _run_checkpoints(folder)]
    if jobs:
        return jobs
    raise UserError(f"{path} holds no checkpoint_best.pth (nor trial_<t>/ or seed_<s>/ folders "
                    "with one); train first or give a checkpoint file")


def _numbered(path: Path, kind: str) -> list:
    """[(number, folder)] of the ``<kind>_<number>`` folders in ``path``, by number."""
    found = [(int(folder.name.split("_", 1)[1]), folder) for folder in path.glob(f"{kind}_*")
             if folder.is_dir() and folder.name.split("_", 1)[1].isdigit()]
    return sorted(found)


def _run_checkpoints(path: Path) -> list:
    """[(trial or None, checkpoint_best.pth)] of one seed's folder."""
    if (path / "checkpoint_best.pth").is_file():
        return [(None, path / "checkpoint_best.pth")]
    return [(trial, folder / "checkpoint_best.pth") for trial, folder in _numbered(path, "trial")
            if (folder / "checkpoint_best.pth").is_file()]


def evaluate_checkpoint(path: Path, overrides: list, trial=None, examples: bool = True) -> tuple:
    loaded = load_for_inference(path, overrides)
    cfg, stage = loaded.cfg, loaded.stage
    if loaded.zero_shot and cfg.data.dataset not in stage.datasets:
        raise UserError(f"{path} holds CLIP weights, which are tested zero-shot on the stage-1 "
                        f"tasks only (data.dataset={'|'.join(stage.datasets)}); "
                        f"{cfg.data.dataset} needs a stage-2 checkpoint (train_token.py)")
    rerank = rerank_setting(cfg)  # checked before any encoding
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
    if rerank is not None:
        log.info("k-reciprocal re-ranking of every task: k1=%d, k2=%d, lambda=%g",
                 rerank["k1"], rerank["k2"], rerank["lambda"])
    count = cfg.test.visualize if examples else 0
    results = stage.evaluate(model, cfg, "test", device, trial, examples=count, queries=True,
                             rerank=rerank)
    results["rerank"] = rerank or False
    return ({**results, "zero_shot": True} if loaded.zero_shot else results), cfg


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
    if len(jobs) == 1:  # one checkpoint is one run, whatever trial it trained on
        jobs = [(None, None, jobs[0][2])]
    runs = [(seed, trial, *evaluate_checkpoint(file, args.overrides, trial, examples=index == 0))
            for index, (seed, trial, file) in enumerate(jobs)]
    examples = runs[0][2].pop("examples", [])
    asked = [(seed, trial, result.pop("queries")) for seed, trial, result, _ in runs]
    cfg = runs[0][3]
    rerank = runs[0][2]["rerank"]
    if any(result["rerank"] != rerank for _, _, result, _ in runs):
        raise UserError(f"the checkpoints under {path} store different test.rerank settings; "
                        "give test.rerank (and test.rerank_k1, _k2, _lambda) on the command line")
    results = {"dataset": cfg.data.dataset, "rerank": rerank,
               **combine([(seed, trial, result) for seed, trial, result, _ in runs]),
               **({"zero_shot": True} if runs[0][2].get("zero_shot") else {})}
    queries = {"dataset": results["dataset"], **nest_queries(asked)}
    results["checkpoint"] = str(path)
    results["config"] = to_plain(cfg)
    given = any(item.startswith("output_dir=") for item in args.overrides)
    if given:
        output_dir = Path(cfg.output_dir)
    elif results.get("zero_shot"):
        output_dir = Path("outputs") / f"zero_shot_{path.stem}"
    else:
        output_dir = path if path.is_dir() else path.parent
    output_dir.mkdir(parents=True, exist_ok=True)
    if rerank:
        print(f"every task {describe_rerank(results)}")
    print(format_table(results_rows(results), table_title(results, f"{results['dataset']} test")))
    with (output_dir / "results.json").open("w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    print(f"results written to {output_dir / 'results.json'}")
    with (output_dir / "queries.json").open("w", encoding="utf-8") as handle:
        json.dump(queries, handle, indent=1)
    print(f"query texts written to {output_dir / 'queries.json'}")
    write_pictures(results, examples, output_dir)
    return results


def nest_queries(asked: list) -> dict:
    """[(seed, trial, queries)] -> ``queries.json``'s body, nested as the results are."""
    def by_trial(entries):
        if len(entries) == 1 and entries[0][1] is None:
            return {"queries": entries[0][2]}
        return {"trials": [{"trial": trial, "queries": queries} for _, trial, queries in entries]}

    seeds = list(dict.fromkeys(seed for seed, _, _ in asked))
    if seeds == [None]:
        return by_trial(asked)
    return {"seeds": [{"seed": seed, **by_trial([a for a in asked if a[0] == seed])}
                      for seed in seeds]}


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
