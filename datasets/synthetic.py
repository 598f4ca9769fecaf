"""Procedural synthetic people written in the on-disk layouts of the real datasets.

Nothing here needs a download: every person is drawn with PIL from a handful of
attributes, and five small datasets are written exactly where and how the
loaders expect the real ones::

    python -m datasets.synthetic --out data/synthetic [--seed 0] [--scale 1.0]
    python -m datasets.synthetic --out data/synthetic --datasets pku-sketch --overwrite

or from Python ``generate("data/synthetic", seed=0, scale=0.2)``.

Folders written under ``--out`` (each one only if it is not there already), in
the forms the datasets are downloaded in; every person has two photos (Market:
two to four) and every image file is in the format its suffix names:

``CUHK-PEDES/``
    TBPS-CLIP's ``{train,val,test}_reid.json`` (lists of ``{"id", "file_path",
    "captions", "split"}``, some train entries also ``"captions_bt"``); photos
    in ``imgs/<file_path>``, each person's in the folder of one source set:
    ``CUHK01/<pid:04d><k:03d>.png`` (PNG), ``cam_a/<pid:03d>_<angle>.bmp`` and
    ``cam_b/<pid:03d>_<angle>.bmp`` (VIPeR, BMP), ``train_query/p<pid>_s<n>.jpg``
    or, for val and test people, ``test_query/p<pid>_s<n>.jpg`` (CUHK-SYSU), or
    ``Market/<pid:04d>_c<k>s1_<frame:06d>_01.jpg``; sketches traced from them in
    ``imgs-sketch2/`` (the Tri-PEDES release's folder) at the same path, a
    ``.jpg`` for a ``.bmp`` photo.
``ICFG-PEDES/``
    ``{train,val,test}_reid.json`` as above; photos named as in MSMT17,
    ``imgs/<train|test>/<pid:04d>/<pid:04d>_<k:03d>_<cam:02d>_0302morning_<frame:04d>_0.jpg``
    (``test`` for val and test people), sketches in ``imgs-sketch/`` at the same path.
``RSTPReid/``
    the dataset's own ``data_captions.json``, one list of ``{"id", "img_path",
    "captions", "split"}`` with ``img_path`` ``<pid:04d>_c<cam>_<frame:04d>.jpg``;
    photos in ``imgs/<img_path>``, sketches in ``imgs-sketch/<img_path>``.
``Market-Sketch-1K/``
    ``photo/{train,query}/<pid:04d>_c<cam>s<seq>_<frame:06d>_00.jpg``,
    ``sketch/<style>/{train,query}/`` for styles ``A``..``F`` with ``<pid:04d>.jpg``
    in ``A``, ``C``, ``E`` and ``<pid:04d>_<style>.jpg`` in ``B``, ``D``, ``F``
    (both forms occur in the release), and ``market_attribute.mat`` (Market-1501
    attribute struct).
``PKU-Sketch/``
    as unpacked from ``PKUSketchRE-ID_V1`` plus the Tri-ReID captions:
    ``photo/<id>_<cam:02d>_<frame>.jpg`` (two cameras per person, (03, 05),
    (04, 06) or (05, 07)), ``sketch/<id>.jpg``,
    ``styleAnnotation/<style>_<count>.txt`` (the ids drawn in painting style
    ``a``..``e``, one a line; drawn here in styles ``A``..``E``) and
    ``TriReID.txt`` (``<id>/<photo file name>@<caption>``, a line per photo,
    with a UTF-8 byte-order mark and CRLF line ends as released).  There are no
    split files: ``datasets.prepare`` or the loaders make them.

What makes the data a fair test of sketch + text retrieval:

* people come in groups of 2-4 that share one silhouette (continuous body
  proportions plus garment shapes, hair, bag and hat) and differ only in the
  colours they wear, so a sketch alone cannot separate group members while the
  caption can;
* silhouettes are drawn per group from continuous ranges, so there are as
  many distinct outlines as groups;
* captions only state what the photo shows (gender, age, hair, garments and
  their colours, shoes, bag, hat);
* the PEDES sketches are traced from the photo's figure (same pose), the
  Market and PKU ones are drawn anew in a neutral pose in one of six styles.

Names, annotations and sketch styles are planned from ``seed`` in one process,
and every image is drawn from its own random stream keyed by ``(seed, dataset,
person, image)``: reruns give byte-identical files whatever the number of
worker processes.  A finished dataset folder carries a ``.synthetic.json``
marker (settings, format, counts, the attributes of every person and the styles
of the drawn sketches); such a folder is skipped unless ``--overwrite`` or
written in an older format.  Folders without the marker are never touched.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------

HEIGHT, WIDTH = 128, 64          # photo and sketch size (H x W), as Market-1501
SUPER = 2                        # drawing happens at SUPER x the final size
JPEG_QUALITY = 92
MARKER = ".synthetic.json"
FORMAT_VERSION = 2               # of the files written; a folder in another format is rewritten

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid", "mask1k", "pku-sketch")
FOLDERS = {
    "cuhk-pedes": "CUHK-PEDES",
    "icfg-pedes": "ICFG-PEDES",
    "rstpreid": "RSTPReid",
    "mask1k": "Market-Sketch-1K",
    "pku-sketch": "PKU-Sketch",
}
_CODES = {name: i + 1 for i, name in enumerate(DATASETS)}
# people at scale 1, and the fewest that still give every split a whole group
_BASE_PEOPLE = {"cuhk-pedes": 140, "icfg-pedes": 130, "rstpreid": 110,
                "mask1k": 120, "pku-sketch": 200}
_MIN_PEOPLE = {"cuhk-pedes": 10, "icfg-pedes": 10, "rstpreid": 10,
               "mask1k": 8, "pku-sketch": 8}

UP_COLOURS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
DOWN_COLOURS = ("black", "white", "pink", "purple", "yellow", "gray", "blue",
                "green", "brown")
DRESS_COLOURS = tuple(c for c in UP_COLOURS if c in DOWN_COLOURS)
SHOE_COLOURS = ("black", "white", "brown", "gray")
BAG_COLOURS = ("black", "brown", "gray", "red", "blue", "green", "purple", "yellow",
               "white", "pink")
COLOUR_RGB = {
    "black": (28, 28, 30),
    "white": (238, 238, 234),
    "red": (205, 32, 36),
    "purple": (128, 48, 170),
    "yellow": (238, 206, 38),
    "gray": (128, 128, 128),
    "blue": (36, 78, 205),
    "green": (36, 150, 58),
    "pink": (246, 146, 188),
    "brown": (118, 72, 34),
}
HAIR_RGB = {"black": (30, 26, 24), "brown": (100, 64, 36),
            "blonde": (214, 182, 106), "gray": (168, 168, 164)}
SKIN_RGB = ((236, 200, 172), (214, 168, 130), (176, 124, 88), (118, 80, 56))

MARKET_FIELDS = (
    "age", "backpack", "bag", "handbag", "downblack", "downblue", "downbrown",
    "downgray", "downgreen", "downpink", "downpurple", "downwhite", "downyellow",
    "upblack", "upblue", "upgreen", "upgray", "uppurple", "upred", "upwhite",
    "upyellow", "clothes", "down", "up", "hair", "hat", "gender")

STYLES = ("A", "B", "C", "D", "E", "F")

# Parts of a figure, back to front as they are usually drawn.  Every part gets
# its own label in the label map; sketches are the boundaries between labels.
PARTS = ("hair", "backpack", "legs", "lower", "shoes", "neck", "top", "stripe",
         "strap", "arm_l", "arm_r", "sleeve_l", "sleeve_r", "bag", "head", "hat")
LABEL = {name: i + 1 for i, name in enumerate(PARTS)}
_SKIN_PARTS = ("legs", "neck", "arm_l", "arm_r", "head")


# ----------------------------------------------------------------------------
# People
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Silhouette:
    """Everything a line drawing shows; shared by all members of a group."""

    gender: str          # male | female
    age: str             # young | teenager | adult | old
    height: float        # body height / image height
    head: float          # head height / body height
    shoulder: float      # half shoulder width / body height
    hip: float           # half hip width / body height
    waist: float         # waist width / hip width
    leg: float           # crotch-to-floor / body height
    arm: float           # arm length / body height
    limb: float          # limb thickness / body height
    hair: str            # short | long
    hair_len: float      # long hair: how far below the chin, / body height
    hair_volume: float   # width of the hair relative to the head
    hair_colour: str
    skin: int            # index into SKIN_RGB
    sleeve: str          # short | long
    sleeve_len: float    # short sleeves: fraction of the upper arm covered
    pattern: str         # plain | stripes | sleeves (top in two colours)
    stripes: int         # number of stripes for pattern "stripes"
    lower: str           # trousers | shorts | skirt | dress
    lower_long: bool     # long lower-body clothing
    hem: float           # where shorts/skirt/dress end, fraction of the leg
    bag: str             # none | backpack | bag | handbag
    bag_side: int        # -1 left, +1 right (image coordinates)
    bag_size: float
    hat: bool
    hat_side: int


@dataclass(frozen=True)
class Person:
    """One identity: a silhouette plus the colours this member wears."""

    pid: int
    group: int
    split: str
    sil: Silhouette
    top: Tuple[str, ...]     # one or two colours (UP_COLOURS; a dress: its colour)
    lower_colour: str        # DOWN_COLOURS (a dress: same as top)
    shoes: str
    bag_colour: str
    hat_colour: str

    def colours(self) -> Tuple:
        """The colour facts that tell group members apart."""
        return (self.top, self.lower_colour)

    def market_attributes(self) -> Dict[str, int]:
        """Market-1501 attribute coding of this person (1 = no, 2 = yes, ...)."""
        s = self.sil
        yes = lambda flag: 2 if flag else 1  # noqa: E731
        out = {
            "age": {"young": 1, "teenager": 2, "adult": 3, "old": 4}[s.age],
            "backpack": yes(s.bag == "backpack"),
            "bag": yes(s.bag == "bag"),
            "handbag": yes(s.bag == "handbag"),
            "hat": yes(s.hat),
            "clothes": 1 if s.lower in ("skirt", "dress") else 2,
            "down": 1 if s.lower_long else 2,
            "up": 1 if s.sleeve == "long" else 2,
            "hair": 1 if s.hair == "short" else 2,
            "gender": 1 if s.gender == "male" else 2,
        }
        for c in UP_COLOURS:
            out["up" + c] = yes(c in self.top)
        for c in DOWN_COLOURS:
            out["down" + c] = yes(c == self.lower_colour)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top"] = list(self.top)
        d["market"] = self.market_attributes()
        return d


def person_from_dict(d: dict) -> Person:
    """Inverse of :meth:`Person.to_dict` (the ``market`` entry is ignored)."""
    d = {k: v for k, v in d.items() if k != "market"}
    d["sil"] = Silhouette(**d["sil"])
    d["top"] = tuple(d["top"])
    return Person(**d)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [int(k) for k in key])


def _pick(rng, items, p=None):
    return items[int(rng.choice(len(items), p=p))]


def _sample_silhouette(rng: np.random.Generator) -> Silhouette:
    u = rng.uniform
    gender = _pick(rng, ("male", "female"))
    age = _pick(rng, ("young", "teenager", "adult", "old"), p=(0.1, 0.17, 0.58, 0.15))
    female = gender == "female"
    height = {"young": u(0.58, 0.70), "teenager": u(0.74, 0.86),
              "adult": u(0.80, 0.94), "old": u(0.76, 0.90)}[age]
    head = {"young": u(0.15, 0.18), "teenager": u(0.13, 0.155),
            "adult": u(0.118, 0.145), "old": u(0.12, 0.145)}[age]
    shoulder = u(0.09, 0.115) if female else u(0.105, 0.135)
    hip = u(0.082, 0.105) if female else u(0.07, 0.088)
    if age == "young":
        shoulder *= 0.95
    waist = u(0.95, 1.1) if age == "old" else u(0.8, 1.0)
    leg = u(0.40, 0.46) if age == "young" else u(0.44, 0.52)
    p_long = {True: 0.4 if age == "old" else 0.78, False: 0.08}[female]
    hair = "long" if rng.random() < p_long else "short"
    if age == "old":
        hair_colour = "gray" if rng.random() < 0.8 else "black"
    else:
        hair_colour = _pick(rng, ("black", "brown", "blonde"), p=(0.55, 0.3, 0.15))
    sleeve = _pick(rng, ("short", "long"))
    if female:
        lower = _pick(rng, ("trousers", "shorts", "skirt", "dress"), p=(0.35, 0.15, 0.25, 0.25))
    else:
        lower = _pick(rng, ("trousers", "shorts"), p=(0.68, 0.32))
    if lower == "trousers":
        lower_long, hem = True, 1.0
    elif lower == "shorts":
        lower_long, hem = False, u(0.25, 0.45)
    else:
        lower_long = bool(rng.random() < 0.5)
        hem = u(0.68, 0.88) if lower_long else u(0.18, 0.4)
    if lower == "dress":
        pattern = "plain"
    else:
        choices = ("plain", "stripes", "sleeves") if sleeve == "long" else ("plain", "stripes")
        probs = (0.7, 0.15, 0.15) if sleeve == "long" else (0.8, 0.2)
        pattern = _pick(rng, choices, p=probs)
    bag = _pick(rng, ("none", "backpack", "bag", "handbag"), p=(0.42, 0.22, 0.2, 0.16))
    return Silhouette(
        gender=gender, age=age, height=height, head=head, shoulder=shoulder, hip=hip,
        waist=waist, leg=leg, arm=u(0.36, 0.42), limb=u(0.045, 0.06),
        hair=hair, hair_len=u(0.04, 0.22) if hair == "long" else 0.0,
        hair_volume=u(1.0, 1.2), hair_colour=hair_colour,
        skin=int(rng.integers(len(SKIN_RGB))), sleeve=sleeve,
        sleeve_len=u(0.35, 0.75), pattern=pattern, stripes=int(rng.integers(2, 5)),
        lower=lower, lower_long=lower_long, hem=hem, bag=bag,
        bag_side=int(_pick(rng, (-1, 1))), bag_size=u(0.85, 1.15),
        hat=bool(rng.random() < 0.2), hat_side=int(_pick(rng, (-1, 1))),
    )


def _sample_colours(rng: np.random.Generator, sil: Silhouette) -> dict:
    if sil.lower == "dress":
        c = _pick(rng, DRESS_COLOURS)
        top, lower = (c,), c
    else:
        if sil.pattern == "plain":
            top = (_pick(rng, UP_COLOURS),)
        else:
            i, j = rng.choice(len(UP_COLOURS), size=2, replace=False)
            top = (UP_COLOURS[int(i)], UP_COLOURS[int(j)])
        lower = _pick(rng, tuple(c for c in DOWN_COLOURS if c != top[0]))
    return dict(top=top, lower_colour=lower, shoes=_pick(rng, SHOE_COLOURS),
                bag_colour=_pick(rng, BAG_COLOURS), hat_colour=_pick(rng, UP_COLOURS))


def _group_sizes(rng: np.random.Generator, n: int) -> List[int]:
    """Split ``n`` (>= 2) people into groups of 2..4."""
    sizes, left = [], n
    while left > 0:
        if left <= 4:
            s = left
        else:
            s = int(rng.choice((2, 3, 4), p=(0.4, 0.35, 0.25)))
            if left - s == 1:
                s = 3 if s == 2 else s - 1
        sizes.append(s)
        left -= s
    return sizes


def make_groups(seed: int, dataset: str, n: int) -> List[List[dict]]:
    """Groups of people (silhouette + colours), before ids and splits are given."""
    code = _CODES[dataset]
    rng = _rng(seed, code, 0)
    groups = []
    for g, size in enumerate(_group_sizes(rng, max(2, n))):
        grng = _rng(seed, code, 1, g)
        sil = _sample_silhouette(grng)
        members, seen = [], set()
        while len(members) < size:
            col = _sample_colours(grng, sil)
            key = (col["top"], col["lower_colour"])
            if key in seen:
                continue
            seen.add(key)
            members.append(dict(group=g, sil=sil, **col))
        groups.append(members)
    return groups


def _n_people(dataset: str, scale: float) -> int:
    return max(_MIN_PEOPLE[dataset], int(round(_BASE_PEOPLE[dataset] * float(scale))))


def _take_groups(rng, groups: List[list], target: int) -> Tuple[List[list], List[list]]:
    """Pick whole groups (in random order) until about ``target`` people are taken."""
    order = [groups[int(i)] for i in rng.permutation(len(groups))]
    taken, rest, count = [], [], 0
    for g in order:
        if count < target and (count + len(g) <= target + 1 or not taken):
            taken.append(g)
            count += len(g)
        else:
            rest.append(g)
    return taken, rest


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pose:
    cx: float
    feet: float
    scale: float = 1.0
    lean: float = 0.0                       # degrees, about the feet
    arm: Tuple[float, float] = (10.0, 10.0)  # outward angle, degrees (left, right)
    elbow: Tuple[float, float] = (4.0, 4.0)  # forearm bend back inwards
    leg: Tuple[float, float] = (3.0, 3.0)    # outward angle of each leg
    ex_height: float = 1.0                  # exaggerations of a drawing style
    ex_head: float = 1.0
    ex_leg: float = 1.0
    ex_shoulder: float = 1.0
    ex_width: float = 1.0


def _body_height(sil: Silhouette, pose: Pose) -> float:
    return sil.height * HEIGHT * pose.scale * pose.ex_height


def _fit_pose(sil: Silhouette, pose: Pose) -> Pose:
    """Shrink the figure and close the arms until everything is inside the frame."""
    hat = 0.05 if sil.hat else 0.0
    hb = _body_height(sil, pose)
    room = pose.feet - 2.0
    if hb * (1 + hat) > room:
        pose = replace(pose, scale=pose.scale * room / (hb * (1 + hat)))
        hb = _body_height(sil, pose)
    arms = []
    for side, a in zip((-1, 1), pose.arm):
        sw = sil.shoulder * hb * pose.ex_shoulder * pose.ex_width
        edge = WIDTH / 2 - 2.5 - side * (pose.cx - WIDTH / 2) - sw
        extra = 0.12 * hb if (sil.bag == "handbag" and side == sil.bag_side) else 0.05 * hb
        reach = max(sil.arm * hb, 1e-3)
        amax = math.degrees(math.asin(float(np.clip((edge - extra) / reach, 0.0, 1.0))))
        arms.append(float(np.clip(a, 1.0, max(1.0, amax))))
    return replace(pose, arm=(arms[0], arms[1]))


def _ellipse(cx, cy, rx, ry, a0=0.0, a1=360.0, n=20) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _quad(p0, p1, w0, w1) -> np.ndarray:
    """A band from ``p0`` to ``p1`` with half widths ``w0`` and ``w1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    return np.stack([p0 + n * w0, p1 + n * w1, p1 - n * w1, p0 - n * w0])


