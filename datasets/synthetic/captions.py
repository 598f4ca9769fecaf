"""Captions: what each photo shows, worded as in CUHK-PEDES, ICFG-PEDES and RSTPReid.

The detailed captions name everything a photo shows, the silhouette's own traits (a
print, a coat, hairstyle, boots, a bag's shape, build) included; PKU-Sketch's Tri-ReID
captions leave those out (``shapes=False``). :func:`caption_attributes_bt` paraphrases
the Market attribute sentence, the extra caption of every PEDES photo.
"""
from __future__ import annotations

from collections.abc import Sequence

from .persons import PRINT_SHADE, Person, _pick


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# How the captions name the traits that tell the silhouettes of a family apart (the
# Market attribute sentence never names them; detailed captions do, as CUHK-PEDES's do).
_PRINT_WORDS = {
    "band": ("with a wide {shade} band across the chest", "with a broad {shade} band across it"),
    "stripes": ("with two wide {shade} stripes", "with two broad {shade} horizontal stripes"),
    "sash": ("with a diagonal {shade} sash across the front",
             "with a {shade} diagonal strip from the shoulder to the hip"),
    "logo": ("with a large round {shade} logo on the front",
             "with a big {shade} circle printed on the chest"),
}
_HAIR_WORDS = {"plain": "", "loose": "", "fringe": " with a fringe",
               "tuft": " sticking up on top", "ponytail": " in a ponytail",
               "bun": " tied in a bun"}
_BUILD_WORDS = {"slim": ("slim", "thin"), "broad": ("broad", "stocky"), "regular": ("",)}
_STATURE_WORDS = {"short": ("short",), "tall": ("tall",), "regular": ("",)}


def _facts(p: Person, rng, shapes: bool = True) -> dict:
    """Short phrases for every visible fact about ``p`` (wording drawn from ``rng``).

    ``shapes``: name the silhouette's own traits (print, coat, hairstyle, boots, bag
    shape, build) too; without them the phrases say what today's PKU-Sketch captions say.
    """
    s = p.sil
    male = s.gender == "male"
    noun = {("young", True): "little boy", ("young", False): "little girl",
            ("teenager", True): "teenage boy", ("teenager", False): "teenage girl",
            ("adult", True): "man", ("adult", False): "woman",
            ("old", True): _pick(rng, ("old man", "elderly man")),
            ("old", False): _pick(rng, ("old woman", "elderly woman"))}[(s.age, male)]
    base = {"young": "boy" if male else "girl", "teenager": "boy" if male else "girl",
            "adult": "man" if male else "woman", "old": "man" if male else "woman"}[s.age]
    if shapes:
        build = " ".join(w for w in (_pick(rng, _STATURE_WORDS[s.stature]),
                                     _pick(rng, _BUILD_WORDS[s.build])) if w)
        noun = f"{build} {noun}" if build else noun
        base = f"{build} {base}" if build else base
    age_desc = {"young": "a child", "teenager": "a teenager",
                "adult": "an adult", "old": "elderly"}[s.age]
    c1 = p.top[0]
    c2 = p.top[1] if len(p.top) > 1 else None
    printed = ""
    if shapes and s.print != "plain":
        shade = "lighter" if PRINT_SHADE[c1] > 0 else "darker"
        printed = " " + _pick(rng, _PRINT_WORDS[s.print]).format(shade=shade)
    plain = "plain " if shapes and s.print == "plain" else ""
    if s.lower == "dress":
        length = "long" if s.lower_long else "short"
        top = None
        dress = _pick(rng, (f"{length} {plain}{c1} dress with {s.sleeve} sleeves{printed}",
                            f"{plain}{c1} {s.sleeve}-sleeved {length} dress{printed}"))
        lower = _a(dress)
        lower_bare = dress
    else:
        if shapes and s.top_length == "coat":
            garment = _pick(rng, ("long coat", "thigh-length jacket")
                            if s.sleeve == "long" else
                            ("long short-sleeved tunic", "long short-sleeved coat"))
        else:
            garment = _pick(rng, ("T-shirt", "short-sleeved shirt", "short-sleeved top")
                            if s.sleeve == "short" else
                            ("long-sleeved shirt", "long-sleeved top", "sweater", "jacket"))
        if c2 is not None:
            top = _a(f"{plain}{c1} {garment.replace('long-sleeved ', '')} with {c2} sleeves"
                     + printed.replace(" with ", " and ", 1))
        else:
            top = _a(f"{plain}{c1} {garment}{printed}")
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
    if shapes and s.footwear == "boots":
        shoes = _pick(rng, (f"{p.shoes} boots", f"{p.shoes} high boots"))
    else:
        shoes = _pick(rng, (f"{p.shoes} shoes", f"{p.shoes} sneakers"))
    shape = {"box": _pick(rng, ("square ", "boxy ")), "round": "round ", "none": ""}[s.bag_shape]
    shape = shape if shapes else ""
    bag = {"none": None, "backpack": _a(f"{shape}{p.bag_colour} backpack"),
           "bag": _a(_pick(rng, (f"{shape}{p.bag_colour} shoulder bag",
                                 f"{shape}{p.bag_colour} bag"))),
           "handbag": _a(f"{shape}{p.bag_colour} handbag")}[s.bag]
    bag_verb = {"none": None, "backpack": "carries", "bag": "carries", "handbag": "holds"}[s.bag]
    hat = _a(_pick(rng, (f"{p.hat_colour} cap", f"{p.hat_colour} hat"))) if s.hat else None
    style = _HAIR_WORDS[s.hairstyle] if shapes else ""
    return dict(noun=noun, base=base, age=age_desc, he="he" if male else "she",
                his="his" if male else "her",
                hair=f"{s.hair} {s.hair_colour} hair{style}", hair_len=s.hair + style,
                hair_colour=s.hair_colour, shoe_colour=p.shoes, shoe_word=shoes.split()[-1],
                top=top, lower=lower, lower_bare=lower_bare, shoes=shoes, bag=bag,
                bag_verb=bag_verb, hat=hat, dress=s.lower == "dress")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _outfit(f: dict, with_shoes: bool = True) -> str:
    return _join([f["top"], f["lower"], f["shoes"] if with_shoes else None])


