"""People: families of silhouettes crossed with colour schemes.

The information design ("crossed families"): a family shares everything the
Market-1501 attribute sentence says about shape (gender, age, hair length, sleeve
length, lower garment and its length, bag, hat) and is F silhouettes x C colour
schemes, one person per combination.

* The F silhouettes differ only in traits a line sketch shows and the sentence never
  states: a print on the top (drawn in a shade of the garment's colour, so it adds no
  colour word), a coat-length top, hairstyle, boots, bag shape and build.
* The C schemes differ only in the colours the sentence states (top and lower).
* Colours the sentence does not state (hair, skin, shoes, bag, hat) are the family's:
  drawn per person they would be identity a query cannot carry, so within a family the
  photo differs exactly in what the sketch or the words say.

So the sentence narrows a search to the F people of one scheme, the sketch to the C
people of one silhouette (plus look-alikes from other families), and only both to the
person. :mod:`.design` counts and checks this.

Every random draw comes from :func:`_rng`, a stream keyed by ``(seed, dataset
code, ...)``, so who is in a dataset does not depend on what else is generated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import cache

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


# (silhouettes F, colour schemes C) of a family, and how often each is drawn
FAMILY_SHAPES = ((3, 2), (4, 2), (3, 3), (4, 3))
_FAMILY_SHAPE_P = (0.3, 0.25, 0.25, 0.2)

# traits that tell the silhouettes of a family apart (a sketch shows them, the sentence
# never names them)
PRINTS = ("plain", "band", "stripes", "sash", "logo")    # on the top, in a shade of its colour
TOP_LENGTHS = ("regular", "coat")                        # coat: down to mid-thigh
HAIRSTYLES = {"short": ("plain", "fringe", "tuft"), "long": ("loose", "ponytail", "bun")}
FOOTWEAR = ("shoes", "boots")
BAG_SHAPES = ("box", "round")
BUILDS = {"slim": 0.82, "regular": 1.0, "broad": 1.2}      # width factor
STATURES = {"short": 0.92, "regular": 1.0, "tall": 1.08}   # height factor
SILHOUETTE_TRAITS = ("print", "top_length", "hairstyle", "footwear", "bag_shape", "build",
                     "stature")
# what a line sketch shows, as discrete facts: the family's shape facts (also in the
# sentence) and the silhouette's own traits (never in it)
SIGNATURE_FIELDS = ("gender", "age", "hair", "sleeve", "lower", "lower_long", "bag", "hat",
                    *SILHOUETTE_TRAITS)

# A print is a shade of the garment's colour: towards white (+) or black (-) by this
# share. Each is 80 % of the most that still reads as the garment's colour (nearest of
# COLOUR_RGB) under lighting x0.9 to x1.1 (yellow 65 %: darker, it nears brown), in the
# direction that changes the luminance more: 14 (white, pink) to 47 (blue) levels against
# the garment.
PRINT_SHADE = {"black": 0.11, "white": -0.06, "red": 0.2, "purple": 0.19,
               "yellow": -0.14, "gray": 0.19, "blue": 0.27, "green": -0.26,
               "pink": -0.09, "brown": 0.12}


def print_rgb(colour: str) -> tuple[float, float, float]:
    """The RGB of a print on a garment of ``colour``: a lighter or darker shade of it."""
    amount = PRINT_SHADE[colour]
    rgb = np.array(COLOUR_RGB[colour], np.float64)
    target = 255.0 if amount > 0 else 0.0
    return tuple(float(v) for v in rgb + abs(amount) * (target - rgb))


@dataclass(frozen=True)
class Silhouette:
    """Everything a line drawing shows; shared by the C people of one silhouette.

    The family's shape facts and proportions, the hair colour and skin are shared by
    every member of the family; the traits of ``SILHOUETTE_TRAITS`` (and the
    proportions they scale) are this silhouette's own.
    """

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
    lower: str           # trousers | shorts | skirt | dress
    lower_long: bool     # long lower-body clothing
    hem: float           # where shorts/skirt/dress end, fraction of the leg
    bag: str             # none | backpack | bag | handbag
    bag_side: int        # -1 left, +1 right (image coordinates)
    bag_size: float
    hat: bool
    hat_side: int
    print: str = "plain"         # PRINTS
    top_length: str = "regular"  # TOP_LENGTHS (coat only over trousers or a long skirt)
    hairstyle: str = "plain"     # HAIRSTYLES[hair]
    footwear: str = "shoes"      # FOOTWEAR
    bag_shape: str = "none"      # BAG_SHAPES, "none" without a bag
    build: str = "regular"       # BUILDS (already applied to shoulder, hip and limb)
    stature: str = "regular"     # STATURES (already applied to height)


@dataclass(frozen=True)
class Person:
    """One identity: silhouette ``silhouette`` of family ``family`` in colour scheme
    ``scheme``."""

    pid: int
    family: int
    silhouette: int          # index of the silhouette within the family
    scheme: int              # index of the colour scheme within the family
    split: str
    sil: Silhouette
    top: tuple[str, ...]     # one or two colours (UP_COLOURS; two: the sleeves in the second;
    #                          a dress: its colour)
    lower_colour: str        # DOWN_COLOURS (a dress: same as top)
    shoes: str               # the family's
    bag_colour: str          # the family's
    hat_colour: str          # the family's

    def colours(self) -> tuple:
        """The colour facts that tell the schemes of a family apart."""
        return (self.top, self.lower_colour)

    def signature(self) -> tuple:
        """What a line sketch shows of this person, as discrete facts (``SIGNATURE_FIELDS``)."""
        return tuple(getattr(self.sil, name) for name in SIGNATURE_FIELDS)

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


def _sample_family(rng: np.random.Generator) -> Silhouette:
    """The family's shape facts, proportions, hair colour and skin (traits left plain)."""
    u = rng.uniform
    gender = _pick(rng, ("male", "female"))
    age = _pick(rng, ("young", "teenager", "adult", "old"), p=(0.1, 0.17, 0.58, 0.15))
    female = gender == "female"
    # room for a tall silhouette (STATURES) inside the frame
    height = {"young": u(0.56, 0.66), "teenager": u(0.70, 0.80),
              "adult": u(0.77, 0.86), "old": u(0.74, 0.84)}[age]
    head = {"young": u(0.15, 0.18), "teenager": u(0.13, 0.155),
            "adult": u(0.118, 0.145), "old": u(0.12, 0.145)}[age]
    shoulder = u(0.09, 0.115) if female else u(0.105, 0.13)
    hip = u(0.082, 0.1) if female else u(0.07, 0.085)
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
    bag = _pick(rng, ("none", "backpack", "bag", "handbag"), p=(0.42, 0.22, 0.2, 0.16))
    return Silhouette(
        gender=gender, age=age, height=height, head=head, shoulder=shoulder, hip=hip,
        waist=waist, leg=leg, arm=u(0.36, 0.42), limb=u(0.045, 0.058),
        hair=hair, hair_len=u(0.06, 0.22) if hair == "long" else 0.0,
        hair_volume=u(1.0, 1.2), hair_colour=hair_colour,
        skin=int(rng.integers(len(SKIN_RGB))), sleeve=sleeve,
        sleeve_len=u(0.35, 0.75), lower=lower, lower_long=lower_long, hem=hem, bag=bag,
        bag_side=int(_pick(rng, (-1, 1))), bag_size=u(0.9, 1.1),
        hat=bool(rng.random() < 0.2), hat_side=int(_pick(rng, (-1, 1))),
        bag_shape="none" if bag == "none" else "box",
    )