def _clip_y(poly: np.ndarray, y0: float, y1: float) -> np.ndarray:
    """The part of a polygon between two horizontal lines (Sutherland-Hodgman)."""
    def cut(points, keep, y):
        out = []
        for i in range(len(points)):
            a, b = points[i - 1], points[i]
            ina, inb = keep(a[1]), keep(b[1])
            if ina != inb:
                t = (y - a[1]) / (b[1] - a[1])
                out.append(a + t * (b - a))
            if inb:
                out.append(b)
        return out
    pts = list(np.asarray(poly, float))
    pts = cut(pts, lambda v: v >= y0, y0)
    if pts:
        pts = cut(pts, lambda v: v <= y1, y1)
    return np.array(pts) if len(pts) >= 3 else np.zeros((0, 2))


def build_figure(sil: Silhouette, pose: Pose) -> List[Tuple[str, np.ndarray]]:
    """Polygons ``(part, points)`` of a frontal figure, back to front, in pixels."""
    hb = _body_height(sil, pose)
    cx, yf = pose.cx, pose.feet
    head_h = sil.head * hb * pose.ex_head
    head_w = head_h * 0.8
    ytop = yf - hb
    chin = ytop + head_h
    sh_y = chin + 0.2 * head_h
    leg_len = sil.leg * hb * pose.ex_leg
    crotch = max(yf - leg_len, sh_y + 0.22 * hb)
    leg_len = yf - crotch
    hip_y = crotch - 0.04 * hb
    waist_y = sh_y + 0.58 * (hip_y - sh_y)
    shirt_hem = waist_y + 0.7 * (hip_y - waist_y)
    sw = sil.shoulder * hb * pose.ex_shoulder * pose.ex_width
    hw = sil.hip * hb * pose.ex_width
    ww = hw * sil.waist
    limb = sil.limb * hb * pose.ex_width
    shoe_h = 0.035 * hb
    vol = sil.hair_volume
    parts: List[Tuple[str, np.ndarray]] = []
    add = lambda name, pts: parts.append((name, np.asarray(pts, float)))  # noqa: E731

    # long hair falls behind the neck and shoulders
    if sil.hair == "long":
        end = chin + sil.hair_len * hb
        add("hair", [(cx - 0.52 * head_w * vol, ytop + 0.35 * head_h),
                     (cx + 0.52 * head_w * vol, ytop + 0.35 * head_h),
                     (cx + 0.6 * head_w * vol, end - 0.03 * hb),
                     (cx + 0.4 * head_w * vol, end),
                     (cx - 0.4 * head_w * vol, end),
                     (cx - 0.6 * head_w * vol, end - 0.03 * hb)])
    if sil.bag == "backpack":
        bw = sw * 0.92 * sil.bag_size
        add("backpack", [(cx - bw, sh_y + 0.06 * hb), (cx + bw, sh_y + 0.06 * hb),
                         (cx + bw * 1.04, waist_y + 0.5 * (hip_y - waist_y)),
                         (cx - bw * 1.04, waist_y + 0.5 * (hip_y - waist_y))])

    # legs, shoes and the lower garment
    legs = []
    for side, ang in zip((-1, 1), pose.leg):
        top = np.array([cx + side * hw * 0.48, crotch - 0.02 * hb])
        a = math.radians(ang)
        d = np.array([side * math.sin(a), math.cos(a)])
        ankle = top + d * (yf - shoe_h - top[1]) / max(d[1], 0.2)
        legs.append((side, top, ankle, d))
        knee = top + 0.5 * (ankle - top)
        seg1, seg2 = _quad(top, knee, hw * 0.52, limb * 0.6), _quad(knee, ankle, limb * 0.6, limb * 0.4)
        leg_part = "lower" if sil.lower == "trousers" else "legs"
        add(leg_part, [seg1[0], seg1[1], seg2[1], seg2[2], seg1[2], seg1[3]])
    for side, top, ankle, d in legs:
        add("shoes", _ellipse(ankle[0] + side * limb * 0.2, yf - shoe_h * 0.45,
                              limb * 0.62, shoe_h * 0.6))
    block = [(cx - ww, waist_y), (cx + ww, waist_y), (cx + hw, hip_y),
             (cx + hw, crotch - 0.02 * hb), (cx, crotch + 0.01 * hb),
             (cx - hw, crotch - 0.02 * hb), (cx - hw, hip_y)]
    if sil.lower in ("trousers", "shorts"):
        add("lower", block)
    if sil.lower == "shorts":
        for side, top, ankle, d in legs:
            end = top + sil.hem * (ankle - top)
            add("lower", _quad(top, end, hw * 0.54, limb * 0.78))
    if sil.lower in ("skirt", "dress"):
        hem_y = crotch + sil.hem * leg_len
        spread = max(abs(legs[0][1][0] + sil.hem * (legs[0][2][0] - legs[0][1][0]) - cx),
                     abs(legs[1][1][0] + sil.hem * (legs[1][2][0] - legs[1][1][0]) - cx))
        hem_w = max(hw * 1.12 + 0.22 * (hem_y - hip_y), spread + limb)
        name = "top" if sil.lower == "dress" else "lower"
        curve = _ellipse(cx, hem_y - 0.01 * hb, hem_w, 0.025 * hb, 0, 180, 9)
        add(name, np.concatenate([[(cx - ww, waist_y), (cx + ww, waist_y),
                                   (cx + hw * 1.03, hip_y)], curve,
                                  [(cx - hw * 1.03, hip_y)]]))

    # neck and torso
    add("neck", [(cx - 0.22 * head_w, chin - 0.2 * head_h), (cx + 0.22 * head_w, chin - 0.2 * head_h),
                 (cx + 0.22 * head_w, sh_y + 0.05 * hb), (cx - 0.22 * head_w, sh_y + 0.05 * hb)])
    bottom = waist_y if sil.lower == "dress" else shirt_hem
    bottom_w = ww * 1.02 if sil.lower == "dress" else hw * 1.02
    torso = np.array([
        (cx - 0.3 * head_w, sh_y - 0.012 * hb), (cx, sh_y + 0.03 * hb),
        (cx + 0.3 * head_w, sh_y - 0.012 * hb), (cx + sw * 0.78, sh_y - 0.004 * hb),
        (cx + sw, sh_y + 0.035 * hb), (cx + sw * 0.94, sh_y + 0.13 * hb),
        (cx + ww * 1.03, waist_y), (cx + bottom_w, bottom), (cx - bottom_w, bottom),
        (cx - ww * 1.03, waist_y), (cx - sw * 0.94, sh_y + 0.13 * hb),
        (cx - sw, sh_y + 0.035 * hb), (cx - sw * 0.78, sh_y - 0.004 * hb)])
    add("top", torso)
    if sil.pattern == "stripes":
        y0, y1 = sh_y + 0.05 * hb, bottom
        band = (y1 - y0) / (2 * sil.stripes)
        for k in range(sil.stripes):
            piece = _clip_y(torso, y0 + (2 * k + 0.5) * band, y0 + (2 * k + 1.5) * band)
            if len(piece):
                add("stripe", piece)
    if sil.bag == "backpack":
        for side in (-1, 1):
            add("strap", _quad((cx + side * sw * 0.55, sh_y - 0.006 * hb),
                               (cx + side * sw * 0.62, waist_y - 0.02 * hb), 0.02 * hb, 0.02 * hb))

    # arms
    hands = {}
    for side, ang, bend in zip((-1, 1), pose.arm, pose.elbow):
        tag = "_l" if side < 0 else "_r"
        joint = np.array([cx + side * (sw - limb * 0.45), sh_y + limb * 0.45])
        a1, a2 = math.radians(ang), math.radians(ang - bend)
        d1 = np.array([side * math.sin(a1), math.cos(a1)])
        d2 = np.array([side * math.sin(a2), math.cos(a2)])
        elbow = joint + d1 * sil.arm * hb * 0.47
        wrist = elbow + d2 * sil.arm * hb * 0.43
        hand = wrist + d2 * limb * 0.35
        hands[side] = hand
        add("arm" + tag, _quad(joint, elbow, limb * 0.5, limb * 0.42))
        add("arm" + tag, _ellipse(elbow[0], elbow[1], limb * 0.42, limb * 0.42, n=12))
        add("arm" + tag, _quad(elbow, wrist, limb * 0.42, limb * 0.34))
        add("arm" + tag, _ellipse(hand[0], hand[1], limb * 0.45, limb * 0.5, n=12))
        add("sleeve" + tag, _ellipse(joint[0], joint[1], limb * 0.62, limb * 0.62, n=14))
        if sil.sleeve == "long":
            add("sleeve" + tag, _quad(joint, elbow, limb * 0.58, limb * 0.5))
            add("sleeve" + tag, _ellipse(elbow[0], elbow[1], limb * 0.5, limb * 0.5, n=12))
            add("sleeve" + tag, _quad(elbow, wrist, limb * 0.5, limb * 0.44))
        else:
            end = joint + d1 * sil.arm * hb * 0.47 * sil.sleeve_len
            add("sleeve" + tag, _quad(joint, end, limb * 0.62, limb * 0.66))

    # bags carried in front
    if sil.bag == "bag":
        s = sil.bag_side
        bw, bh = 0.15 * hb * sil.bag_size, 0.11 * hb * sil.bag_size
        bx = cx + s * (hw + 0.25 * bw)
        add("strap", _quad((cx - s * sw * 0.55, sh_y - 0.004 * hb),
                           (bx - s * 0.1 * bw, hip_y - 0.5 * bh), 0.013 * hb, 0.013 * hb))
        add("bag", [(bx - bw / 2, hip_y - 0.5 * bh), (bx + bw / 2, hip_y - 0.5 * bh),
                    (bx + bw / 2 + 0.04 * bw * s, hip_y + 0.5 * bh),
                    (bx - bw / 2 + 0.04 * bw * s, hip_y + 0.5 * bh)])
    if sil.bag == "handbag":
        s = sil.bag_side
        hx, hy = hands[s]
        bw, bh = 0.11 * hb * sil.bag_size, 0.085 * hb * sil.bag_size
        top = hy + limb * 0.9
        add("bag", _quad((hx - bw * 0.32, top), (hx, hy - limb * 0.2), 0.012 * hb, 0.012 * hb))
        add("bag", _quad((hx + bw * 0.32, top), (hx, hy - limb * 0.2), 0.012 * hb, 0.012 * hb))
        add("bag", [(hx - bw / 2, top), (hx + bw / 2, top),
                    (hx + bw * 0.56, top + bh), (hx - bw * 0.56, top + bh)])

    # head, hair, hat
    hcy = ytop + head_h / 2
    add("head", _ellipse(cx, hcy, head_w / 2, head_h / 2, n=24))
    cap = _ellipse(cx, hcy - 0.06 * head_h, 0.54 * head_w * vol, 0.52 * head_h, 172, 368, 18)
    add("hair", cap)
    if sil.hair == "long":
        end = chin + sil.hair_len * hb
        for side in (-1, 1):
            add("hair", _quad((cx + side * 0.4 * head_w * vol, hcy - 0.1 * head_h),
                              (cx + side * 0.46 * head_w * vol, end),
                              0.14 * head_w * vol, 0.12 * head_w * vol))
    if sil.hat:
        s = sil.hat_side
        add("hat", _ellipse(cx, ytop + 0.32 * head_h, 0.58 * head_w * vol, 0.46 * head_h, 180, 360, 14))
        add("hat", [(cx - s * 0.6 * head_w * vol, ytop + 0.26 * head_h),
                    (cx + s * 1.0 * head_w * vol, ytop + 0.28 * head_h),
                    (cx + s * 1.0 * head_w * vol, ytop + 0.38 * head_h),
                    (cx - s * 0.6 * head_w * vol, ytop + 0.4 * head_h)])

    if pose.lean:
        a = math.radians(pose.lean)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        origin = np.array([cx, yf])
        parts = [(n, (p - origin) @ rot.T + origin) for n, p in parts]
    return parts


