"""PKU-Sketch: one sketch and two photos per person, with captions as text feedback.

Pang et al., "Cross-Domain Adversarial Feature Learning for Sketch Re-identification",
ACM MM 2018: 200 people, each with two photos taken by two cameras and one sketch drawn by
one of five artists (styles a..e). The captions (two per person, one per photo) come from
the Tri-ReID annotation of the same people (``TriReID.txt``). The standard protocol
trains on 150 people and tests on the other 50, drawn within each sketch style, averaged
over 10 trials.

On disk, as the official package unpacks (``PKUSketchRE-ID_V1``; ``PKU-Sketch`` is read
too) plus the captions::

    <root>/PKU-Sketch/
        photo/<id>_<cam>_<frame>.jpg      photos, e.g. 1_05_356.jpg (cameras 03..07)
        sketch/<id>.jpg                   one sketch per person
        styleAnnotation/<s>_<n>.txt       the ids drawn in style s (a..e), one per line
        TriReID.txt                       lines "<id>/<photo file name>@<caption>"
        idx/{train,test}_{visible,sketch}_<trial>.txt
                                          optional split files, lines "photo/<file> <id> <cam> 0"
                                          and "sketch/<id>.jpg <id> 0 <style>"

``python -m datasets.prepare pku-sketch --root DATA_ROOT`` writes ``idx/``. With it, the
people of a trial's part are those of its sketch list (``*_sketch_<trial>.txt``, second
column) and the photos are every photo of those people in ``photo/``, sorted by person and
name, as the paper's code takes them; a visible list (``*_visible_<trial>.txt``) is only
compared with ``photo/``, and where it names a photo that is not there or leaves one out,
the log says so. Without ``idx/`` the loaders draw the same split themselves
(``trial_split``: within each sketch style, from ``random.Random(seed * 1000 + trial)``)
and say so in the log. Photos take their camera from their name; sketches get camera 0
(as the public split files write them), or another number no photo uses, so that a
camera filter never drops a positive. Text files may have a byte-order mark and CRLF
line ends. The feedback of a test sketch is one caption of its person as written, chosen
with ``random.Random(seed * 7 + trial + id)`` so that scores repeat (the paper's code draws
it at random at every evaluation).
"""
from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

from datasets.base import EvalSet, TrainSample, image_files, read_lines, require_path, stop_at_first
from utils.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FOLDERS = ("PKU-Sketch", "PKUSketchRE-ID_V1")
FOLDER = FOLDERS[0]
CAPTION_FILE = "TriReID.txt"
STYLE_FOLDER = "styleAnnotation"
SKETCH_CAM = 0  # the public split files' camera of every sketch
STANDARD_TRAIN, STANDARD_TEST = 150, 50
# Test people per style in the public split files, for the official style sizes
# (a 46, b 20, c 79, d 33, e 22): 11 + 5 + 20 + 8 + 6 = 50.
PUBLIC_STYLE_SIZES = {"a": 46, "b": 20, "c": 79, "d": 33, "e": 22}
PUBLIC_TEST_PER_STYLE = {"a": 11, "b": 5, "c": 20, "d": 8, "e": 6}
LAYOUT = """  <data.root>/PKU-Sketch/  (or PKUSketchRE-ID_V1/)
      photo/<id>_<cam>_<frame>.jpg   two photos per person (e.g. 1_05_356.jpg)
      sketch/<id>.jpg                one sketch per person
      styleAnnotation/<s>_<n>.txt    ids per sketch style (a..e)
      TriReID.txt                    "<id>/<photo file name>@<caption>", two lines per person
      idx/{train,test}_{visible,sketch}_<trial>.txt   optional: python -m datasets.prepare"""


def _folder(root: Path) -> Path:
    require_path(Path(root), "data.root", LAYOUT)
    for name in FOLDERS:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    return require_path(Path(root) / FOLDER, "PKU-Sketch folder", LAYOUT)


def _trial(trial) -> int:
    return 1 if trial is None else int(trial)


def _check_split(split: str) -> None:
    if split != "test":
        raise DatasetError(f"PKU-Sketch has only a test split (asked for {split!r})")


# ----------------------------------------------------------------------------
# What the folder holds: photos, sketches, styles
# ----------------------------------------------------------------------------

