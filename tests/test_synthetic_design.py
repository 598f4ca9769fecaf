"""The synthetic world's information design ("crossed families"): Market's attribute sentence
names a family's shape facts and a colour scheme, a sketch shows a silhouette, and only both
name the person. Checked on the generator's plans (nothing rendered) at scale 1.0 and at the
test suite's 0.2, and on the best-possible retrieval numbers the design allows."""
from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from datasets import synthetic as S
from datasets.market_sketch import feedback_sentence
from datasets.synthetic import design
from datasets.synthetic.drawing import _person_palette
from datasets.synthetic.persons import HAIRSTYLES
from utils.metrics import rank_metrics

PEDES = ("cuhk-pedes", "icfg-pedes", "rstpreid")
SCALES = (1.0, 0.2)
_PEOPLE: dict = {}


def _people(name, scale, seed=0):
    if (name, scale, seed) not in _PEOPLE:
        _PEOPLE[name, scale, seed] = S.people(name, seed=seed, scale=scale)
    return _PEOPLE[name, scale, seed]


def _by(people, key):
    groups = defaultdict(list)
    for p in people:
        groups[key(p)].append(p)
    return groups


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", S.DATASETS)
def test_the_design_holds(name, scale):
    people = _people(name, scale)
    assert design.check_design(people) == []
    counts = design.design_counts(people)
    want = {"mask1k": {"train", "query"}, "pku-sketch": {"all"}}.get(name, {"train", "val", "test"})
    assert set(counts) == want
    for split, c in counts.items():
        assert c["people"] >= 6 and c["families"] >= 1, split        # a whole family at least
        assert 3 <= c["people_per_sentence"]["min"] <= c["people_per_sentence"]["max"] <= 6
        assert c["people_per_signature"]["min"] >= 2
        assert c["people_per_sentence_and_signature"]["max"] == 1


@pytest.mark.parametrize("name", ("mask1k",) + PEDES)
def test_each_sentence_is_worn_by_three_or_more_in_every_split(name):
    for scale in SCALES:
        for split, members in _by(_people(name, scale), lambda p: p.split).items():
            count = Counter(S.attribute_sentence(p) for p in members)
            assert min(count.values()) >= 3, (scale, split)


def test_sentence_by_scheme_signature_by_silhouette():
    """Within a family: one scheme, one sentence; one silhouette, one signature; and the
    other way round, different schemes and silhouettes differ there."""
    for p_family in _by(_people("mask1k", 1.0), lambda p: p.family).values():
        sentences = {p.scheme: {S.attribute_sentence(q) for q in p_family if q.scheme == p.scheme}
                     for p in p_family}
        signatures = {p.silhouette: {q.signature() for q in p_family
                                     if q.silhouette == p.silhouette} for p in p_family}
        assert all(len(v) == 1 for v in sentences.values())
        assert all(len(v) == 1 for v in signatures.values())
        assert len({next(iter(v)) for v in sentences.values()}) == len(sentences)
        assert len({next(iter(v)) for v in signatures.values()}) == len(signatures)
        # the shape facts the sentence states are the family's
        shape = {(p.sil.gender, p.sil.age, p.sil.hair, p.sil.sleeve, p.sil.lower, p.sil.lower_long,
                  p.sil.bag, p.sil.hat) for p in p_family}
        assert len(shape) == 1


def test_sketch_traits_are_never_in_the_sentence():
    pattern = re.compile(r"\b(" + "|".join(S.TRAIT_WORDS) + r")\b", re.IGNORECASE)
    for name in S.DATASETS:
        people = _people(name, 1.0)
        for p in people:
            assert not pattern.search(S.attribute_sentence(p)), p.pid
        # two people with one sentence differ in what a sketch shows
        for group in _by(people, S.attribute_sentence).values():
            assert len({p.signature() for p in group}) == len(group)
        # ... and the silhouette's traits do vary
        for trait in S.SILHOUETTE_TRAITS:
            assert len({getattr(p.sil, trait) for p in people}) >= 2, (name, trait)
    # changing a silhouette trait never changes the attributes (so never the sentence)
    p = _people("mask1k", 1.0)[0]
    for trait, value in (("print", "sash"), ("top_length", "coat"), ("footwear", "boots"),
                         ("hairstyle", "fringe"), ("build", "broad"), ("stature", "tall")):
        assert replace(p, sil=replace(p.sil, **{trait: value})).market_attributes() == \
            p.market_attributes()