def label_map(parts: Sequence[Tuple[str, np.ndarray]], supersample: int = SUPER) -> np.ndarray:
    """Paint the parts with their labels (0 = background) at the drawing size."""
    img = Image.new("L", (WIDTH * supersample, HEIGHT * supersample), 0)
    draw = ImageDraw.Draw(img)
    for name, pts in parts:
        if len(pts) >= 3:
            draw.polygon([tuple(p) for p in (pts * supersample).tolist()], fill=LABEL[name])
    return np.asarray(img)


def _person_palette(p: Person) -> np.ndarray:
    lut = np.zeros((256, 3), np.float32)
    sil = p.sil
    second = p.top[1] if len(p.top) > 1 else p.top[0]
    colours = {
        "hair": HAIR_RGB[sil.hair_colour],
        "backpack": COLOUR_RGB[p.bag_colour], "strap": COLOUR_RGB[p.bag_colour],
        "bag": COLOUR_RGB[p.bag_colour],
        "lower": COLOUR_RGB[p.lower_colour], "shoes": COLOUR_RGB[p.shoes],
        "top": COLOUR_RGB[p.top[0]], "stripe": COLOUR_RGB[second],
        "sleeve_l": COLOUR_RGB[second if sil.pattern == "sleeves" else p.top[0]],
        "sleeve_r": COLOUR_RGB[second if sil.pattern == "sleeves" else p.top[0]],
        "hat": COLOUR_RGB[p.hat_colour],
    }
    for name in _SKIN_PARTS:
        colours[name] = SKIN_RGB[sil.skin]
    for name, rgb in colours.items():
        lut[LABEL[name]] = rgb
    return lut


