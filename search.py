"""Search a folder of photos with a sketch, rounds of text feedback, or both.

    python search.py --checkpoint outputs/Market_finetune/checkpoint_best.pth \
        --gallery photos/ --sketch witness.png --text "she wore a red coat" \
        --text "and a black backpack" --topk 10 --out ranked.png
    python search.py --checkpoint CKPT --gallery photos/ --sketch witness.png --interactive
    python search.py --checkpoint CKPT --gallery photos/ --text "a man in a red coat"
    python search.py --checkpoint checkpoint/ViT-B-16.pt --gallery photos/ --sketch witness.png
    python search.py --checkpoint CKPT --gallery photos/ --text "a red coat" --ann ivf
    python search.py --checkpoint CKPT --gallery photos/ --sketch witness.png --rerank
    python search.py --onnx market_onnx --gallery photos/ --sketch witness.png --text "a red coat"
    torchrun --nproc_per_node=4 search.py --checkpoint CKPT --gallery photos/ --index-only

A stage-2 checkpoint composes the sketch with the text; a stage-1 checkpoint or plain CLIP
weights search by the sketch alone or by the text alone (any checkpoint searches by text
alone). --onnx DIR searches with the encoders of an ONNX export (python -m engine.export RUN
--format onnx --out DIR) run by onnxruntime, in place of --checkpoint. The search itself is
``engine.api.Retriever``'s, the Python API.

The gallery is embedded once into an index folder (default: in gallery_index/ beside the
checkpoint or inside the --onnx folder; or --index DIR) and reused while the model and the
photos are unchanged; added, removed or changed photos are re-embedded alone. A big gallery
can be indexed first with --index-only, under torchrun by several processes (GPUs) at once,
each embedding its share; a killed run resumes where it stopped (the embedded part is saved
every --save-every photos). Search is exact by default (the features are read memory-mapped
in chunks); --ann ivf|hnsw searches a FAISS index instead (pip install faiss-cpu), built
beside the features once and refreshed when the photos change. --rerank orders the whole
gallery by k-reciprocal re-ranking (exact search only), with the gallery's neighbour lists
computed once and stored in the index, so that a query costs only its own neighbours
(galleries of up to about 100k photos). Each --text is one round of feedback; the rounds
are joined into "a photo of * , and <round 1>, <round 2>, ...". With --interactive, after
the first ranking each line read from standard input adds a round and re-ranks, until an
empty line or the end of input.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from engine.api import (
    Retriever,
    add_retriever_arguments,
    check_retriever_arguments,
    index_from_args,
    retriever_from_args,
)
from engine.gallery import SAVE_EVERY
from engine.visualize import rank_sheet
from utils.distributed import cleanup, init_distributed, is_main
from utils.errors import UserError, exit_on_user_error
from utils.logger import setup_logging


def describe(retriever: Retriever, sketch_path: Path | None, feedback: list) -> str:
    text = retriever.query_text(feedback, sketch=sketch_path is not None)
    if sketch_path is not None and not retriever.composes:
        return f"the sketch {sketch_path.name} (image tower)"
    return text


def print_ranking(retriever: Retriever, ranking: list, sketch_path: Path | None,
                  feedback: list) -> None:
    print(f"query: {describe(retriever, sketch_path, feedback)}")
    print(f"{'rank':>4}  {'score':>7}  path")
    for rank, (path, score) in enumerate(ranking, start=1):
        print(f"{rank:>4}  {score:>7.4f}  {path}")
    sys.stdout.flush()


def save_sheet(retriever: Retriever, sketch_path: Path | None, ranking: list, feedback: list,
               out: Path) -> None:
    title = f"sketch: {sketch_path.name}" if sketch_path is not None else "text query"
    sheet = rank_sheet(sketch_path, describe(retriever, sketch_path, feedback),
                       [retriever.gallery.folder / path for path, _ in ranking],
                       [score for _, score in ranking], title=title)
    sheet.save(out)
    print(f"contact sheet written to {out}")


def build_only(args) -> Retriever:
    """--index-only: embed the gallery (under torchrun, each process a share; data loading
    with ``data.num_workers`` processes each), merge and commit on the main process."""
    if args.sketch or args.text or args.interactive or args.out:
        raise UserError("--index-only builds the index and searches nothing; leave out "
                        "--sketch, --text, --interactive and --out")
    device = init_distributed(args.device)
    main_process = is_main()  # asked now: after cleanup() every process reads as rank 0
    setup_logging(None, main_process=main_process)
    started = time.perf_counter()
    ok = False
    try:
        retriever = index_from_args(retriever_from_args(args, device), args, num_workers=None,
                                    save_every=args.save_every)
        ok = True
    finally:
        cleanup(wait=ok)
    if main_process:
        print(f"index: {retriever.gallery.index.folder} ({len(retriever.paths)} photos, "
              f"{time.perf_counter() - started:.1f} s)", flush=True)
    return retriever


@exit_on_user_error
def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_retriever_arguments(parser)
    parser.add_argument("--sketch", help="the query sketch (an image file)")
    parser.add_argument("--text", action="append", default=[],
                        help="one round of text feedback (repeat for more rounds)")
    parser.add_argument("--topk", type=int, default=10, help="photos to show (default 10)")
    parser.add_argument("--out", help="write a contact sheet PNG of the ranking here")
    parser.add_argument("--interactive", action="store_true",
                        help="read more feedback rounds from standard input, one per line")
    parser.add_argument("--index-only", action="store_true",
                        help="build or update the gallery index (and the --ann index), then "
                        "stop; under torchrun every process embeds a share")
    parser.add_argument("--save-every", type=int, default=SAVE_EVERY, metavar="N",
                        help="while embedding, save the embedded part every N photos (per "
                        f"process), so that a killed run resumes there (default {SAVE_EVERY})")
    args = parser.parse_args(argv)
    check_retriever_arguments(parser, args)
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    if args.save_every < 1:
        parser.error("--save-every must be at least 1")
    if args.index_only:
        return build_only(args)
    if args.sketch is None and not args.text:
        raise UserError("give --sketch, --text, or both")
    setup_logging(None)
    logging.getLogger().setLevel(logging.WARNING)
    retriever = retriever_from_args(args)
    sketch_path = Path(args.sketch) if args.sketch else None
    # An unreadable sketch or a query the model cannot run fails before any embedding.
    sketch = retriever.read_sketch(sketch_path) if sketch_path is not None else None
    feedback = list(args.text)
    retriever.check_query(sketch is not None, feedback)
    if args.interactive and sketch is not None and not retriever.composes:
        raise UserError(f"--interactive adds text to the sketch, which this {retriever.kind} "
                        "cannot compose (a stage-2 checkpoint can); search by text alone, or "
                        "by the sketch alone without --interactive")
    index_from_args(retriever, args, save_every=args.save_every)
    ranking = retriever.search(sketch, feedback, topk=args.topk)
    print_ranking(retriever, ranking, sketch_path, feedback)
    if args.out:
        save_sheet(retriever, sketch_path, ranking, feedback, Path(args.out))
    while args.interactive:
        print("feedback> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            print()
            break
        feedback.append(line.strip())
        ranking = retriever.search(sketch, feedback, topk=args.topk)
        print_ranking(retriever, ranking, sketch_path, feedback)
        if args.out:
            save_sheet(retriever, sketch_path, ranking, feedback, Path(args.out))
    return ranking


if __name__ == "__main__":
    main()