def test_prints_are_shades_of_the_garment():
    names = list(S.COLOUR_RGB)
    table = np.array([S.COLOUR_RGB[n] for n in names])
    nearest = lambda rgb: names[int(np.argmin(((table - rgb) ** 2).sum(1)))]  # noqa: E731
    lum = np.array([0.299, 0.587, 0.114])
    for colour, rgb in S.COLOUR_RGB.items():
        shade = np.array(S.print_rgb(colour))
        assert abs((shade - np.array(rgb)) @ lum) >= 12, colour           # a visible shade
        for light in np.linspace(0.9, 1.1, 9):                           # of the same name
            assert nearest(np.clip(light * shade, 0, 255)) == colour, (colour, light)
    # the photo draws the print in that shade of the top's (first) colour, nothing else
    for p in _people("mask1k", 1.0)[:40]:
        lut = _person_palette(p)
        assert tuple(lut[S.LABEL["print"]]) == pytest.approx(S.print_rgb(p.top[0]), abs=1e-3)


def _small_sketch(sil, pose):
    lab = S.label_map(S.build_figure(sil, pose))
    img = S.sketch_from_labels(lab, S.DRAWN["A"], np.random.default_rng(0))
    return np.asarray(img.convert("L").resize((16, 32), Image.BOX), np.float32)


def test_sketch_traits_survive_a_32x16_input():
    """Each print, a coat, boots, a tuft, a bun and a ponytail change a 32 x 16 sketch by
    dark lines (a stroke is ~255 levels at full size)."""
    pose = S.Pose(cx=32.0, feet=124.0)
    people = _people("mask1k", 1.0)
    trousers = next(p for p in people if p.sil.lower == "trousers" and p.sil.bag == "none")
    short = next(p for p in people if p.sil.hair == "short" and not p.sil.hat)
    long_ = next(p for p in people if p.sil.hair == "long" and not p.sil.hat)
    plain = dict(print="plain", top_length="regular", footwear="shoes")
    changes = [(trousers, {"print": pr}) for pr in S.PRINTS[1:]]
    changes += [(trousers, {"top_length": "coat"}), (trousers, {"footwear": "boots"}),
                (short, {"hairstyle": "tuft"}), (short, {"hairstyle": "fringe"}),
                (long_, {"hairstyle": "bun"}), (long_, {"hairstyle": "ponytail"})]
    for p, change in changes:
        base = replace(p.sil, **plain, hairstyle=HAIRSTYLES[p.sil.hair][0])
        diff = np.abs(_small_sketch(replace(base, **change), pose) - _small_sketch(base, pose))
        assert diff.max() > 60 and diff.sum() > 250, (change, diff.max(), diff.sum())
    # and the print is a part of its own in the label map, so every sketch outlines it
    for pr in S.PRINTS:
        lab = S.label_map(S.build_figure(replace(trousers.sil, print=pr), pose))
        assert ((lab == S.LABEL["print"]).sum() > 100) == (pr != "plain"), pr


def test_unstated_colours_are_the_familys():
    for p_family in _by(_people("mask1k", 1.0), lambda p: p.family).values():
        assert len({(p.shoes, p.bag_colour, p.hat_colour, p.sil.hair_colour, p.sil.skin)
                    for p in p_family}) == 1


@pytest.mark.parametrize("name", PEDES)
def test_pedes_photos_carry_the_attribute_sentence(name, tmp_path):
    plan = S.plan_dataset(name, seed=0, scale=0.2, root=str(tmp_path))
    person = {p.pid: p for p in plan.people}
    entries = [e for texts in plan.texts.values() for e in texts]
    assert len(entries) == 2 * len(plan.people)                     # every photo
    for e in entries:
        p = person[e["id"]]
        assert e["captions"][-1] == feedback_sentence(p.market_attributes())
        assert e["captions"].count(e["captions"][-1]) == 1
        if "captions_bt" in e:                                     # one paraphrase per caption
            assert len(e["captions_bt"]) == len(e["captions"])
            # the sentence's paraphrase states its facts (colours, the carried things) ...
            paraphrase = e["captions_bt"][-1]
            for colour in p.top + (p.lower_colour,):
                assert colour in paraphrase
            assert (p.sil.bag in paraphrase) == (p.sil.bag != "none")
            # ... and no sketch-only trait
            assert not re.search(r"\b(" + "|".join(S.TRAIT_WORDS) + r")\b", paraphrase)


@pytest.mark.parametrize("scale", SCALES)
def test_best_possible_needs_both(scale):
    plan = S.plan_dataset("mask1k", seed=0, scale=scale)
    queries = [p for p in plan.people if p.split == "query"]
    gallery = [job.person for job in plan.jobs
               if isinstance(job, S.PhotoJob) and job.person.split == "query"]
    best = S.best_possible(queries, gallery)
    assert best["both"] == {"R1": 100.0, "mAP": 100.0}
    for one in ("text_only", "sketch_only"):
        assert best[one]["R1"] < 100 and best[one]["mAP"] < 100, best
    if scale == 1.0:            # the aim: each alone a coarse filter, R1 about 25-50
        for one in ("text_only", "sketch_only"):
            assert 20 <= best[one]["R1"] <= 55, best