# ----------------------------------------------------------------------------
# Rendering: photos
# ----------------------------------------------------------------------------

def _smooth_noise(rng, shape, grid) -> np.ndarray:
    """Smooth noise in about [-1, 1] from a coarse random grid."""
    coarse = rng.normal(size=grid).astype(np.float32)
    zoom = (shape[0] / grid[0], shape[1] / grid[1])
    out = ndimage.zoom(coarse, zoom, order=1, mode="nearest")
    return out[: shape[0], : shape[1]]


def _muted(rng, lo=60, hi=200, tint=28) -> np.ndarray:
    g = rng.uniform(lo, hi)
    return np.clip(g + rng.uniform(-tint, tint, 3), 0, 255)


def _background(rng, h, w, feet) -> np.ndarray:
    kind = _pick(rng, ("solid", "gradient", "texture", "blocks"))
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    c1 = _muted(rng)
    if kind == "solid":
        bg = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        bg = c1 * (1 - yy) + _muted(rng) * yy
        bg = np.broadcast_to(bg, (h, w, 3)).astype(np.float32)
    else:
        bg = np.broadcast_to(c1, (h, w, 3)).astype(np.float32).copy()
        bg += 30 * _smooth_noise(rng, (h, w), (8, 4))[..., None]
        if kind == "blocks":
            for _ in range(int(rng.integers(2, 6))):
                x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.6) * h
                bw, bh = rng.uniform(0.1, 0.5) * w, rng.uniform(0.1, 0.4) * h
                bg[int(max(y0, 0)):int(max(y0 + bh, 0)), int(max(x0, 0)):int(max(x0 + bw, 0))] = _muted(rng)
        bg += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    # ground below a horizon line
    horizon = int(np.clip(feet - rng.uniform(0.1, 0.35) * h, 0.45 * h, h - 4))
    ground = _muted(rng, 70, 180, 18)
    bg = bg.copy()
    bg[horizon:] = ground + 12 * _smooth_noise(rng, (h - horizon, w), (3, 4))[..., None]
    bg[horizon: horizon + SUPER] *= 0.7
    return bg


