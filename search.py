"""Search a folder of photos with a sketch and rounds of text feedback.

    python search.py --checkpoint outputs/Market_finetune/checkpoint_best.pth \
        --gallery photos/ --sketch witness.png --text "she wore a red coat" \
        --text "and a black backpack" --topk 10 --out ranked.png
    python search.py --checkpoint CKPT --gallery photos/ --sketch witness.png --interactive

The gallery is embedded once into an index file (default: beside the checkpoint, in
gallery_index/; or --index FILE) and reused while the checkpoint and the photos are
unchanged; added, removed or changed photos are re-embedded alone. Each --text is one round
of feedback; the rounds are joined into "a photo of * , and <round 1>, <round 2>, ...".
With --interactive, after the first ranking each line read from standard input adds a
round and re-ranks, until an empty line or the end of input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from datasets.base import read_image
from engine.gallery import SearchEngine, add_engine_arguments
from engine.visualize import rank_sheet
from utils.errors import exit_on_user_error
from utils.logger import setup_logging


def print_ranking(engine: SearchEngine, ranking: list, feedback: list) -> None:
    print(f"query: {engine.query_text(feedback)}")
    print(f"{'rank':>4}  {'score':>7}  path")
    for rank, (path, score) in enumerate(ranking, start=1):
        print(f"{rank:>4}  {score:>7.4f}  {path}")
    sys.stdout.flush()


def save_sheet(engine: SearchEngine, sketch_path: Path, ranking: list, feedback: list,
               out: Path) -> None:
    sheet = rank_sheet(sketch_path, engine.query_text(feedback),
                       [engine.gallery / path for path, _ in ranking],
                       [score for _, score in ranking], title=f"sketch: {sketch_path.name}")
    sheet.save(out)
    print(f"contact sheet written to {out}")


@exit_on_user_error
def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_arguments(parser)
    parser.add_argument("--sketch", required=True, help="the query sketch (an image file)")
    parser.add_argument("--text", action="append", default=[],
                        help="one round of text feedback (repeat for more rounds)")
    parser.add_argument("--topk", type=int, default=10, help="photos to show (default 10)")
    parser.add_argument("--out", help="write a contact sheet PNG of the ranking here")
    parser.add_argument("--interactive", action="store_true",
                        help="read more feedback rounds from standard input, one per line")
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    setup_logging(None)
    logging.getLogger().setLevel(logging.WARNING)
    sketch_path = Path(args.sketch)
    sketch = read_image(sketch_path)  # an unreadable sketch fails before any embedding
    engine = SearchEngine(args.checkpoint, args.gallery, args.index, args.device)
    feedback = list(args.text)
    ranking = engine.search(sketch, feedback, args.topk)
    print_ranking(engine, ranking, feedback)
    if args.out:
        save_sheet(engine, sketch_path, ranking, feedback, Path(args.out))
    while args.interactive:
        print("feedback> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            print()
            break
        feedback.append(line.strip())
        ranking = engine.search(sketch, feedback, args.topk)
        print_ranking(engine, ranking, feedback)
        if args.out:
            save_sheet(engine, sketch_path, ranking, feedback, Path(args.out))
    return ranking


if __name__ == "__main__":
    main()