def test_best_possible_of_the_old_design_is_text_only():
    """A world whose sentences are unique (the old generator: groups that share a silhouette
    and differ in colours) lets the words alone find everyone: the check must say so."""
    people = _people("mask1k", 1.0)
    # one silhouette per family, a scheme per member: the old groups
    old = [replace(p, sil=next(q.sil for q in people if q.family == p.family
                               and q.silhouette == 0)) for p in people]
    problems = design.check_design(old)
    assert any("share a signature" in m for m in problems)
    assert any("(sentence, signature) pair(s)" in m for m in problems)
    # a colour scheme per person: every sentence unique
    colours = itertools.cycle(itertools.product(S.UP_COLOURS, S.DOWN_COLOURS))
    unique = [replace(p, top=(top,), lower_colour=lower)
              for p, (top, lower) in zip(people, colours)]
    problems = design.check_design(unique)
    assert any("fewer than 3 people" in m for m in problems)
    assert any("differ in their sentence" in m for m in problems)
    queries = [p for p in unique if p.split == "query"]
    assert max(Counter(S.attribute_sentence(p) for p in queries).values()) == 1
    best = S.best_possible(queries, [p for p in queries for _ in range(2)])
    assert best["text_only"] == {"R1": 100.0, "mAP": 100.0}


def test_check_design_names_every_kind_of_break(monkeypatch):
    people = _people("mask1k", 0.2)
    assert design.check_design(people) == []
    moved = [replace(p, split="query" if p.split == "train" else "train")
             if p.pid == people[0].pid else p for p in people]
    assert any("straddles" in m for m in design.check_design(moved))
    dropped = people[1:]
    assert any("not a grid" in m for m in design.check_design(dropped))
    real = design.attribute_sentence
    monkeypatch.setattr(design, "attribute_sentence",
                        lambda p: real(p)[:-1] + " with a wide band across the chest.")
    assert any("sketch-only trait" in m for m in design.check_design(people))


def _brute_force(similarity, query_ids, gallery_ids):
    """rank_metrics averaged over every order of the gallery (ties are broken by order)."""
    g = similarity.shape[1]
    r1 = ap = 0.0
    perms = list(itertools.permutations(range(g)))
    for perm in perms:
        perm = list(perm)
        out = rank_metrics(similarity[:, perm], query_ids, np.asarray(gallery_ids)[perm])
        r1, ap = r1 + out["R1"], ap + out["mAP"]
    return r1 / len(perms), ap / len(perms)


def test_expected_rank_metrics_averages_over_tie_orders():
    rng = np.random.default_rng(0)
    for _ in range(6):
        q, g = 3, int(rng.integers(3, 7))
        sim = rng.integers(0, 3, size=(q, g)).astype(np.float64)      # many ties
        gallery_ids = rng.integers(0, 3, size=g)
        query_ids = np.array([int(rng.choice(gallery_ids)) for _ in range(q)])
        got = S.expected_rank_metrics(sim, query_ids, gallery_ids)
        r1, ap = _brute_force(sim, query_ids, gallery_ids)
        assert got["R1"] == pytest.approx(r1, abs=1e-6)
        assert got["mAP"] == pytest.approx(ap, abs=1e-6)
    # no ties: exactly rank_metrics
    sim = rng.normal(size=(4, 9))
    gallery_ids = rng.integers(0, 3, size=9)
    query_ids = np.array([0, 1, 2, 1])
    want = rank_metrics(sim, query_ids, gallery_ids)
    got = S.expected_rank_metrics(sim, query_ids, gallery_ids)
    assert got["R1"] == pytest.approx(want["R1"]) and got["mAP"] == pytest.approx(want["mAP"])


def test_summary_reports_the_design(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path), "--scale", "0.1", "--datasets", "mask1k", "rstpreid",
                   "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for split in ("train", "query"):
        assert re.search(rf"Market-Sketch-1K\s+{split}\s+\d+\s+\d+\s+[\d.]+ / 3", out), out
    assert re.search(r"RSTPReid\s+val\s+6\s+1\s+3\.00 / 3\s+2\.00 / 2\s+1\b", out), out
    assert "best possible on the Market-Sketch-1K test split" in out
    assert re.search(r"both 100\.0 / 100\.0", out), out