def caption_cuhk(p: Person, rng, shapes: bool = True) -> str:
    f = _facts(p, rng, shapes)
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
        text = (f"there is {_a(f['noun'])} who has on {clothes}{extra}. {f['his']} "
                f"{f['shoe_word']} are {f['shoe_colour']} and {f['his']} hair is "
                f"{f['hair_colour']} and {f['hair_len']}.")
    else:
        text = (f"dressed in {_join([f['top'], f['lower'], f['shoes']])}, the {f['noun']} has "
                f"{f['hair']}{extra}.")
    return ". ".join(_cap(s.strip()) for s in text.split(". "))


def caption_attributes_bt(p: Person, rng) -> str:
    """Another wording of ``p``'s Market attribute sentence: the same facts (age, gender,
    hair length, top colours and sleeves, lower colour, length and garment, what is
    carried), nothing more."""
    s = p.sil
    person = {"male": "man", "female": "woman"}[s.gender]
    age = {"young": "young", "teenager": "teenage", "adult": "adult", "old": "old"}[s.age]
    top = " and ".join(p.top)
    lower = "long" if s.lower_long else "short"
    garment = "dress" if s.lower in ("skirt", "dress") else "pants"
    carried = [thing for thing, on in (("a hat", s.hat), (_a(s.bag), s.bag != "none")) if on]
    if int(rng.integers(2)) == 0:
        text = (f"{_a(age + ' ' + person)} who has {s.hair} hair, wearing {top} clothes with "
                f"{s.sleeve} sleeves and {lower} {p.lower_colour} {garment}")
    else:
        text = (f"{_a(age + ' ' + person)}, {s.hair} hair, in {s.sleeve}-sleeved {top} "
                f"clothes and {p.lower_colour} {garment} that "
                f"{'is' if garment == 'dress' else 'are'} {lower}")
    return _cap(text + (", with " + _join(carried) if carried else "") + ".")


_CAPTIONERS = {"cuhk-pedes": caption_cuhk, "icfg-pedes": caption_icfg,
               "rstpreid": caption_rstp, "pku-sketch": caption_cuhk}
_CAPTIONS_PER_PHOTO = {"cuhk-pedes": (1, 2, 2), "icfg-pedes": (1,), "rstpreid": (2,)}