def _photo_pose(rng, sil: Silhouette) -> Pose:
    pose = Pose(
        cx=WIDTH / 2 + rng.uniform(-4, 4), feet=HEIGHT - rng.uniform(2, 6),
        scale=rng.uniform(0.95, 1.03), lean=rng.uniform(-4, 4),
        arm=(rng.uniform(3, 20), rng.uniform(3, 20)),
        elbow=(rng.uniform(-6, 14), rng.uniform(-6, 14)),
        leg=(rng.uniform(0.5, 8), rng.uniform(0.5, 8)))
    return _fit_pose(sil, pose)


def render_photo(person: Person, rng: np.random.Generator) -> Tuple[Image.Image, np.ndarray]:
    """A photo of ``person`` in a random pose and the label map of its figure."""
    pose = _photo_pose(rng, person.sil)
    lab = label_map(build_figure(person.sil, pose))
    h, w = lab.shape
    bg = _background(rng, h, w, pose.feet * SUPER)
    # a soft shadow under the feet
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shadow = ((xx - pose.cx * SUPER) / (0.3 * w)) ** 2 + ((yy - pose.feet * SUPER) / (0.025 * h)) ** 2
    bg *= (1 - 0.35 * np.exp(-shadow))[..., None]
    fig = _person_palette(person)[lab]
    light = rng.uniform(-1, 1)
    shade = (rng.uniform(0.88, 1.08) * (1 + 0.08 * light * (xx - pose.cx * SUPER) / (0.25 * w))
             * (1 + 0.06 * _smooth_noise(rng, (h, w), (16, 8))))
    fig = fig * shade[..., None]
    img = np.where((lab > 0)[..., None], fig, bg)
    img *= rng.uniform(0.96, 1.04, 3).astype(np.float32)  # camera colour balance
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).reduce(SUPER)
    blur = rng.uniform(0.0, 0.7)
    if blur > 0.25:
        photo = photo.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(photo, np.float32) + rng.normal(0, rng.uniform(1.5, 5), (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)), lab


# ----------------------------------------------------------------------------
# Rendering: sketches
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SketchStyle:
    radius: float = 2.6          # line half width at the drawing size (px)
    ink: float = 0.95            # darkness of the strokes
    wobble: float = 0.0          # smooth displacement of the outline (px)
    jitter: float = 0.0          # fine displacement (px)
    broken: float = 0.0          # fraction of stroke length dropped
    double: bool = False         # a second, slightly offset stroke
    hatch: Tuple[str, ...] = ()  # parts filled with hatching
    cross: bool = False          # cross-hatching instead of single
    ex: Dict[str, float] = field(default_factory=dict)   # proportion exaggerations


TRACED = SketchStyle(radius=2.6, ink=0.95)
DRAWN: Dict[str, SketchStyle] = {
    "A": SketchStyle(radius=2.4, ink=0.95),
    "B": SketchStyle(radius=3.4, ink=0.9, wobble=1.5, ex={"ex_head": 1.12}),
    "C": SketchStyle(radius=2.4, ink=0.92, wobble=3.0, jitter=0.9, ex={"ex_leg": 1.06}),
    "D": SketchStyle(radius=2.4, ink=0.9, wobble=1.0, hatch=("hair", "shoes", "bag", "backpack", "hat", "lower"),
                     ex={"ex_shoulder": 1.08}),
    "E": SketchStyle(radius=2.2, ink=0.75, wobble=2.0, broken=0.18, double=True,
                     ex={"ex_width": 0.93}),
    "F": SketchStyle(radius=3.8, ink=1.0, hatch=("hair", "shoes"),
                     ex={"ex_head": 0.92, "ex_height": 1.04}),
}


