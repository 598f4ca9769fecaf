"""Captions: what each photo shows, worded as in CUHK-PEDES, ICFG-PEDES and RSTPReid."""
from __future__ import annotations

from collections.abc import Sequence

from .persons import Person, _pick


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
    return dict(noun=noun, base=base, age=age_desc, he="he" if male else "she",
                his="his" if male else "her",
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
                f"{f['shoe_colour']} and {f['his']} hair is {f['hair_colour']} and "
                f"{f['hair_len']}.")
    else:
        text = (f"dressed in {_join([f['top'], f['lower'], f['shoes']])}, the {f['noun']} has "
                f"{f['hair']}{extra}.")
    return ". ".join(_cap(s.strip()) for s in text.split(". "))


_CAPTIONERS = {"cuhk-pedes": caption_cuhk, "icfg-pedes": caption_icfg,
               "rstpreid": caption_rstp, "pku-sketch": caption_cuhk}
_CAPTIONS_PER_PHOTO = {"cuhk-pedes": (1, 2, 2), "icfg-pedes": (1,), "rstpreid": (2,)}
