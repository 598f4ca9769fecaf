"""Per-dataset plans: who is in each split, file names, annotation files and image jobs.

Planning writes nothing: :func:`plan_dataset` returns a :class:`Plan` whose jobs
say which image to render where, from which random stream, and whose texts and
mats hold the annotation files, for :mod:`.writer` to write.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .captions import (
    _CAPTIONERS,
    _CAPTIONS_PER_PHOTO,
    caption_attributes_bt,
    caption_bt,
    caption_cuhk,
)
from .drawing import STYLES
from .persons import _CODES, DATASETS, MARKET_FIELDS, Person, _pick, _rng, make_families

FOLDERS = {
    "cuhk-pedes": "CUHK-PEDES",
    "icfg-pedes": "ICFG-PEDES",
    "rstpreid": "RSTPReid",
    "mask1k": "Market-Sketch-1K",
    "pku-sketch": "PKU-Sketch",
}
# people at scale 1; families (6 to 12 people) never straddle two splits, so every split
# needs a whole one: the fewest people that give each split a family (6 + 6 + 8 for the
# three PEDES splits, 6 + 6 for Market's two)
_BASE_PEOPLE = {"cuhk-pedes": 140, "icfg-pedes": 130, "rstpreid": 110,
                "mask1k": 120, "pku-sketch": 200}
_MIN_PEOPLE = {"cuhk-pedes": 20, "icfg-pedes": 20, "rstpreid": 20,
               "mask1k": 12, "pku-sketch": 8}
_MIN_FAMILIES = {"cuhk-pedes": 3, "icfg-pedes": 3, "rstpreid": 3, "mask1k": 2, "pku-sketch": 1}


def _n_people(dataset: str, scale: float) -> int:
    return max(_MIN_PEOPLE[dataset], int(round(_BASE_PEOPLE[dataset] * float(scale))))


def _take_families(rng, families: list[list], target: int) -> tuple[list[list], list[list]]:
    """Pick whole families (in random order) until about ``target`` people are taken
    (at most 3 more); at least one, the smallest, when none fits, and never all."""
    order = [families[int(i)] for i in rng.permutation(len(families))]
    taken, count = [], 0
    for k, fam in enumerate(order):
        if len(taken) == len(order) - 1:       # leave one for the other split(s)
            break
        if count < target and count + len(fam) <= target + 3:
            taken.append(k)
            count += len(fam)
    if not taken:
        taken = [min(range(len(order)), key=lambda k: len(order[k]))]
    return ([order[k] for k in taken],
            [fam for k, fam in enumerate(order) if k not in taken])


# Image jobs.  ``seed_key`` keys the image's own random stream, ``_rng(*seed_key)``:
# (seed, dataset code, 10 for a photo and its traced sketch | 12 for a drawn sketch,
# pid, photo number | style index), so an image does not depend on which process
# renders it.  Paths are the files to write, under the ``root`` given to plan_dataset.

@dataclass(frozen=True)
class PhotoJob:
    """A photo of ``person`` written to ``photo``."""

    seed_key: tuple[int, ...]
    person: Person
    photo: str

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.photo,)


@dataclass(frozen=True)
class TracedJob:
    """A photo of ``person`` and the sketch traced from its figure (same pose)."""

    seed_key: tuple[int, ...]
    person: Person
    photo: str
    sketch: str

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.photo, self.sketch)


@dataclass(frozen=True)
class DrawnJob:
    """A sketch of ``person`` drawn anew in ``style`` (one of ``STYLES``)."""

    seed_key: tuple[int, ...]
    person: Person
    sketch: str
    style: str

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.sketch,)


Job = PhotoJob | TracedJob | DrawnJob


@dataclass
class Plan:
    """Who is in dataset ``name`` and every file to write for it."""

    name: str
    people: list[Person]
    jobs: list[Job] = field(default_factory=list)
    # relative path -> JSON, text or bytes
    texts: dict[str, object] = field(default_factory=dict)
    mats: dict[str, dict] = field(default_factory=dict)      # relative path -> savemat dict
    styles: dict[int, list[str]] = field(default_factory=dict)  # person -> styles drawn (STYLES)
    photos: int = 0
    sketches: int = 0
    rows: list[dict] = field(default_factory=list)  # the manifest layout's rows, else empty


def _assign(families, split, ids) -> list[Person]:
    people = []
    members = [m for fam in families for m in fam]
    for m, pid in zip(members, ids):
        people.append(Person(pid=int(pid), split=split, **m))
    return people


# CUHK-PEDES gathered its photos from five re-id sets and keeps each one's folder and file
# names; four of those forms are imitated here.
CUHK_SOURCES = ("CUHK01", "VIPeR", "CUHK-SYSU", "Market")
VIPER_ANGLES = (0, 45, 90, 135, 180)
SKETCH_FOLDER = {"cuhk-pedes": "imgs-sketch2", "icfg-pedes": "imgs-sketch",
                 "rstpreid": "imgs-sketch"}


def _cuhk_photo_paths(seed: int, code: int, people: Sequence[Person]) -> dict[int, list[str]]:
    """The two photo paths (under ``imgs/``) of every person, in the folder of its source.

    Sources go round a shuffled list of the people, so every source occurs.
    """
    rng = _rng(seed, code, 13)
    order = rng.permutation(len(people))
    source = {people[int(j)].pid: CUHK_SOURCES[r % len(CUHK_SOURCES)] for r, j in enumerate(order)}
    # CUHK-SYSU query crops are named after their scene image: one scene number per photo
    scenes = iter(1 + rng.choice(max(20000, 4 * len(people)), size=2 * len(people), replace=False))
    paths = {}
    for p in people:
        prng = _rng(seed, code, 14, p.pid)
        src = source[p.pid]
        if src == "CUHK01":
            paths[p.pid] = [f"CUHK01/{p.pid:04d}{k:03d}.png" for k in (1, 2)]
        elif src == "VIPeR":
            a, b = (int(x) for x in prng.choice(VIPER_ANGLES, size=2))
            paths[p.pid] = [f"cam_a/{p.pid:03d}_{a}.bmp", f"cam_b/{p.pid:03d}_{b}.bmp"]
        elif src == "CUHK-SYSU":
            folder = "train_query" if p.split == "train" else "test_query"
            paths[p.pid] = [f"{folder}/p{p.pid}_s{int(next(scenes))}.jpg" for _ in (1, 2)]
        else:
            frames = prng.integers(1, 160000, size=2)
            paths[p.pid] = [f"Market/{p.pid:04d}_c{k}s1_{int(f):06d}_01.jpg"
                            for k, f in zip((1, 2), frames)]
    return paths


def _icfg_photo_paths(seed: int, code: int, people: Sequence[Person]) -> dict[int, list[str]]:
    """MSMT17 names: ``<train|test>/<pid>/<pid>_<k>_<cam>_0302morning_<frame>_0.jpg``."""
    paths = {}
    for p in people:
        prng = _rng(seed, code, 14, p.pid)
        cams = prng.choice(np.arange(1, 16), size=2, replace=False)
        frames = prng.integers(1, 10000, size=2)
        folder = "train" if p.split == "train" else "test"
        paths[p.pid] = [f"{folder}/{p.pid:04d}/{p.pid:04d}_{k:03d}_{int(c):02d}"
                        f"_0302morning_{int(f):04d}_0.jpg"
                        for k, c, f in zip((1, 2), cams, frames)]
    return paths


def _rstp_photo_paths(seed: int, code: int, people: Sequence[Person]) -> dict[int, list[str]]:
    """RSTPReid names, all in one folder: ``<pid>_c<cam>_<frame>.jpg``."""
    paths = {}
    for p in people:
        prng = _rng(seed, code, 14, p.pid)
        cams = prng.choice(np.arange(1, 16), size=2, replace=False)
        frames = prng.integers(1, 10000, size=2)
        paths[p.pid] = [f"{p.pid:04d}_c{int(c)}_{int(f):04d}.jpg" for c, f in zip(cams, frames)]
    return paths


_PHOTO_PATHS = {"cuhk-pedes": _cuhk_photo_paths, "icfg-pedes": _icfg_photo_paths,
                "rstpreid": _rstp_photo_paths}


def _sketch_path(photo_rel: str) -> str:
    """Where the traced sketch of a photo goes: same path, but BMP photos get JPEG sketches."""
    path = Path(photo_rel)
    return str(path.with_suffix(".jpg")) if path.suffix == ".bmp" else photo_rel


def _plan_pedes(name: str, seed: int, scale: float, root: str) -> Plan:
    code = _CODES[name]
    n = _n_people(name, scale)
    families = make_families(seed, name, n, _MIN_FAMILIES[name])
    rng = _rng(seed, code, 2)
    n_test = max(2, int(round(0.2 * n)))
    n_val = max(2, int(round(0.1 * n)))
    test, rest = _take_families(rng, families, n_test)
    val, train = _take_families(rng, rest, n_val)
    people, next_id = [], 1
    for split, fams in (("train", train), ("val", val), ("test", test)):
        count = sum(len(fam) for fam in fams)
        ids = next_id + rng.permutation(count)
        people += _assign(fams, split, ids)
        next_id += count
    people.sort(key=lambda q: q.pid)
    plan = Plan(name, people)
    caption = _CAPTIONERS[name]
    paths = _PHOTO_PATHS[name](seed, code, people)
    photos = Path(root) / "imgs"
    sketches = Path(root) / SKETCH_FOLDER[name]
    entries = []
    for p in people:
        # every photo also gets the person's Market attribute sentence, the stage-2 words
        attributes = attribute_sentence(p)
        for k, rel in zip((1, 2), paths[p.pid]):
            plan.jobs.append(TracedJob((seed, code, 10, p.pid, k), p, str(photos / rel),
                                       str(sketches / _sketch_path(rel))))
            crng = _rng(seed, code, 11, p.pid, k)
            n_cap = _pick(crng, _CAPTIONS_PER_PHOTO[name])
            caps = []
            while len(caps) < n_cap:
                c = caption(p, crng)
                if c not in caps:
                    caps.append(c)
            caps.append(attributes)
            if name == "rstpreid":      # the dataset's own annotation file
                entries.append({"id": p.pid, "img_path": rel, "captions": caps, "split": p.split})
                continue
            entry = {"id": p.pid, "file_path": rel, "captions": caps, "split": p.split}
            if p.split == "train" and crng.random() < 0.5:
                bts = []
                while len(bts) < len(caps) - 1:
                    c = caption_bt(p, crng)
                    if c not in bts and c not in caps:
                        bts.append(c)
                bts.append(caption_attributes_bt(p, crng))   # at the sentence's position
                entry["captions_bt"] = bts
            entries.append(entry)
    if name == "rstpreid":
        plan.texts["data_captions.json"] = entries
    else:                               # TBPS-CLIP's split files
        for split in ("train", "val", "test"):
            plan.texts[f"{split}_reid.json"] = [e for e in entries if e["split"] == split]
    plan.photos = plan.sketches = 2 * len(people)
    return plan


# Market-Sketch-1K names a sketch <pid>.jpg in some style folders and <pid>_<style>.jpg in others
_MARKET_BARE_NAMES = ("A", "C", "E")


def market_sketch_name(pid: int, style: str) -> str:
    """File name of person ``pid``'s sketch in style folder ``style`` of Market-Sketch-1K."""
    return f"{pid:04d}.jpg" if style in _MARKET_BARE_NAMES else f"{pid:04d}_{style}.jpg"


