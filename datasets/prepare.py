"""Write the split files a dataset needs but does not ship with.

    python -m datasets.prepare pku-sketch --root DATA_ROOT [--trials 10] [--seed 0]

PKU-Sketch as unpacked has no split: this writes ``idx/{train,test}_{visible,sketch}_<t>.txt``
for trials 1..``--trials`` in the line format of the public PKU-Sketch protocol files
(``photo/<file> <id> <cam> 0`` and ``sketch/<id>.jpg <id> 0 <style>``), 150 training and
50 test people per trial, drawn within each sketch style (``styleAnnotation/``) as the
public protocol does. The loaders draw the same split when ``idx/`` is absent
(``datasets.pku_sketch.trial_split`` with the same seed). Existing split files are never
overwritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasets import pku_sketch
from datasets.base import stop_at_first
from utils.errors import UserError, exit_on_user_error


def pku_sketch_splits(root: Path, trials: int, seed: int) -> dict:
    """{relative path under the dataset folder: text} of every split file."""
    folder = pku_sketch._folder(root)
    photos_of, problems = pku_sketch.scan_photos(folder)
    sketches, sketch_problems = pku_sketch.scan_sketches(folder)
    styles, style_problems = pku_sketch.read_styles(folder)
    stop_at_first(problems + sketch_problems + style_problems)
    number = pku_sketch.style_numbers(styles)
    files = {}
    for trial in range(1, trials + 1):
        parts = pku_sketch.trial_split(list(photos_of), styles, trial, seed)
        for part, ids in zip(("train", "test"), parts):
            visible, drawn = [], []
            for pid in ids:
                if pid not in sketches:
                    raise UserError(f"PKU-Sketch: person {pid} has photos but no sketch "
                                    f"{folder / 'sketch' / f'{pid}.jpg'}")
                for photo, _ in photos_of[pid]:
                    # The camera as written in the name (e.g. 05), as the public files do.
                    visible.append(f"photo/{photo.name} {pid} {photo.stem.split('_')[1]} 0")
                drawn.append(f"sketch/{sketches[pid].name} {pid} {pku_sketch.SKETCH_CAM} "
                             f"{number.get(pid, 0)}")
            files[f"idx/{part}_visible_{trial}.txt"] = "\n".join(visible) + "\n"
            files[f"idx/{part}_sketch_{trial}.txt"] = "\n".join(drawn) + "\n"
    return files


def write_new(folder: Path, files: dict) -> None:
    """Write ``files`` under ``folder``, refusing before writing anything if one exists."""
    existing = [name for name in files if (folder / name).exists()]
    if existing:
        raise UserError(f"{folder / existing[0]} exists ({len(existing)} of the "
                        f"{len(files)} split files do); split files are never overwritten: "
                        f"move {folder / 'idx'} away to write new ones")
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["pku-sketch"])
    parser.add_argument("--root", required=True, help="data.root, holding PKU-Sketch/ "
                        "(or PKUSketchRE-ID_V1/)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the split of trial t comes from "
                        "random.Random(seed * 1000 + t), as the loaders draw it (seed = the "
                        "config's seed)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = parser.parse_args(argv)
    if args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
    folder = pku_sketch._folder(Path(args.root))
    files = pku_sketch_splits(Path(args.root), args.trials, args.seed)
    write_new(folder, files)
    styles, _ = pku_sketch.read_styles(folder)
    within = f"within the {len(styles)} sketch styles" if styles else "over all people"
    train = files["idx/train_sketch_1.txt"].count("\n")
    test = files["idx/test_sketch_1.txt"].count("\n")
    print(f"wrote {len(files)} split files to {folder / 'idx'}: trials 1..{args.trials}, "
          f"{train} training / {test} test people each, drawn {within} with seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
