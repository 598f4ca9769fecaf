"""People: silhouettes, the colours each group member wears, and groups of look-alikes.

Every random draw comes from :func:`_rng`, a stream keyed by ``(seed, dataset
code, ...)``, so who is in a dataset does not depend on what else is generated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid", "mask1k", "pku-sketch")
_CODES = {name: i + 1 for i, name in enumerate(DATASETS)}   # keys every random stream of a dataset

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

# the fields of the Market-1501 attribute struct, in its order
MARKET_FIELDS = (
    "age", "backpack", "bag", "handbag", "downblack", "downblue", "downbrown",
    "downgray", "downgreen", "downpink", "downpurple", "downwhite", "downyellow",
    "upblack", "upblue", "upgreen", "upgray", "uppurple", "upred", "upwhite",
    "upyellow", "clothes", "down", "up", "hair", "hat", "gender")


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
    top: tuple[str, ...]     # one or two colours (UP_COLOURS; a dress: its colour)
    lower_colour: str        # DOWN_COLOURS (a dress: same as top)
    shoes: str
    bag_colour: str
    hat_colour: str

    def colours(self) -> tuple:
        """The colour facts that tell group members apart."""
        return (self.top, self.lower_colour)

    def market_attributes(self) -> dict[str, int]:
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


def _group_sizes(rng: np.random.Generator, n: int) -> list[int]:
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


def make_groups(seed: int, dataset: str, n: int) -> list[list[dict]]:
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
