"""The information design of the synthetic people: what the words say, what a sketch shows.

Market's attribute sentence (:func:`.layouts.attribute_sentence`) states a family's shape
facts and a colour scheme; a sketch shows a family's shape facts and a silhouette's own
traits (:meth:`.persons.Person.signature`). The generator crosses the two (see
:mod:`.persons`), so that in every split

* each sentence is worn by the F (3 or 4) silhouettes of one family scheme,
* each signature by the C (2 or 3) schemes of one silhouette, plus look-alikes,
* each (sentence, signature) by one person.

:func:`design_counts` counts this per split, :func:`check_design` lists what breaks it,
and :func:`best_possible` gives the R1 and mAP of an exact-matching retrieval that knows
only the sentence, only the signature, or both: the ceiling of each query type.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import comb

from .layouts import FOLDERS, attribute_sentence
from .persons import Person

# Words for the silhouette's own traits; none may occur in an attribute sentence.
TRAIT_WORDS = ("print", "band", "stripe", "stripes", "sash", "logo", "circle", "coat",
               "thigh-length", "tunic", "boots", "fringe", "tuft", "ponytail", "bun", "loose",
               "slim", "thin", "broad", "stocky", "tall", "round", "square", "boxy",
               "lighter", "darker")
_TRAIT_RE = re.compile(r"\b(" + "|".join(TRAIT_WORDS) + r")\b", re.IGNORECASE)
KEYS = ("text_only", "sketch_only", "both")


def _group_sizes(keys: Sequence) -> dict[str, float]:
    """Over the people, how many share each one's key: mean (what a query sees), min, max."""
    count = Counter(keys)
    sizes = [count[k] for k in keys]
    return {"mean": round(float(np.mean(sizes)), 2), "min": int(min(sizes)),
            "max": int(max(sizes))}


def design_counts(people: Iterable[Person]) -> dict[str, dict]:
    """Per split: people, families, and people per sentence, per signature and per
    (sentence, signature) (``{"mean", "min", "max"}`` over the people of the split)."""
    by_split = defaultdict(list)
    for p in people:
        by_split[p.split].append(p)
    out = {}
    for split, members in by_split.items():
        sentences = [attribute_sentence(p) for p in members]
        signatures = [p.signature() for p in members]
        out[split] = {
            "people": len(members), "families": len({p.family for p in members}),
            "sentences": len(set(sentences)), "signatures": len(set(signatures)),
            "people_per_sentence": _group_sizes(sentences),
            "people_per_signature": _group_sizes(signatures),
            "people_per_sentence_and_signature": _group_sizes(list(zip(sentences,
                                                                       signatures))),
        }
    return out


def check_design(people: Sequence[Person], min_per_sentence: int = 3) -> list[str]:
    """What breaks the crossed design in ``people`` (one dataset), as messages; empty
    when nothing does.

    Checked: families are whole F x C grids in one split; members sharing a scheme share
    the sentence and their colours, members sharing a silhouette share the line drawing
    (and so the signature); within a family schemes differ in the sentence and
    silhouettes in the signature; in each split every sentence is shared by at least
    ``min_per_sentence`` people, two people with one sentence differ in signature, and
    no sentence names a sketch-only trait (``TRAIT_WORDS``).
    """
    problems = []
    sentence = {p.pid: attribute_sentence(p) for p in people}
    families = defaultdict(list)
    for p in people:
        families[p.family].append(p)
    for fam, members in sorted(families.items()):
        splits = {p.split for p in members}
        if len(splits) > 1:
            problems.append(f"family {fam} straddles splits {sorted(splits)}")
        sils = sorted({p.silhouette for p in members})
        schemes = sorted({p.scheme for p in members})
        grid = sorted((p.silhouette, p.scheme) for p in members)
        if grid != [(i, j) for i in sils for j in schemes] or len(sils) < 2 or len(schemes) < 2:
            problems.append(f"family {fam} is not a grid of >= 2 silhouettes x >= 2 schemes: "
                            f"{grid}")
        for attr, same, what in (("scheme", "sentence", "colour scheme"),
                                 ("silhouette", "signature", "silhouette")):
            groups = defaultdict(list)
            for p in members:
                groups[getattr(p, attr)].append(p)
            values = {}
            for index, group in groups.items():
                if same == "sentence":
                    got = {sentence[p.pid] for p in group}
                    alike = {p.colours() for p in group}
                else:
                    got = {p.signature() for p in group}
                    alike = {p.sil for p in group}
                if len(got) > 1 or len(alike) > 1:
                    problems.append(f"family {fam}: the members of {what} {index} differ in "
                                    f"their {same}")
                values[index] = next(iter(got))
            if len(set(values.values())) < len(values):
                problems.append(f"family {fam}: two {what}s share a {same}")
    by_split = defaultdict(list)
    for p in people:
        by_split[p.split].append(p)
    for split, members in sorted(by_split.items()):
        count = Counter(sentence[p.pid] for p in members)
        few = [text for text, n in count.items() if n < min_per_sentence]
        if few:
            problems.append(f"{split}: {len(few)} sentence(s) shared by fewer than "
                            f"{min_per_sentence} people, e.g. {few[0]!r}")
        pairs = Counter((sentence[p.pid], p.signature()) for p in members)
        twins = [pair for pair, n in pairs.items() if n > 1]
        if twins:
            problems.append(f"{split}: {len(twins)} (sentence, signature) pair(s) shared by "
                            f"several people, e.g. {twins[0][0]!r}")
    for p in people:
        named = _TRAIT_RE.findall(sentence[p.pid])
        if named:
            problems.append(f"person {p.pid}: the sentence names sketch-only trait(s) "
                            f"{sorted(set(named))}: {sentence[p.pid]!r}")
    return problems