def photo_key(path: Path) -> tuple:
    """``(id, cam)`` of a photo named ``<id>_<cam>_<frame>`` (or ``<id>_<cam>``)."""
    parts = Path(path).stem.split("_")
    if len(parts) in (2, 3) and all(part.isdigit() for part in parts):
        return int(parts[0]), int(parts[1])
    raise DatasetError(f"{path}: photo name is not <id>_<cam>_<frame> (e.g. 1_05_356.jpg)")


def scan_photos(folder: Path) -> tuple:
    """``({id: [(path, cam)]}, problems)`` of ``photo/``, sorted by name."""
    photo_dir = folder / "photo"
    if not photo_dir.is_dir():
        return {}, [("layout", f"no photo folder {photo_dir}")]
    photos_of, problems = {}, []
    for photo in image_files(photo_dir):
        try:
            pid, cam = photo_key(photo)
        except DatasetError as error:
            problems.append(("layout", str(error)))
            continue
        photos_of.setdefault(pid, []).append((photo, cam))
    return photos_of, problems


def scan_sketches(folder: Path) -> tuple:
    """``({id: path}, problems)`` of ``sketch/<id>.<suffix>``."""
    sketch_dir = folder / "sketch"
    if not sketch_dir.is_dir():
        return {}, [("layout", f"no sketch folder {sketch_dir}")]
    sketches, problems = {}, []
    for sketch in image_files(sketch_dir):
        if sketch.stem.isdigit():
            sketches[int(sketch.stem)] = sketch
        else:
            problems.append(("layout", f"{sketch}: sketch name is not <id>.jpg"))
    return sketches, problems


def read_styles(folder: Path) -> tuple:
    """``({style letter: [ids]}, problems)`` from ``styleAnnotation/<s>_<n>.txt``; empty
    when the folder is absent."""
    style_dir = folder / STYLE_FOLDER
    if not style_dir.is_dir():
        return {}, []
    styles, problems = {}, []
    for path in sorted(style_dir.glob("*.txt")):
        ids = []
        for number, line in enumerate(read_lines(path), start=1):
            if line.strip().isdigit():
                ids.append(int(line))
            elif line.strip():
                problems.append(("layout", f"{path}, line {number}: expected a person id, "
                                           f"got {line.strip()[:40]!r}"))
        styles[path.stem.split("_")[0]] = ids
    return styles, problems


# ----------------------------------------------------------------------------
# Splits: lists of (path, id, cam)
# ----------------------------------------------------------------------------

def _test_counts(sizes: dict) -> dict:
    """Test people per style: the public files' counts for the official style sizes, else
    a quarter of each style (largest remainders, 50 in all for 200 people)."""
    if sizes == PUBLIC_STYLE_SIZES:
        return dict(PUBLIC_TEST_PER_STYLE)
    total = sum(sizes.values())
    target = STANDARD_TEST if total == STANDARD_TRAIN + STANDARD_TEST else max(1, round(total / 4))
    exact = {style: size * target / total for style, size in sizes.items()}
    counts = {style: int(value) for style, value in exact.items()}
    for style in sorted(exact, key=lambda s: counts[s] - exact[s])[:target - sum(counts.values())]:
        counts[style] += 1
    return counts


def trial_split(ids: list, styles: dict, trial: int, seed: int) -> tuple:
    """Sorted (train ids, test ids) of a trial: 50 test people of 200 (a quarter of other
    counts), drawn within each sketch style when ``styles`` covers the ids (the public
    protocol), else over all; from ``random.Random(seed * 1000 + trial)``."""
    ids = sorted(set(ids))
    if len(ids) < 2:
        raise DatasetError(f"PKU-Sketch: {len(ids)} person(s) found, cannot split")
    rng = random.Random(seed * 1000 + trial)
    grouped = {style: sorted(set(members) & set(ids)) for style, members in sorted(styles.items())}
    if set(ids) - {pid for members in grouped.values() for pid in members}:
        grouped = {"": ids}  # no (complete) style annotation: one group
    counts = _test_counts({style: len(members) for style, members in grouped.items()})
    test = set()
    for style, members in grouped.items():
        test.update(rng.sample(members, counts[style]))
    return [pid for pid in ids if pid not in test], sorted(test)


def style_numbers(styles: dict) -> dict:
    """{id: 1-based number of its style in sorted style order}."""
    return {pid: number for number, style in enumerate(sorted(styles), start=1)
            for pid in styles[style]}