def _trait_choices(base: Silhouette) -> dict[str, tuple]:
    """The values each silhouette trait may take in a family with ``base``'s shape facts."""
    hairstyles = HAIRSTYLES[base.hair]
    if base.hat:             # a hat would hide a tuft or a bun
        hairstyles = tuple(h for h in hairstyles if h not in ("tuft", "bun"))
    coat_fits = base.lower == "trousers" or (base.lower == "skirt" and base.lower_long)
    return {"print": PRINTS, "top_length": TOP_LENGTHS if coat_fits else ("regular",),
            "hairstyle": hairstyles, "footwear": FOOTWEAR,
            "bag_shape": ("none",) if base.bag == "none" else BAG_SHAPES,
            "build": tuple(BUILDS), "stature": tuple(STATURES)}


def _sample_silhouettes(rng: np.random.Generator, base: Silhouette, count: int) -> list:
    """``count`` silhouettes of one family: every one its own print, and any two differ
    in at least one more trait, so no two share a signature."""
    choices = _trait_choices(base)
    prints = [PRINTS[int(i)] for i in rng.choice(len(PRINTS), size=count, replace=False)]
    traits: list[dict] = []
    for pr in prints:
        while True:
            t = {name: _pick(rng, choices[name]) for name in SILHOUETTE_TRAITS[1:]}
            if all(any(t[k] != o[k] for k in t) for o in traits):
                break
        traits.append({"print": pr, **t})
    out = []
    for t in traits:
        width, tall = BUILDS[t["build"]], STATURES[t["stature"]]
        out.append(replace(base, height=base.height * tall, shoulder=base.shoulder * width,
                           hip=base.hip * width, limb=base.limb * (0.5 + 0.5 * width), **t))
    return out