def _plan_market(seed: int, scale: float, root: str) -> Plan:
    name = "mask1k"
    code = _CODES[name]
    n = _n_people(name, scale)
    families = make_families(seed, name, n, _MIN_FAMILIES[name])
    rng = _rng(seed, code, 2)
    query, train = _take_families(rng, families, n // 2)
    n_train, n_query = sum(map(len, train)), sum(map(len, query))
    ids = rng.choice(np.arange(1, 1502), size=n_train + n_query, replace=False)
    people = _assign(train, "train", ids[:n_train]) + _assign(query, "query", ids[n_train:])
    people.sort(key=lambda q: (q.split != "train", q.pid))
    plan = Plan(name, people)
    for p in people:
        prng = _rng(seed, code, 3, p.pid)
        n_photos = int(prng.integers(2, 5))
        cams = sorted(int(c) for c in prng.choice(np.arange(1, 7), size=n_photos, replace=False))
        for k, cam in enumerate(cams):
            frame = int(prng.integers(1, 160000))
            fname = f"{p.pid:04d}_c{cam}s{int(prng.integers(1, 7))}_{frame:06d}_00.jpg"
            plan.jobs.append(PhotoJob((seed, code, 10, p.pid, k), p,
                                      str(Path(root, "photo", p.split, fname))))
            plan.photos += 1
        n_styles = int(prng.integers(2, 7))
        chosen = sorted(prng.choice(len(STYLES), size=n_styles, replace=False).tolist())
        plan.styles[p.pid] = [STYLES[si] for si in chosen]
        for si in chosen:
            st = STYLES[si]
            sketch = Path(root, "sketch", st, p.split, market_sketch_name(p.pid, st))
            plan.jobs.append(DrawnJob((seed, code, 12, p.pid, si), p, str(sketch), st))
            plan.sketches += 1
    plan.mats["market_attribute.mat"] = market_attribute_struct(people)
    return plan


def market_attribute_struct(people: Sequence[Person]) -> dict:
    """``{"market_attribute": {"train": ..., "test": ...}}`` ready for ``savemat``."""
    out = {}
    for key, split in (("train", "train"), ("test", "query")):
        group = [p for p in people if p.split == split]
        attrs = [p.market_attributes() for p in group]
        sub = {f: np.array([[a[f] for a in attrs]], dtype=np.float64).reshape(1, -1)
               for f in MARKET_FIELDS}
        index = np.empty((1, len(group)), dtype=object)
        for i, p in enumerate(group):
            index[0, i] = f"{p.pid:04d}"
        sub["image_index"] = index
        out[key] = sub
    return {"market_attribute": out}


# PKU-Sketch's five painting styles a..e are drawn as the generator's styles A..E
PKU_STYLES = STYLES[:5]
PKU_CAMERA_PAIRS = ((3, 5), (4, 6), (5, 7))


def _plan_pku(seed: int, scale: float, root: str) -> Plan:
    name = "pku-sketch"
    code = _CODES[name]
    n = _n_people(name, scale)
    families = make_families(seed, name, n, _MIN_FAMILIES[name])
    rng = _rng(seed, code, 2)
    members = [m for fam in families for m in fam]
    ids = 1 + rng.permutation(len(members))
    people = sorted((Person(pid=int(i), split="all", **m) for m, i in zip(members, ids)),
                    key=lambda q: q.pid)
    plan = Plan(name, people)
    # styles go round a shuffled list of the people, so each style has about n / 5 of them
    order = _rng(seed, code, 4).permutation(len(people))
    style_of = {people[int(j)].pid: r % len(PKU_STYLES) for r, j in enumerate(order)}
    lines = []
    for p in people:
        prng = _rng(seed, code, 3, p.pid)
        cams = PKU_CAMERA_PAIRS[int(prng.integers(len(PKU_CAMERA_PAIRS)))]
        frames = prng.integers(1, 30001, size=2)
        for k, cam, frame in zip((1, 2), cams, frames):
            fname = f"{p.pid}_{cam:02d}_{int(frame)}.jpg"
            plan.jobs.append(PhotoJob((seed, code, 10, p.pid, k), p,
                                      str(Path(root, "photo", fname))))
            crng = _rng(seed, code, 11, p.pid, k)
            # PKU's feedback texts: what a witness says, the sketch-only traits left out
            lines.append(f"{p.pid}/{fname}@{caption_cuhk(p, crng, shapes=False)}")
        si = style_of[p.pid]
        plan.styles[p.pid] = [STYLES[si]]
        plan.jobs.append(DrawnJob((seed, code, 12, p.pid, si), p,
                                  str(Path(root, "sketch", f"{p.pid}.jpg")), STYLES[si]))
    plan.photos, plan.sketches = 2 * len(people), len(people)
    # the released file starts with a UTF-8 byte-order mark and ends its lines with CRLF
    trireid = "\ufeff" + "".join(line + "\r\n" for line in lines)
    plan.texts["TriReID.txt"] = trireid.encode("utf-8")
    for si, style in enumerate(PKU_STYLES):
        pids = [p.pid for p in people if style_of[p.pid] == si]
        rel = f"styleAnnotation/{style.lower()}_{len(pids)}.txt"
        plan.texts[rel] = "".join(f"{i}\n" for i in pids)
    return plan


# The manifest layout (``datasets.manifest``): a dataset's people as a row per photo.
MANIFEST_FOLDERS = {"mask1k": "Market-Sketch-1K-manifest"}
MANIFEST_FILES = ("manifest.jsonl", "manifest.csv")
MANIFEST_COLUMNS = ("image", "person_id", "camera", "split", "captions", "sketches", "feedback")
QUERY_PHOTO = 50  # photo number, in the seed key, of a query row's own photo
_MARKET_CAMERA = re.compile(r"_c(\d)s")


def _plan_manifest_market(seed: int, scale: float, root: str) -> Plan:
    """Market-Sketch-1K's people as a manifest: the same photos and sketches (the same
    random streams, so the same bytes) in ``photos/{train,gallery}/`` and
    ``sketches/<style>/{train,query}/``, and ``manifest.jsonl`` / ``manifest.csv``.

    Train rows: a person's photos, its sketches dealt round them, one or two detailed
    captions each. Gallery rows: the test photos (Market's ``photo/query/``), with their
    camera and nothing else. Query rows: one per test person, a photo of its own in
    ``photos/query/`` from a camera none of its gallery photos has (so the camera rule
    leaves nothing out, as Market-Sketch-1K, whose sketches have no camera), with all its
    test sketches and one or two detailed captions. Every row's feedback is its person's
    Market attribute sentence, the stage-2 feedback of the named dataset.
    """
    market = _plan_market(seed, scale, root)
    code = _CODES["mask1k"]
    plan = Plan("mask1k", market.people, styles=market.styles)
    photos_of, sketches_of = {}, {}
    for job in market.jobs:
        split = job.person.split
        if isinstance(job, PhotoJob):
            folder = "train" if split == "train" else "gallery"
            job = replace(job, photo=str(Path(root, "photos", folder, Path(job.photo).name)))
            photos_of.setdefault(job.person.pid, []).append(job)
        else:
            style_folder = Path(job.sketch).parent.parent.name
            job = replace(job, sketch=str(Path(root, "sketches", style_folder, split,
                                               Path(job.sketch).name)))
            sketches_of.setdefault(job.person.pid, []).append(job)
        plan.jobs.append(job)

    def relative(path: str) -> str:
        return Path(path).relative_to(root).as_posix()

    def captions(p: Person, number: int) -> list[str]:
        crng = _rng(seed, code, 15, p.pid, number)
        count = _pick(crng, _CAPTIONS_PER_PHOTO["cuhk-pedes"])
        texts = []
        while len(texts) < count:
            text = caption_cuhk(p, crng)
            if text not in texts:
                texts.append(text)
        return texts

    train, queries, gallery = [], [], []
    for p in market.people:
        feedback = attribute_sentence(p)
        photos, sketches = photos_of[p.pid], [job.sketch for job in sketches_of[p.pid]]
        cams = [int(_MARKET_CAMERA.search(Path(job.photo).name).group(1)) for job in photos]
        if p.split == "train":
            for k, job in enumerate(photos):
                train.append({"image": relative(job.photo), "person_id": p.pid, "camera": cams[k],
                              "split": "train", "captions": captions(p, k),
                              "sketches": [relative(path) for path in sketches[k::len(photos)]],
                              "feedback": feedback})
            continue
        gallery += [{"image": relative(job.photo), "person_id": p.pid, "camera": cam,
                     "split": "gallery"} for job, cam in zip(photos, cams)]
        cam = min(set(range(1, 7)) - set(cams))
        photo = str(Path(root, "photos", "query", f"{p.pid:04d}_c{cam}_query.jpg"))
        plan.jobs.append(PhotoJob((seed, code, 10, p.pid, QUERY_PHOTO), p, photo))
        queries.append({"image": relative(photo), "person_id": p.pid, "camera": cam,
                        "split": "query", "captions": captions(p, QUERY_PHOTO),
                        "sketches": [relative(path) for path in sketches],
                        "feedback": feedback})
    # a train photo without sketches is a row without the field
    plan.rows = [{key: value for key, value in row.items() if value != []}
                 for row in train + queries + gallery]
    plan.photos = sum(isinstance(job, PhotoJob) for job in plan.jobs)
    plan.sketches = sum(isinstance(job, DrawnJob) for job in plan.jobs)
    plan.texts["manifest.jsonl"] = "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                           for row in plan.rows)
    plan.texts["manifest.csv"] = manifest_csv(plan.rows)
    return plan


def manifest_csv(rows: Sequence[dict]) -> str:
    """Manifest rows as CSV text: a header, then a line per row, lists joined with ``|``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow(["|".join(value) if isinstance(value, list) else
                         "" if value is None else value
                         for value in (row.get(column) for column in MANIFEST_COLUMNS)])
    return out.getvalue()


def plan_manifest(name: str, seed: int = 0, scale: float = 1.0, root: str = "") -> Plan:
    """Dataset ``name``'s people in the manifest layout (nothing is written)."""
    if name not in MANIFEST_FOLDERS:
        raise ValueError(f"the manifest layout is written for {', '.join(MANIFEST_FOLDERS)}, "
                         f"not {name!r}")
    return _plan_manifest_market(seed, scale, root)


def attribute_sentence(person: Person) -> str:
    """``person``'s Market attribute sentence, the stage-2 text feedback (the loaders' own
    :func:`datasets.market_sketch.feedback_sentence`)."""
    from datasets.market_sketch import feedback_sentence  # imports torch: only when needed

    return feedback_sentence(person.market_attributes())


def plan_dataset(name: str, seed: int = 0, scale: float = 1.0, root: str = "") -> Plan:
    """Who is in dataset ``name`` and which files to write (nothing is written)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == "mask1k":
        return _plan_market(seed, scale, root)
    if name == "pku-sketch":
        return _plan_pku(seed, scale, root)
    return _plan_pedes(name, seed, scale, root)


def people(name: str, seed: int = 0, scale: float = 1.0) -> list[Person]:
    """The people of dataset ``name`` as :func:`generate` draws them."""
    return plan_dataset(name, seed, scale).people