def drawn_split(root: Path, trial, seed, part: str) -> tuple:
    """``(photos, sketches)`` of ``part`` of a trial drawn by ``trial_split`` from what the
    folder holds (the split ``datasets.prepare`` writes)."""
    folder = _folder(root)
    photos_of, problems = scan_photos(folder)
    sketches, sketch_problems = scan_sketches(folder)
    styles, style_problems = read_styles(folder)
    stop_at_first(problems + sketch_problems + style_problems)
    train, test = trial_split(list(photos_of), styles, _trial(trial), int(seed or 0))
    photos, drawn = [], []
    for pid in (train if part == "train" else test):
        if pid not in sketches:
            raise DatasetError(f"PKU-Sketch: person {pid} has photos but no sketch "
                               f"{folder / 'sketch' / f'{pid}.jpg'}")
        photos.extend((path, pid, cam) for path, cam in photos_of[pid])
        drawn.append((sketches[pid], pid, SKETCH_CAM))
    return photos, drawn


def parse_index(folder: Path, path: Path) -> tuple:
    """``(entries, problems)`` of an idx file: entries ``(image, id, cam or None)`` whose
    image exists; lines "path id [cam [style]]"."""
    entries, problems = [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit() or \
                (len(fields) > 2 and not fields[2].lstrip("-").isdigit()):
            problems.append(("layout", f"{path}, line {number}: expected 'path id cam style' "
                                       f"with integer id and cam, got {line.strip()[:60]!r}"))
            continue
        image = folder / fields[0]
        if not image.is_file():
            kind = "missing_sketches" if fields[0].startswith("sketch") else "missing_files"
            problems.append((kind, f"{path}, line {number}: missing image {image}"))
            continue
        entries.append((image, int(fields[1]), int(fields[2]) if len(fields) > 2 else None))
    return entries, problems


def photos_of_people(photos_of: dict, ids) -> list:
    """``(path, id, cam)`` of every photo of the people ``ids``, by id then name."""
    return [(path, pid, cam) for pid in sorted(set(ids)) for path, cam in photos_of.get(pid, ())]


def visible_list_mismatches(folder: Path, path: Path, photos: list) -> dict:
    """Where the visible list at ``path`` disagrees with ``photos`` (``(path, id, cam)``,
    every photo of the split's people in ``photo/``): ``{"missing": [(line, image)],
    "outside": [(line, image)], "left_out": [image], "malformed": [line]}``: lines naming
    a photo that is not in ``photo/``, lines naming a photo of someone else, photos the
    list leaves out, lines that are not "path id ..."."""
    expected = {image for image, _, _ in photos}
    found = {"missing": [], "outside": [], "left_out": [], "malformed": []}
    named = set()
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
            found["malformed"].append(number)
            continue
        image = folder / fields[0]
        named.add(image)
        if not image.is_file():
            found["missing"].append((number, image))
        elif image not in expected:
            found["outside"].append((number, image))
    found["left_out"] = sorted(expected - named)
    return found


def _log_visible_list(folder: Path, path: Path, photos: list, where: str) -> None:
    """Warn where the visible list disagrees with the photos taken from ``photo/``."""
    if not path.is_file():
        return
    found = visible_list_mismatches(folder, path, photos)
    def names(items):
        shown = ", ".join(Path(image).name for image in items[:3])
        return shown + (", ..." if len(items) > 3 else "")
    said = []
    if found["missing"]:
        said.append(f"names {len(found['missing'])} photo(s) not in photo/ "
                    f"({names([image for _, image in found['missing']])})")
    if found["outside"]:
        said.append(f"names {len(found['outside'])} photo(s) of people outside its sketch list "
                    f"({names([image for _, image in found['outside']])})")
    if found["left_out"]:
        said.append(f"leaves out {len(found['left_out'])} photo(s) of its people that are in "
                    f"photo/ ({names(found['left_out'])})")
    if found["malformed"]:
        said.append(f"has {len(found['malformed'])} line(s) that are not 'path id cam style' "
                    f"(line {', '.join(map(str, found['malformed'][:3]))})")
    if said:
        log.warning("%s: %s %s; the photos are every photo of the split's people in photo/ "
                    "(%d), as the paper's code takes them", where, path, "; ".join(said),
                    len(photos))


def _indexed_split(folder: Path, trial: int, part: str) -> tuple:
    """The people of the sketch list, every photo of theirs in ``photo/``."""
    index_dir = folder / "idx"
    path = require_path(index_dir / f"{part}_sketch_{trial}.txt",
                        f"PKU-Sketch {part} sketch list of trial {trial}", LAYOUT)
    entries, problems = parse_index(folder, path)
    photos_of, photo_problems = scan_photos(folder)
    stop_at_first(problems + photo_problems)
    sketches = [(image, pid, SKETCH_CAM if cam is None else cam) for image, pid, cam in entries]
    photos = photos_of_people(photos_of, [pid for _, pid, _ in sketches])
    _log_visible_list(folder, index_dir / f"{part}_visible_{trial}.txt", photos,
                      f"PKU-Sketch trial {trial} {part}")
    return photos, sketches


def load_split(root: Path, trial, seed, part: str) -> tuple:
    """``(photos, sketches)`` of ``part`` ("train" or "test") of a trial, each a list of
    ``(path, id, cam)``: from ``idx/`` when it exists, else drawn as ``datasets.prepare``
    would. Sketch cams never equal a photo cam."""
    folder, trial = _folder(root), _trial(trial)
    if (folder / "idx").is_dir():
        photos, sketches = _indexed_split(folder, trial, part)
    else:
        log.info("PKU-Sketch: no idx/ folder in %s; drew the split of trial %d within the "
                 "sketch styles from random.Random(seed * 1000 + trial) with seed=%d (what "
                 "python -m datasets.prepare pku-sketch writes)", folder, trial, int(seed or 0))
        photos, sketches = drawn_split(root, trial, seed, part)
    photo_cams = {cam for _, _, cam in photos}
    if any(cam in photo_cams for _, _, cam in sketches):
        free = min(photo_cams | {SKETCH_CAM}) - 1 if SKETCH_CAM in photo_cams else SKETCH_CAM
        log.warning("PKU-Sketch trial %d: sketch cameras shared a number with photo cameras; "
                    "sketches get camera %d", trial, free)
        sketches = [(path, pid, free) for path, pid, _ in sketches]
    return photos, sketches


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

def parse_captions(path: Path) -> tuple:
    """``({id: [caption, ...]}, problems)`` from ``TriReID.txt``, in file order."""
    captions, problems = {}, []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        name, at, caption = line.partition("@")
        pid, slash, _ = name.strip().partition("/")
        if not at or not slash or not pid.strip().lstrip("-").isdigit():
            problems.append(("layout", f"{path}, line {number}: expected "
                                       f"'<id>/<photo>@<caption>', got {line.strip()[:80]!r}"))
            continue
        captions.setdefault(int(pid), []).append(caption.strip())
    return captions, problems


def read_captions(path: Path) -> dict:
    captions, problems = parse_captions(path)
    stop_at_first(problems)
    return captions


def _captions(folder: Path) -> dict:
    return read_captions(require_path(folder / CAPTION_FILE, "PKU-Sketch captions", LAYOUT))


def choose_caption(captions: list, seed, trial, pid: int) -> str:
    """The feedback caption of person ``pid``: the same for the same seed and trial."""
    if not captions:
        return ""
    return random.Random(int(seed or 0) * 7 + _trial(trial) + pid).choice(captions)


# ----------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------

def train_samples(root: Path, trial, seed, reference_indexing: bool = False) -> list:
    """One sample per training sketch, paired with its person's training photos and
    captions; labels 0..N-1 follow the sorted person ids.

    ``reference_indexing`` reproduces how the paper's code indexes this training set: item
    i is photo i with the sketch and label of person i // 2, over as many items as there
    are sketches, so only the first half of the people (by sorted id) is trained on, each
    with both photos.
    """
    photos, sketches = load_split(root, trial, seed, "train")
    captions = _captions(_folder(root))
    photos_of = {}
    for path, pid, _ in photos:
        photos_of.setdefault(pid, []).append(path)
    for path, pid, _ in sketches:
        if pid not in photos_of:
            raise DatasetError(f"PKU-Sketch trial {_trial(trial)}: training sketch {path} "
                               f"has no training photo of person {pid}")
    labels = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in sketches}))}
    samples = [TrainSample(labels[pid], tuple(photos_of[pid]), path,
                           tuple(captions.get(pid, ())), feedback=tuple(captions.get(pid, ())))
               for path, pid, _ in sketches]
    if reference_indexing:
        ordered = sorted(samples, key=lambda sample: sample.label)
        photo_items = [(sample, photo) for sample in ordered for photo in sample.photos]
        samples = [dataclasses.replace(ordered[item // 2], photos=(photo_items[item][1],))
                   for item in range(len(ordered))]
        log.info("PKU-Sketch trial %d: data.pku_reference_indexing=true, training on the "
                 "first %d of %d people", _trial(trial), len({s.label for s in samples}),
                 len(labels))
    log.info("PKU-Sketch trial %d train: %d sketches of %d people", _trial(trial),
             len(samples), len(labels))
    return samples


def eval_set(root: Path, trial, seed, split: str) -> EvalSet:
    """Test photos as gallery, test sketches as queries; each query's feedback is one
    caption of its person, as written."""
    _check_split(split)
    photos, sketches = load_split(root, trial, seed, "test")
    captions = _captions(_folder(root))
    sketch_ids = [pid for _, pid, _ in sketches]
    texts = [choose_caption(captions.get(pid, []), seed, trial, pid) for pid in sketch_ids]
    uncaptioned = sum(1 for text in texts if not text)
    if uncaptioned:
        log.warning("PKU-Sketch trial %d: %d of %d test sketches have no caption in %s; "
                    "their feedback is empty", _trial(trial), uncaptioned, len(texts),
                    CAPTION_FILE)
    return EvalSet(name="pku-sketch", gallery_paths=[path for path, _, _ in photos],
                   gallery_ids=[pid for _, pid, _ in photos],
                   gallery_cams=[cam for _, _, cam in photos],
                   sketch_paths=[path for path, _, _ in sketches], sketch_ids=sketch_ids,
                   sketch_cams=[cam for _, _, cam in sketches], text_queries=texts,
                   text_ids=list(sketch_ids), feedback=list(texts))


# ----------------------------------------------------------------------------
# From the config (the interface every loader offers ``datasets``) and the checker
# ----------------------------------------------------------------------------

def config_train_samples(cfg, members: list, trial=None) -> list:
    return train_samples(Path(cfg.data.root), trial, cfg.seed, cfg.data.pku_reference_indexing)


def config_eval_sets(cfg, members: list, split: str, trial=None) -> list:
    return [eval_set(Path(cfg.data.root), trial, cfg.seed, split)]


def config_has_split(cfg, members: list, split: str) -> bool:
    return split == "test"


def scan(report, cfg, members: list) -> None:
    """``datasets.check``: counts of every trial in ``data.trials``, and every problem."""
    trials = cfg.data.trials
    if not isinstance(trials, list) or not trials or \
            not all(isinstance(t, int) and not isinstance(t, bool) for t in trials):
        raise ConfigError(f"data.trials must be a non-empty list of integers, got {trials!r}")
    _scan(report, Path(cfg.data.root), trials, int(cfg.seed or 0))


def _index_for_check(report, folder: Path, path: Path) -> list:
    """``(path, id)`` of the lines of an idx file whose image exists; the others are
    problems."""
    if not path.is_file():
        report.problem("layout", f"no split file {report.name(path)}")
        return []
    entries, problems = parse_index(folder, path)
    for kind, message in problems:
        report.problem(kind, message, key=message.split(": ", 1)[-1])
    return [(image, pid) for image, pid, _ in entries]


def _listed_people(path: Path) -> set:
    """The ids of a split file's well-formed lines, whether their image exists or not (a
    missing sketch is a problem of its own)."""
    if not path.is_file():
        return set()
    return {int(fields[1]) for fields in map(str.split, read_lines(path))
            if len(fields) > 1 and fields[1].lstrip("-").isdigit()}


def _indexed_for_check(report, folder: Path, trial: int) -> dict:
    """``{part: (photos, sketches)}`` of a trial with ``idx/``, as the loader reads it: the
    people of the sketch list, their photos from ``photo/``; where a visible list disagrees
    with those, a warning per line or photo."""
    photos_of, problems = scan_photos(folder)
    for kind, message in problems:
        report.problem(kind, message)
    parts = {}
    for part in ("train", "test"):
        sketch_list = folder / "idx" / f"{part}_sketch_{trial}.txt"
        sketches = _index_for_check(report, folder, sketch_list)
        photos = photos_of_people(photos_of, _listed_people(sketch_list))
        visible = folder / "idx" / f"{part}_visible_{trial}.txt"
        if visible.is_file():
            found = visible_list_mismatches(folder, visible, photos)
            where = report.name(visible)
            for number, image in found["missing"]:
                report.warning("split_lists", f"{where}, line {number}: names "
                                              f"{report.name(image)}, which is not in photo/")
            for number, image in found["outside"]:
                report.warning("split_lists", f"{where}, line {number}: names "
                                              f"{report.name(image)}, a photo of someone outside "
                                              f"{sketch_list.name}")
            for image in found["left_out"]:
                report.warning("split_lists", f"{where}: leaves out {report.name(image)}, a photo "
                                              f"of one of its people")
            for number in found["malformed"]:
                report.warning("split_lists", f"{where}, line {number}: not 'path id cam style'")
        parts[part] = ([(path, pid) for path, pid, _ in photos], sketches)
    return parts


def _drawn_for_check(report, folder: Path, trial: int, seed: int) -> dict:
    """``{part: (photos, sketches)}`` of a trial drawn as the loader draws it."""
    photos_of, problems = scan_photos(folder)
    sketch_of, sketch_problems = scan_sketches(folder)
    styles, style_problems = read_styles(folder)
    for kind, message in problems + sketch_problems + style_problems:
        report.problem(kind, message)
    try:
        parts_ids = trial_split(list(photos_of), styles, trial, seed)
    except DatasetError as error:
        report.problem("empty_splits", f"PKU-Sketch trial {trial}: {error}")
        return {"train": ([], []), "test": ([], [])}
    parts = {}
    for part, ids in zip(("train", "test"), parts_ids):
        photos, sketches = [], []
        for pid in ids:
            photos.extend((path, pid) for path, _ in photos_of[pid])
            if pid in sketch_of:
                sketches.append((sketch_of[pid], pid))
            else:
                report.problem("missing_sketches", f"{report.name(folder / 'sketch')}/{pid}.jpg "
                                                   f"(person {pid} has photos)")
        parts[part] = (photos, sketches)
    return parts


def _scan(report, root: Path, trials: list, seed: int) -> None:
    folder = _folder(root)  # data.root and the dataset folder: input errors
    caption_path = folder / CAPTION_FILE
    captions = {}
    if caption_path.is_file():
        captions, problems = parse_captions(caption_path)
        for kind, message in problems:
            report.problem(kind, message)
    else:
        report.problem("layout", f"no caption file {report.name(caption_path)}")
    index_dir = folder / "idx"
    report.pku_splits = "idx/" if index_dir.is_dir() else f"drawn from seed={seed}"
    table = report.table(f"{folder.name} (splits: {report.pku_splits})",
                         ["identities", "photos", "sketches", "captions"])
    every = {"ids": set(), "photos": set(), "sketches": set()}
    for trial in trials:
        if index_dir.is_dir():
            parts = _indexed_for_check(report, folder, trial)
        else:
            parts = _drawn_for_check(report, folder, trial, seed)
        for part, (photos, sketches) in parts.items():
            photo_ids = {pid for _, pid in photos}
            sketch_ids = {pid for _, pid in sketches}
            ids = photo_ids | sketch_ids
            report.photos_and_sketches(photos, sketches, f"PKU-Sketch trial {trial} {part}",
                                       training=part == "train")
            if not photos or not sketches:
                missing = "photos" if not photos else "sketches"
                report.problem("empty_splits", f"PKU-Sketch trial {trial} {part}: no {missing}")
            table["rows"][f"trial {trial} {part}"] = {
                "identities": len(ids), "photos": len(photos), "sketches": len(sketches),
                "captions": sum(len(captions.get(pid, ())) for pid in ids)}
            every["ids"] |= ids
            every["photos"] |= {path for path, _ in photos}
            every["sketches"] |= {path for path, _ in sketches}
    table["rows"]["all trials"] = {
        "identities": len(every["ids"]), "photos": len(every["photos"]),
        "sketches": len(every["sketches"]),
        "captions": sum(len(captions.get(pid, ())) for pid in every["ids"])}