def _sentence_key(sil: Silhouette, top: tuple, lower_colour: str) -> tuple:
    """Stands for the attribute sentence: equal keys, equal sentences (and the reverse)."""
    person = Person(0, 0, 0, 0, "", sil, top, lower_colour, "", "", "")
    return tuple(sorted(person.market_attributes().items()))


def _sample_scheme(rng: np.random.Generator, sil: Silhouette) -> tuple[tuple, str]:
    """Top colours and lower colour of one colour scheme."""
    if sil.lower == "dress":
        c = _pick(rng, DRESS_COLOURS)
        return (c,), c
    if sil.sleeve == "long" and rng.random() < 0.2:     # sleeves in a second colour
        i, j = rng.choice(len(UP_COLOURS), size=2, replace=False)
        top = (UP_COLOURS[int(i)], UP_COLOURS[int(j)])
    else:
        top = (_pick(rng, UP_COLOURS),)
    return top, _pick(rng, tuple(c for c in DOWN_COLOURS if c != top[0]))


@cache
def _splittable(people: int, families: int) -> bool:
    """Whether ``people`` can be split into families of FAMILY_SHAPES, at least
    ``families`` of them."""
    if people == 0:
        return families <= 0
    return any(_splittable(people - f * c, families - 1)
               for f, c in FAMILY_SHAPES if f * c <= people)


def _family_shapes(rng: np.random.Generator, n: int, min_families: int = 1) -> list[tuple]:
    """(F, C) of each family: ``n`` people in all (or the fewest above ``n`` that can be
    split) in at least ``min_families`` families."""
    total = max(n, 1)
    while not _splittable(total, min_families):
        total += 1
    shapes, left, need = [], total, min_families
    while left:
        options = [k for k, (f, c) in enumerate(FAMILY_SHAPES)
                   if f * c <= left and _splittable(left - f * c, need - 1)]
        p = np.array([_FAMILY_SHAPE_P[k] for k in options])
        k = options[int(rng.choice(len(options), p=p / p.sum()))]
        shapes.append(FAMILY_SHAPES[k])
        left -= FAMILY_SHAPES[k][0] * FAMILY_SHAPES[k][1]
        need -= 1
    return shapes


def make_families(seed: int, dataset: str, n: int, min_families: int = 1) -> list[list[dict]]:
    """Families of people (silhouette, colours and indices), before ids and splits are
    given: about ``n`` people in at least ``min_families`` families. No two families of
    a dataset share an attribute sentence, so each sentence is exactly one family's
    scheme, worn by its F silhouettes."""
    code = _CODES[dataset]
    shapes = _family_shapes(_rng(seed, code, 0), n, min_families)
    used: set[tuple] = set()           # sentence keys of the families drawn so far
    families = []
    for g, (n_sil, n_schemes) in enumerate(shapes):
        frng = _rng(seed, code, 1, g)
        base = _sample_family(frng)
        sils = _sample_silhouettes(frng, base, n_sil)
        schemes: list[tuple] = []
        while len(schemes) < n_schemes:
            top, lower = _sample_scheme(frng, base)
            key = _sentence_key(base, top, lower)
            if key not in used:
                used.add(key)
                schemes.append((top, lower))
        worn = dict(shoes=_pick(frng, SHOE_COLOURS), bag_colour=_pick(frng, BAG_COLOURS),
                    hat_colour=_pick(frng, UP_COLOURS))
        families.append([dict(family=g, silhouette=i, scheme=j, sil=sil, top=top,
                              lower_colour=lower, **worn)
                         for i, sil in enumerate(sils)
                         for j, (top, lower) in enumerate(schemes)])
    return families