def _edges(lab: np.ndarray) -> np.ndarray:
    e = np.zeros(lab.shape, bool)
    e[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    e[1:, :] |= lab[1:, :] != lab[:-1, :]
    return e


def _strokes(lab: np.ndarray, radius: float) -> np.ndarray:
    e = _edges(lab)
    if not e.any():
        return np.zeros(lab.shape, np.float32)
    dist = ndimage.distance_transform_edt(~e)
    return np.clip(radius + 0.5 - dist, 0, 1).astype(np.float32)


def _warp(lab: np.ndarray, rng, wobble: float, jitter: float) -> np.ndarray:
    h, w = lab.shape
    dy = wobble * _smooth_noise(rng, (h, w), (6, 3))
    dx = wobble * _smooth_noise(rng, (h, w), (6, 3))
    if jitter:
        dy += jitter * _smooth_noise(rng, (h, w), (48, 24))
        dx += jitter * _smooth_noise(rng, (h, w), (48, 24))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return ndimage.map_coordinates(lab, [yy + dy, xx + dx], order=0, mode="constant", cval=0)


def sketch_from_labels(lab: np.ndarray, style: SketchStyle, rng: np.random.Generator) -> Image.Image:
    """Dark strokes on white along the boundaries of a label map, in ``style``."""
    if style.wobble or style.jitter:
        lab = _warp(lab, rng, style.wobble, style.jitter)
    ink = _strokes(lab, style.radius) * style.ink
    h, w = lab.shape
    if style.broken:
        keep = _smooth_noise(rng, (h, w), (32, 16)) > -2.2 * style.broken * 2
        ink *= keep
    if style.double:
        other = _warp(lab, rng, 1.2, 0.0)
        ink = np.maximum(ink, 0.7 * style.ink * _strokes(other, style.radius * 0.7))
    if style.hatch:
        yy, xx = np.mgrid[0:h, 0:w]
        region = np.isin(lab, [LABEL[n] for n in style.hatch])
        lines = ((xx + yy) % 7) < 2
        if style.cross:
            lines |= ((xx - yy) % 7) < 2
        ink = np.maximum(ink, 0.75 * style.ink * (region & lines))
    img = Image.fromarray(np.clip(255 * (1 - ink), 0, 255).astype(np.uint8), "L")
    img = img.filter(ImageFilter.GaussianBlur(0.6)).reduce(SUPER)
    return img.convert("RGB")


def _drawn_pose(rng, sil: Silhouette, style: SketchStyle) -> Pose:
    pose = Pose(
        cx=WIDTH / 2 + rng.normal(0, 1.0), feet=HEIGHT - 3 - rng.uniform(0, 2),
        scale=rng.uniform(0.96, 1.0), lean=rng.normal(0, 0.8),
        arm=(9 + rng.normal(0, 2.5), 9 + rng.normal(0, 2.5)),
        elbow=(4 + rng.normal(0, 2), 4 + rng.normal(0, 2)),
        leg=(3 + rng.normal(0, 1), 3 + rng.normal(0, 1)),
        **{k: v * rng.uniform(0.97, 1.03) for k, v in style.ex.items()})
    return _fit_pose(sil, pose)


def render_drawn_sketch(person: Person, style: str, rng: np.random.Generator) -> Image.Image:
    """A sketch drawn from scratch: neutral pose, proportions and strokes of ``style``."""
    st = DRAWN[style]
    lab = label_map(build_figure(person.sil, _drawn_pose(rng, person.sil, st)))
    return sketch_from_labels(lab, st, rng)


IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def _save(img: Image.Image, path: str) -> None:
    """Write ``img`` in the format its file suffix names (JPEG at ``JPEG_QUALITY``)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot tell the image format from {suffix!r}; "
                         f"expected one of {', '.join(IMAGE_FORMATS)}")
    fmt = IMAGE_FORMATS[suffix]
    if fmt == "JPEG":
        img.save(path, format=fmt, quality=JPEG_QUALITY, subsampling=0, optimize=False)
    else:
        img.save(path, format=fmt)


def _run_job(job: tuple) -> None:
    """Render and write one image (or a photo and its traced sketch)."""
    kind, key, person, a, b = job
    rng = _rng(*key)
    if kind == "photo+trace":
        photo, lab = render_photo(person, rng)
        _save(photo, a)
        _save(sketch_from_labels(lab, TRACED, rng), b)
    elif kind == "photo":
        _save(render_photo(person, rng)[0], a)
    elif kind == "drawn":
        _save(render_drawn_sketch(person, b, rng), a)
    else:
        raise ValueError(kind)


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _facts(p: Person, rng) -> dict:
    """Short phrases for every visible fact about ``p`` (wording drawn from ``rng``)."""
    s = p.sil
    male = s.gender == "male"
    noun = {("young", True): "little boy", ("young", False): "little girl",
            ("teenager", True): "teenage boy", ("teenager", False): "teenage girl",
            ("adult", True): "man", ("adult", False): "woman",
            ("old", True): _pick(rng, ("old man", "elderly man")),
            ("old", False): _pick(rng, ("old woman", "elderly woman"))}[(s.age, male)]
    base = {"young": "boy" if male else "girl", "teenager": "boy" if male else "girl",
            "adult": "man" if male else "woman", "old": "man" if male else "woman"}[s.age]
    age_desc = {"young": "a child", "teenager": "a teenager",
                "adult": "an adult", "old": "elderly"}[s.age]
    c1 = p.top[0]
    c2 = p.top[1] if len(p.top) > 1 else None
    if s.lower == "dress":
        length = "long" if s.lower_long else "short"
        top = None
        dress = _pick(rng, (f"{length} {c1} dress with {s.sleeve} sleeves",
                            f"{c1} {s.sleeve}-sleeved {length} dress"))
        lower = _a(dress)
        lower_bare = dress
    else:
        garment = _pick(rng, ("T-shirt", "short-sleeved shirt", "short-sleeved top")
                        if s.sleeve == "short" else
                        ("long-sleeved shirt", "long-sleeved top", "sweater", "jacket"))
        if s.pattern == "stripes":
            top = _a(f"{c1} and {c2} striped {garment}")
        elif s.pattern == "sleeves":
            top = _a(f"{c1} {garment.replace('long-sleeved ', '')} with {c2} sleeves")
        else:
            top = _a(f"{c1} {garment}")
        c = p.lower_colour
        if s.lower == "trousers":
            lower_bare = _pick(rng, (f"{c} trousers", f"{c} pants", f"{c} long pants"))
        elif s.lower == "shorts":
            lower_bare = f"{c} shorts"
        elif s.lower_long:
            lower_bare = _pick(rng, (f"long {c} skirt", f"{c} ankle-length skirt"))
        else:
            lower_bare = _pick(rng, (f"short {c} skirt", f"{c} miniskirt"))
        lower = lower_bare if s.lower in ("trousers", "shorts") else _a(lower_bare)
    shoes = _pick(rng, (f"{p.shoes} shoes", f"{p.shoes} sneakers"))
    bag = {"none": None, "backpack": _a(f"{p.bag_colour} backpack"),
           "bag": _a(_pick(rng, (f"{p.bag_colour} shoulder bag", f"{p.bag_colour} bag"))),
           "handbag": _a(f"{p.bag_colour} handbag")}[s.bag]
    bag_verb = {"none": None, "backpack": "carries", "bag": "carries", "handbag": "holds"}[s.bag]
    hat = _a(_pick(rng, (f"{p.hat_colour} cap", f"{p.hat_colour} hat"))) if s.hat else None
    return dict(noun=noun, base=base, age=age_desc, he="he" if male else "she", his="his" if male else "her",
                hair=f"{s.hair} {s.hair_colour} hair", hair_len=s.hair,
                hair_colour=s.hair_colour, shoe_colour=p.shoes, top=top, lower=lower,
                lower_bare=lower_bare, shoes=shoes, bag=bag, bag_verb=bag_verb, hat=hat,
                dress=s.lower == "dress")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _outfit(f: dict, with_shoes: bool = True) -> str:
    return _join([f["top"], f["lower"], f["shoes"] if with_shoes else None])


def caption_cuhk(p: Person, rng) -> str:
    f = _facts(p, rng)
    extras = []
    if f["bag"]:
        extras.append(f"{f['bag_verb']} {f['bag']}")
    if f["hat"]:
        extras.append(f"wears {f['hat']}")
    v = int(rng.integers(3))
    if v == 0:
        text = f"{_a(f['noun'])} wearing {_outfit(f)}. {f['he']} has {f['hair']}"
        text += (" and " + _join(extras) if extras else "") + "."
    elif v == 1:
        text = f"the {f['noun']} has {f['hair']} and is wearing {_outfit(f)}."
        if extras:
            text += f" {f['he']} {_join(extras)}."
    else:
        text = f"this {f['noun']} with {f['hair']} is dressed in {_outfit(f, False)}"
        text += f", with {f['shoes']} on {f['his']} feet."
        if extras:
            text += f" {f['he']} also {_join(extras)}."
    return ". ".join(_cap(s.strip()) for s in text.split(". "))


def caption_icfg(p: Person, rng) -> str:
    f = _facts(p, rng)
    out = [f"the {f['base']} appears to be {f['age']} and has {f['hair']}"]
    if f["dress"]:
        out.append(f"{f['he']} is wearing {f['lower']} that covers {f['his']} upper and lower body")
    else:
        out.append(f"on {f['his']} upper body {f['he']} is wearing {f['top']}")
        out.append(f"{f['he']} is wearing {f['lower']} on {f['his']} lower body")
    out.append(f"{f['he']} has {f['shoes']} on {f['his']} feet")
    if f["bag"]:
        out.append(f"{f['he']} {f['bag_verb']} {f['bag']}"
                   + (" on the back" if p.sil.bag == "backpack" else ""))
    if f["hat"]:
        out.append(f"on {f['his']} head there is {f['hat']}")
    if rng.random() < 0.5:
        out.append(f"{f['he']} is standing and looking towards the camera")
    return " ".join(_cap(s) + "." for s in out)


def caption_rstp(p: Person, rng) -> str:
    f = _facts(p, rng)
    items = [f["top"], f["lower"], f["shoes"], f["bag"], f["hat"]]
    if int(rng.integers(2)) == 0:
        return _cap(f"{f['noun']} with {f['hair']}, {_join(items)}.")
    return _cap(f"{_a(f['noun'])} in {_join(items[:2])}, {f['hair']}, {_join(items[2:])}.")


def caption_bt(p: Person, rng) -> str:
    """Same facts, other wording (what a round trip through another language gives)."""
    f = _facts(p, rng)
    clothes = _join([f["top"], f["lower"]])
    extra = ""
    if f["bag"]:
        extra += f", with {f['bag']}"
    if f["hat"]:
        extra += f", wearing {f['hat']}"
    if int(rng.integers(2)) == 0:
        text = (f"there is {_a(f['noun'])} who has on {clothes}{extra}. {f['his']} shoes are "
                f"{f['shoe_colour']} and {f['his']} hair is {f['hair_colour']} and {f['hair_len']}.")
    else:
        text = (f"dressed in {_join([f['top'], f['lower'], f['shoes']])}, the {f['noun']} has "
                f"{f['hair']}{extra}.")
    return ". ".join(_cap(s.strip()) for s in text.split(". "))


_CAPTIONERS = {"cuhk-pedes": caption_cuhk, "icfg-pedes": caption_icfg,
               "rstpreid": caption_rstp, "pku-sketch": caption_cuhk}
_CAPTIONS_PER_PHOTO = {"cuhk-pedes": (1, 2, 2), "icfg-pedes": (1,), "rstpreid": (2,)}


# ----------------------------------------------------------------------------
# Dataset plans
# ----------------------------------------------------------------------------

@dataclass
class _Plan:
    name: str
    people: List[Person]
    jobs: List[tuple] = field(default_factory=list)
    texts: Dict[str, object] = field(default_factory=dict)   # relative path -> JSON, text or bytes
    mats: Dict[str, dict] = field(default_factory=dict)      # relative path -> savemat dict
    styles: Dict[int, List[str]] = field(default_factory=dict)  # person -> styles drawn (STYLES)
    photos: int = 0
    sketches: int = 0


def _assign(groups, split, ids) -> List[Person]:
    people = []
    members = [m for g in groups for m in g]
    for m, pid in zip(members, ids):
        people.append(Person(pid=int(pid), split=split, **m))
    return people


# CUHK-PEDES gathered its photos from five re-id sets and keeps each one's folder and file
# names; four of those forms are imitated here.
CUHK_SOURCES = ("CUHK01", "VIPeR", "CUHK-SYSU", "Market")
VIPER_ANGLES = (0, 45, 90, 135, 180)
SKETCH_FOLDER = {"cuhk-pedes": "imgs-sketch2", "icfg-pedes": "imgs-sketch", "rstpreid": "imgs-sketch"}


def _cuhk_photo_paths(seed: int, code: int, people: Sequence[Person]) -> Dict[int, List[str]]:
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


def _icfg_photo_paths(seed: int, code: int, people: Sequence[Person]) -> Dict[int, List[str]]:
    """MSMT17 names: ``<train|test>/<pid>/<pid>_<k>_<cam>_0302morning_<frame>_0.jpg``."""
    paths = {}
    for p in people:
        prng = _rng(seed, code, 14, p.pid)
        cams = prng.choice(np.arange(1, 16), size=2, replace=False)
        frames = prng.integers(1, 10000, size=2)
        folder = "train" if p.split == "train" else "test"
        paths[p.pid] = [f"{folder}/{p.pid:04d}/{p.pid:04d}_{k:03d}_{int(c):02d}_0302morning_{int(f):04d}_0.jpg"
                        for k, c, f in zip((1, 2), cams, frames)]
    return paths


def _rstp_photo_paths(seed: int, code: int, people: Sequence[Person]) -> Dict[int, List[str]]:
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
    stem, suffix = os.path.splitext(photo_rel)
    return stem + ".jpg" if suffix == ".bmp" else photo_rel


def _plan_pedes(name: str, seed: int, scale: float, root: str) -> _Plan:
    code = _CODES[name]
    n = _n_people(name, scale)
    groups = make_groups(seed, name, n)
    rng = _rng(seed, code, 2)
    n_test = max(2, int(round(0.2 * n)))
    n_val = max(2, int(round(0.1 * n)))
    test, rest = _take_groups(rng, groups, n_test)
    val, train = _take_groups(rng, rest, n_val)
    people, next_id = [], 1
    for split, gs in (("train", train), ("val", val), ("test", test)):
        count = sum(len(g) for g in gs)
        ids = next_id + rng.permutation(count)
        people += _assign(gs, split, ids)
        next_id += count
    people.sort(key=lambda q: q.pid)
    plan = _Plan(name, people)
    caption = _CAPTIONERS[name]
    paths = _PHOTO_PATHS[name](seed, code, people)
    sketches = os.path.join(root, SKETCH_FOLDER[name])
    entries = []
    for p in people:
        for k, rel in zip((1, 2), paths[p.pid]):
            plan.jobs.append(("photo+trace", (seed, code, 10, p.pid, k), p,
                              os.path.join(root, "imgs", rel), os.path.join(sketches, _sketch_path(rel))))
            crng = _rng(seed, code, 11, p.pid, k)
            n_cap = _pick(crng, _CAPTIONS_PER_PHOTO[name])
            caps = []
            while len(caps) < n_cap:
                c = caption(p, crng)
                if c not in caps:
                    caps.append(c)
            if name == "rstpreid":      # the dataset's own annotation file
                entries.append({"id": p.pid, "img_path": rel, "captions": caps, "split": p.split})
                continue
            entry = {"id": p.pid, "file_path": rel, "captions": caps, "split": p.split}
            if p.split == "train" and crng.random() < 0.5:
                bts = []
                while len(bts) < len(caps):
                    c = caption_bt(p, crng)
                    if c not in bts and c not in caps:
                        bts.append(c)
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


def _plan_market(seed: int, scale: float, root: str) -> _Plan:
    name = "mask1k"
    code = _CODES[name]
    n = _n_people(name, scale)
    groups = make_groups(seed, name, n)
    rng = _rng(seed, code, 2)
    query, train = _take_groups(rng, groups, n // 2)
    n_train, n_query = sum(map(len, train)), sum(map(len, query))
    ids = rng.choice(np.arange(1, 1502), size=n_train + n_query, replace=False)
    people = _assign(train, "train", ids[:n_train]) + _assign(query, "query", ids[n_train:])
    people.sort(key=lambda q: (q.split != "train", q.pid))
    plan = _Plan(name, people)
    for p in people:
        prng = _rng(seed, code, 3, p.pid)
        n_photos = int(prng.integers(2, 5))
        cams = sorted(int(c) for c in prng.choice(np.arange(1, 7), size=n_photos, replace=False))
        for k, cam in enumerate(cams):
            frame = int(prng.integers(1, 160000))
            fname = f"{p.pid:04d}_c{cam}s{int(prng.integers(1, 7))}_{frame:06d}_00.jpg"
            plan.jobs.append(("photo", (seed, code, 10, p.pid, k), p,
                              os.path.join(root, "photo", p.split, fname), None))
            plan.photos += 1
        n_styles = int(prng.integers(2, 7))
        chosen = sorted(prng.choice(len(STYLES), size=n_styles, replace=False).tolist())
        plan.styles[p.pid] = [STYLES[si] for si in chosen]
        for si in chosen:
            st = STYLES[si]
            plan.jobs.append(("drawn", (seed, code, 12, p.pid, si), p,
                              os.path.join(root, "sketch", st, p.split, market_sketch_name(p.pid, st)), st))
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


def _plan_pku(seed: int, scale: float, root: str) -> _Plan:
    name = "pku-sketch"
    code = _CODES[name]
    n = _n_people(name, scale)
    groups = make_groups(seed, name, n)
    rng = _rng(seed, code, 2)
    members = [m for g in groups for m in g]
    ids = 1 + rng.permutation(len(members))
    people = sorted((Person(pid=int(i), split="all", **m) for m, i in zip(members, ids)),
                    key=lambda q: q.pid)
    plan = _Plan(name, people)
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
            plan.jobs.append(("photo", (seed, code, 10, p.pid, k), p,
                              os.path.join(root, "photo", fname), None))
            crng = _rng(seed, code, 11, p.pid, k)
            lines.append(f"{p.pid}/{fname}@{caption_cuhk(p, crng)}")
        si = style_of[p.pid]
        plan.styles[p.pid] = [STYLES[si]]
        plan.jobs.append(("drawn", (seed, code, 12, p.pid, si), p,
                          os.path.join(root, "sketch", f"{p.pid}.jpg"), STYLES[si]))
    plan.photos, plan.sketches = 2 * len(people), len(people)
    # the released file starts with a UTF-8 byte-order mark and ends its lines with CRLF
    plan.texts["TriReID.txt"] = ("\ufeff" + "".join(line + "\r\n" for line in lines)).encode("utf-8")
    for si, style in enumerate(PKU_STYLES):
        pids = [p.pid for p in people if style_of[p.pid] == si]
        plan.texts[f"styleAnnotation/{style.lower()}_{len(pids)}.txt"] = "".join(f"{i}\n" for i in pids)
    return plan


def plan_dataset(name: str, seed: int = 0, scale: float = 1.0, root: str = "") -> _Plan:
    """Who is in dataset ``name`` and which files to write (nothing is written)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == "mask1k":
        return _plan_market(seed, scale, root)
    if name == "pku-sketch":
        return _plan_pku(seed, scale, root)
    return _plan_pedes(name, seed, scale, root)


def people(name: str, seed: int = 0, scale: float = 1.0) -> List[Person]:
    """The people of dataset ``name`` as :func:`generate` draws them."""
    return plan_dataset(name, seed, scale).people


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------

def _dirs_of(plan: _Plan) -> Iterable[str]:
    seen = set()
    for job in plan.jobs:
        for path in (job[3], job[4] if job[0] == "photo+trace" else None):
            if path:
                d = os.path.dirname(path)
                if d not in seen:
                    seen.add(d)
                    yield d


def _write_meta(plan: _Plan, root: str) -> None:
    from scipy.io import savemat

    for rel, content in plan.texts.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, bytes):     # exact bytes (byte-order mark, CRLF)
            with open(path, "wb") as fh:
                fh.write(content)
            continue
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            if isinstance(content, str):
                fh.write(content)
            else:
                json.dump(content, fh, indent=1, ensure_ascii=False)
                fh.write("\n")
    for rel, content in plan.mats.items():
        savemat(os.path.join(root, rel), content, do_compression=False, oned_as="row")
        _clear_mat_timestamp(os.path.join(root, rel))