def expected_rank_metrics(similarity, query_ids, gallery_ids) -> dict[str, float]:
    """R1 and mAP (percent) averaged over every order of tied scores, exactly.

    ``similarity`` [Q, G], ids [Q] and [G]; queries without a match are skipped. Within a
    block of equal scores every order is equally likely: the first entry is a match with
    probability (matches in the top block) / (its size), and the k-th of m matches in a
    block of n sits at place t with probability C(t-1, k-1) C(n-t, m-k) / C(n, m).
    """
    sim = np.asarray(similarity, np.float64)
    match = np.asarray(query_ids)[:, None] == np.asarray(gallery_ids)[None, :]
    r1, aps = [], []
    for row, hits in zip(sim, match):
        total = int(hits.sum())
        if not total:
            continue
        _, block = np.unique(-row, return_inverse=True)      # block 0: the highest score
        sizes = np.bincount(block)
        matches = np.bincount(block, weights=hits).astype(int)
        r1.append(matches[0] / sizes[0])
        ap, before, found = 0.0, 0, 0
        for n, m in zip(sizes, matches):
            places = np.arange(1, n + 1)
            for k in range(1, m + 1):
                chance = comb(places - 1, k - 1) * comb(n - places, m - k) / comb(n, m)
                ap += float((chance * (found + k) / (before + places)).sum())
            before, found = before + n, found + m
        aps.append(ap / total)
    if not r1:
        raise ValueError("no query has a match in the gallery")
    return {"R1": 100.0 * float(np.mean(r1)), "mAP": 100.0 * float(np.mean(aps))}


def best_possible(queries: Sequence[Person], gallery: Sequence[Person]) -> dict[str, dict]:
    """R1 and mAP of retrievals that know only the sentence (``text_only``), only the
    signature (``sketch_only``) or both, by exact matching, ties averaged; one query per
    person of ``queries``, ``gallery`` one entry per gallery photo (its person)."""
    keys = {"text_only": lambda p: attribute_sentence(p),
            "sketch_only": lambda p: p.signature(),
            "both": lambda p: (attribute_sentence(p), p.signature())}
    out = {}
    for name, key in keys.items():
        codes: dict = {}
        q = np.array([codes.setdefault(key(p), len(codes)) for p in queries])
        g = np.array([codes.setdefault(key(p), len(codes)) for p in gallery])
        sim = (q[:, None] == g[None, :]).astype(np.float64)
        metrics = expected_rank_metrics(sim, [p.pid for p in queries], [p.pid for p in gallery])
        out[name] = {k: round(v, 2) for k, v in metrics.items()}
    return out


def format_design(summary: dict[str, dict]) -> str:
    """The design part of ``python -m datasets.synthetic``'s report, as a text table."""
    lines = [f"{'dataset':<17} {'split':<6} {'people':>6} {'families':>8} "
             f"{'per sentence':>12} {'per signature':>13} {'per both':>8}",
             f"{'':<17} {'':<6} {'':>6} {'':>8} {'mean / min':>12} {'mean / min':>13} "
             f"{'max':>8}"]
    best = None
    for name, info in summary.items():
        design = info.get("design")
        if not design:
            continue
        for split, c in design["splits"].items():
            s, g = c["people_per_sentence"], c["people_per_signature"]
            lines.append(f"{FOLDERS[name]:<17} {split:<6} {c['people']:>6} {c['families']:>8} "
                         f"{s['mean']:>6.2f} / {s['min']:<3} {g['mean']:>7.2f} / {g['min']:<3} "
                         f"{c['people_per_sentence_and_signature']['max']:>8}")
        if design.get("best_possible"):
            best = (name, design["best_possible"])
    if best:
        name, b = best
        lines.append(f"best possible on the {FOLDERS[name]} test split (R1 / mAP, one query "
                     "per person, exact matching, ties averaged): "
                     + ", ".join(f"{k.replace('_', ' ')} {b[k]['R1']:.1f} / {b[k]['mAP']:.1f}"
                                 for k in KEYS))
    return "\n".join(lines)