def _clear_mat_timestamp(path: str) -> None:
    """MAT files carry a creation date in their text header: blank it for reproducibility."""
    with open(path, "r+b") as fh:
        header = fh.read(116)
        text = header.split(b"\x00")[0].rstrip(b" ")
        fixed = b"MATLAB 5.0 MAT-file Platform: posix, Created by: datasets.synthetic"
        if text.startswith(b"MATLAB 5.0 MAT-file"):
            fh.seek(0)
            fh.write(fixed.ljust(116, b" "))


def _summary(plan: _Plan, path: str, status: str, seed: int, scale: float) -> dict:
    return {"dataset": plan.name, "folder": path, "status": status, "seed": seed,
            "scale": scale, "people": len(plan.people), "photos": plan.photos,
            "sketches": plan.sketches, "persons": [p.to_dict() for p in plan.people],
            "sketch_styles": {str(pid): styles for pid, styles in plan.styles.items()}}


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def generate(out_dir, seed: int = 0, scale: float = 1.0, datasets: Optional[Sequence[str]] = None,
             overwrite: bool = False, workers: Optional[int] = None) -> Dict[str, dict]:
    """Write the synthetic datasets under ``out_dir``; return a summary per dataset.

    Each entry has ``status`` (``generated``, ``skipped`` when a finished folder
    was there already, ``foreign`` when a folder not written by this module was
    there and left alone), ``people``, ``photos``, ``sketches``, ``folder``,
    ``persons`` (the attributes of every person, :meth:`Person.to_dict`) and
    ``sketch_styles`` (``{"<pid>": [style, ...]}``, the styles of ``STYLES`` each
    person's drawn sketches are in; empty for the PEDES sets, whose sketches are
    traced).  A finished folder written in another ``FORMAT_VERSION`` is
    regenerated even without ``overwrite``.
    """
    names = list(DATASETS if datasets is None else datasets)
    for nm in names:
        if nm not in DATASETS:
            raise ValueError(f"unknown dataset {nm!r}; choose from {', '.join(DATASETS)}")
    if scale <= 0:
        raise ValueError("scale must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, dict] = {}
    todo: List[Tuple[_Plan, Path, Path]] = []
    for nm in names:
        final = out / FOLDERS[nm]
        marker = final / MARKER
        if final.exists():
            if not marker.is_file():
                log.warning("%s exists and was not written by this generator: left alone", final)
                summary[nm] = {"dataset": nm, "folder": str(final), "status": "foreign",
                               "people": 0, "photos": 0, "sketches": 0, "persons": [],
                               "sketch_styles": {}}
                continue
            try:
                info = json.loads(marker.read_text())
            except ValueError:          # a damaged marker: treat as an unknown format
                info = {}
            if info.get("format") != FORMAT_VERSION:
                # our own folder in an older layout would only confuse the loaders
                log.warning("%s was written in format %s, not %s: regenerating it",
                            final, info.get("format"), FORMAT_VERSION)
            elif not overwrite:
                if (info.get("seed"), info.get("scale")) != (seed, scale):
                    log.warning("%s was generated with seed=%s scale=%s; keeping it "
                                "(use --overwrite to regenerate)", final, info.get("seed"), info.get("scale"))
                else:
                    log.info("%s is complete: skipped", final)
                info.update(status="skipped", folder=str(final))
                summary[nm] = info
                continue
        tmp = out / f".{FOLDERS[nm]}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        plan = plan_dataset(nm, seed, scale, str(tmp))
        for d in _dirs_of(plan):
            os.makedirs(d, exist_ok=True)
        todo.append((plan, tmp, final))

    jobs = [job for plan, _, _ in todo for job in plan.jobs]
    if jobs:
        n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        start = time.perf_counter()
        if n_workers > 1 and len(jobs) > 50:
            with ProcessPoolExecutor(n_workers) as pool:
                list(pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (8 * n_workers))))
        else:
            for job in jobs:
                _run_job(job)
        log.info("rendered %d jobs in %.1f s with %d worker(s)", len(jobs),
                 time.perf_counter() - start, n_workers)

    for plan, tmp, final in todo:
        _write_meta(plan, str(tmp))
        info = _summary(plan, str(final), "generated", seed, scale)
        info["format"] = FORMAT_VERSION
        with open(tmp / MARKER, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in info.items() if k not in ("status", "folder")}, fh, indent=1)
            fh.write("\n")
        if final.exists():            # only ever our own folder (checked above)
            shutil.rmtree(final)
        os.replace(tmp, final)
        log.info("%s: %d people, %d photos, %d sketches", final, len(plan.people),
                 plan.photos, plan.sketches)
        summary[plan.name] = info
    return {nm: summary[nm] for nm in names}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Write small procedural stand-ins for CUHK-PEDES, ICFG-PEDES, RSTPReid, "
                    "Market-Sketch-1K and PKU-Sketch in their real layouts.")
    parser.add_argument("--out", default="data/synthetic", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies the number of people (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                        help="only these datasets (default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate folders this generator wrote before")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: up to 4)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    summary = generate(args.out, seed=args.seed, scale=args.scale, datasets=args.datasets,
                       overwrite=args.overwrite, workers=args.workers)
    parts = [f"{FOLDERS[nm]} {s['status']} ({s['people']} people, {s['photos']} photos, "
             f"{s['sketches']} sketches)" for nm, s in summary.items()]
    size = sum(_folder_size(s["folder"]) for s in summary.values() if s["status"] != "foreign")
    print(f"{args.out}: " + "; ".join(parts)
          + f"; {size / 2 ** 20:.1f} MiB in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
