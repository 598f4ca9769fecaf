"""Stage-2 datasets: Market-Sketch-1K and PKU-Sketch loaders on the synthetic layouts."""
from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from datasets import market_sketch, pku_sketch, prepare
from datasets import synthetic as S
from datasets.captions import clause_pieces, feedback_rounds, pre_caption
from utils.errors import DatasetError

SCALE = 0.1  # 12 Market people, 20 PKU people


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    summary = S.generate(root, seed=0, scale=SCALE, datasets=["mask1k", "pku-sketch"],
                         workers=1)
    persons = {name: {d["pid"]: S.person_from_dict(d) for d in info["persons"]}
               for name, info in summary.items()}
    return root, persons


def _copy(generated, tmp_path, folder, ignore=()) -> Path:
    """A private copy of one generated dataset folder under ``tmp_path``."""
    root = generated[0]
    shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns(*ignore))
    return tmp_path


def _market_id(path: Path) -> int:
    return int(path.name[:4])


def _pku_id(path: Path) -> int:
    return int(path.stem.split("_")[0])


# ----------------------------------------------------------------------------
# Market-Sketch-1K
# ----------------------------------------------------------------------------

def test_market_train_labels_follow_sorted_ids(generated):
    root, _ = generated
    samples = market_sketch.train_samples(root)
    sketches = sorted((root / "Market-Sketch-1K" / "sketch").glob("*/train/*.jpg"))
    assert sorted(s.sketch for s in samples) == sketches
    ids = sorted({_market_id(s.sketch) for s in samples})
    assert sorted({s.label for s in samples}) == list(range(len(ids)))
    for sample in samples:
        assert sample.label == ids.index(_market_id(sample.sketch))
        assert sample.captions == ()


def test_market_train_sketch_paired_with_all_own_photos(generated):
    root, _ = generated
    photo_dir = root / "Market-Sketch-1K" / "photo" / "train"
    for sample in market_sketch.train_samples(root):
        pid = _market_id(sample.sketch)
        assert sample.photos and {_market_id(p) for p in sample.photos} == {pid}
        assert sorted(sample.photos) == sorted(photo_dir.glob(f"{pid:04d}_*.jpg"))


def test_market_eval_counts_match_disk(generated):
    root, _ = generated
    folder = root / "Market-Sketch-1K"
    ev = market_sketch.eval_set(root, "test")
    gallery = sorted((folder / "photo" / "query").glob("*.jpg"))
    queries = sorted((folder / "sketch").glob("*/query/*.jpg"))
    assert ev.gallery_paths == gallery and ev.sketch_paths == queries
    assert ev.gallery_ids == [_market_id(p) for p in gallery]
    assert ev.sketch_ids == [_market_id(p) for p in queries] == ev.text_ids
    assert ev.gallery_cams is None and ev.sketch_cams is None
    assert len(ev.feedback) == len(queries)
    assert ev.text_queries == ev.feedback
    assert not any("*" in text for text in ev.feedback)


def _expected_sentence(person) -> str:
    """The sentence a person should get, worked out from the generator's own drawing with
    the paper's pattern ("A/An <age> <gender> with <hair> hair. <He/She> is in ...")."""
    sil = person.sil
    article = "An" if sil.age in ("adult", "old") else "A"
    gender, pronoun = {"male": ("man", "He"), "female": ("woman", "She")}[sil.gender]
    top = " and ".join(c for c in S.UP_COLOURS if c in person.top)
    length = "long" if sil.lower_long else "short"
    garment = "dress" if sil.lower in ("skirt", "dress") else "pants"
    carried = [thing for thing, on in (("a hat", sil.hat),
                                       ("a " + sil.bag, sil.bag != "none")) if on]
    return (f"{article} {sil.age} {gender} with {sil.hair} hair. {pronoun} is in {top} "
            f"{sil.sleeve} sleeve clothes, and wears {person.lower_colour} {length} {garment}"
            + (" with " + " and ".join(carried) + "." if carried else "."))


def test_market_feedback_agrees_with_generated_people(generated):
    root, persons = generated
    ev = market_sketch.eval_set(root, "test")
    people = persons["mask1k"]
    for pid, text in zip(ev.sketch_ids, ev.feedback):
        assert text == _expected_sentence(people[pid]), pid
        assert text == market_sketch.feedback_sentence(people[pid].market_attributes())


FULL = {"gender": 2, "age": 1, "hair": 2, "up": 2, "upred": 2, "upwhite": 2,
        "clothes": 2, "down": 1, "downblack": 2, "backpack": 2, "handbag": 2, "bag": 1,
        "hat": 2}


def _mat_part(people: dict, fields: list) -> dict:
    part = {}
    for field in fields:
        if field == "image_index":
            index = np.empty((1, len(people)), dtype=object)
            for position, pid in enumerate(people):
                index[0, position] = f"{pid:04d}"
            part[field] = index
        else:
            part[field] = np.array([[attrs.get(field, 1) for attrs in people.values()]],
                                   dtype=np.float64)
    return part


def test_read_attributes_by_field_name(tmp_path):
    canonical = list(market_sketch.ATTRIBUTE_FIELDS) + ["image_index"]
    shuffled = list(canonical)
    random.Random(0).shuffle(shuffled)
    train = {7: {**FULL, "age": 4}, 31: {"gender": 1, "age": 3, "downbrown": 2}}
    test = {1500: {"gender": 2, "hair": 2, "hat": 2}}
    path = tmp_path / "attrs.mat"
    scipy.io.savemat(path, {"market_attribute": {"test": _mat_part(test, shuffled[::-1]),
                                                 "train": _mat_part(train, shuffled)}})
    raw = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["market_attribute"]
    assert raw.train._fieldnames == shuffled != canonical
    attributes = market_sketch.read_attributes(path)
    assert sorted(attributes) == [7, 31, 1500]
    for pid, given in {**train, **test}.items():
        assert attributes[pid] == {field: given.get(field, 1)
                                   for field in market_sketch.ATTRIBUTE_FIELDS}
    assert market_sketch.feedback_sentence(attributes[1500]).startswith(
        "A young woman with long hair. She is in")


def test_read_attributes_names_missing_field(tmp_path):
    fields = [f for f in market_sketch.ATTRIBUTE_FIELDS if f != "hat"] + ["image_index"]
    path = tmp_path / "attrs.mat"
    part = _mat_part({1: {}}, fields)
    scipy.io.savemat(path, {"market_attribute": {"train": part, "test": part}})
    with pytest.raises(DatasetError, match=r"market_attribute\.train lacks field\(s\) hat"):
        market_sketch.read_attributes(path)


def test_market_has_only_test_split(generated):
    with pytest.raises(DatasetError, match="Market-Sketch-1K has only a test split"):
        market_sketch.eval_set(generated[0], "val")


def test_market_missing_folder_shows_layout(tmp_path):
    with pytest.raises(DatasetError) as error:
        market_sketch.train_samples(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "Market-Sketch-1K") in message
    assert "expected layout" in message and "sketch/<A..F>/train" in message


def test_market_missing_mat(generated, tmp_path):
    root = _copy(generated, tmp_path, "Market-Sketch-1K", ignore=["*.mat"])
    market_sketch.train_samples(root)  # training needs no attributes
    with pytest.raises(DatasetError, match=r"attribute file not found: \S*market_attribute\.mat"):
        market_sketch.eval_set(root, "test")


def test_market_query_without_attributes(generated, tmp_path):
    root = _copy(generated, tmp_path, "Market-Sketch-1K", ignore=["*.mat"])
    people = list(generated[1]["mask1k"].values())
    missing = min(p.pid for p in people if p.split == "query")
    mat = root / "Market-Sketch-1K" / "market_attribute.mat"
    scipy.io.savemat(mat, S.market_attribute_struct([p for p in people if p.pid != missing]))
    with pytest.raises(DatasetError, match=f"{missing:04d}.*{mat.name}"):
        market_sketch.eval_set(root, "test")


def test_market_sketch_without_train_photo(generated, tmp_path):
    root = _copy(generated, tmp_path, "Market-Sketch-1K")
    sketch = sorted((root / "Market-Sketch-1K" / "sketch").glob("*/train/*.jpg"))[0]
    for photo in (root / "Market-Sketch-1K" / "photo" / "train").glob(sketch.name[:4] + "_*"):
        photo.unlink()
    with pytest.raises(DatasetError, match=sketch.name):
        market_sketch.train_samples(root)


# ----------------------------------------------------------------------------
# PKU-Sketch
# ----------------------------------------------------------------------------

def _caption_lines(root) -> list:
    return (root / "PKU-Sketch" / "TriReID.txt").read_text(encoding="utf-8-sig").splitlines()


def test_pku_train_samples(generated):
    root, _ = generated
    samples = pku_sketch.train_samples(root, None, 0)
    lines = _caption_lines(root)
    ids = sorted(int(s.sketch.stem) for s in samples)
    assert len(ids) == len(set(ids)) == 15
    assert sorted(s.label for s in samples) == list(range(15))
    for sample in samples:
        pid = int(sample.sketch.stem)
        assert sample.label == ids.index(pid)
        assert len(sample.photos) == 2 and {_pku_id(p) for p in sample.photos} == {pid}
        assert all(re.fullmatch(rf"{pid}_0[3-7]_[1-9]\d*\.jpg", p.name) for p in sample.photos)
        assert list(sample.captions) == [line.split("@", 1)[1] for line in lines
                                         if line.startswith(f"{pid}/")]
    # Trial None is trial 1; without idx/ the split follows the seed.
    assert [s.sketch for s in samples] == [s.sketch for s in pku_sketch.train_samples(root, 1, 0)]
    assert [s.sketch for s in samples] != [s.sketch for s in pku_sketch.train_samples(root, 1, 5)]


def test_pku_trials_disjoint_and_different(generated):
    root, _ = generated
    test_sets = []
    for trial in range(1, 11):
        train = pku_sketch.train_samples(root, trial, 0)
        train_ids = {int(s.sketch.stem) for s in train}
        ev = pku_sketch.eval_set(root, trial, 0, "test")
        assert sorted(s.label for s in train) == list(range(len(train_ids)))
        assert not train_ids & set(ev.gallery_ids) and not train_ids & set(ev.sketch_ids)
        assert set(ev.gallery_ids) == set(ev.sketch_ids)
        # Cameras from the photo names (03..07); sketches camera 0, which no photo has.
        assert ev.gallery_cams == [int(p.stem.split("_")[1]) for p in ev.gallery_paths]
        assert set(ev.gallery_cams) <= {3, 4, 5, 6, 7} and set(ev.sketch_cams) == {0}
        test_sets.append(frozenset(ev.sketch_ids))
    assert len(set(test_sets)) == 10


def test_pku_split_drawn_within_styles_without_idx(generated, caplog):
    root, _ = generated
    with caplog.at_level(logging.INFO, logger="datasets.pku_sketch"):
        train = pku_sketch.train_samples(root, 2, 3)
    assert "drew the split of trial 2 within the sketch styles" in caplog.text
    assert "seed=3" in caplog.text
    ev = pku_sketch.eval_set(root, 2, 3, "test")
    train_ids = {int(s.sketch.stem) for s in train}
    test_ids = set(ev.sketch_ids)
    assert (len(train_ids), len(test_ids)) == (15, 5)       # 3/4 and 1/4 of 20 people
    assert not train_ids & test_ids and len(train_ids | test_ids) == 20
    styles, _ = pku_sketch.read_styles(root / "PKU-Sketch")
    expected = pku_sketch._test_counts({style: len(ids) for style, ids in styles.items()})
    assert {style: len(set(ids) & test_ids) for style, ids in styles.items()} == expected
    again = pku_sketch.eval_set(root, 2, 3, "test")
    assert again.sketch_ids == ev.sketch_ids and again.feedback == ev.feedback
    others = {frozenset(pku_sketch.eval_set(root, trial, 3, "test").sketch_ids)
              for trial in range(1, 11)}
    assert len(others) > 5


def test_pku_caption_choice_deterministic_and_seeded(generated):
    root, _ = generated
    first = pku_sketch.eval_set(root, 1, 0, "test")
    assert pku_sketch.eval_set(root, 1, 0, "test").text_queries == first.text_queries
    lines = _caption_lines(root)
    photos = {pid: [p.name for p in first.gallery_paths if _pku_id(p) == pid]
              for pid in first.sketch_ids}
    for pid, text, feedback in zip(first.sketch_ids, first.text_queries, first.feedback):
        assert any(f"{pid}/{name}@{text}" in lines for name in photos[pid])
        assert feedback == text  # the raw caption, as written
    assert first.text_ids == first.sketch_ids
    by_seed = {tuple(pku_sketch.eval_set(root, 1, seed, "test").text_queries)
               for seed in range(8)}
    assert len(by_seed) > 1


def test_pku_person_without_caption(generated, tmp_path, caplog):
    root = _copy(generated, tmp_path, "PKU-Sketch")
    first = pku_sketch.eval_set(root, 1, 0, "test")
    gone = first.sketch_ids[0]
    captions = root / "PKU-Sketch" / "TriReID.txt"
    captions.write_text("".join(line + "\n" for line in _caption_lines(root)
                                if not line.startswith(f"{gone}/")))
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        ev = pku_sketch.eval_set(root, 1, 0, "test")
    assert ev.feedback[0] == "" and ev.text_queries[0] == ""
    assert ev.feedback[1:] == first.feedback[1:]
    assert "1 of 5 test sketches have no caption" in caplog.text


def test_pku_errors(generated, tmp_path):
    with pytest.raises(DatasetError, match="PKU-Sketch folder not found") as error:
        pku_sketch.eval_set(tmp_path, 1, 0, "test")
    assert "TriReID.txt" in str(error.value) and "expected layout" in str(error.value)
    root = _copy(generated, tmp_path, "PKU-Sketch")
    with pytest.raises(DatasetError, match="PKU-Sketch has only a test split"):
        pku_sketch.eval_set(root, 1, 0, "val")
    prepare.main(["pku-sketch", "--root", str(root), "--trials", "10"])
    # The sketch list names a trial's people (the visible list is only compared with photo/).
    with pytest.raises(DatasetError, match=r"test_sketch_11\.txt"):
        pku_sketch.eval_set(root, 11, 0, "test")
    index = root / "PKU-Sketch" / "idx" / "train_sketch_4.txt"
    lines = index.read_text().splitlines()
    lines[2] = lines[2].split()[0]
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"train_sketch_4\.txt, line 3"):
        pku_sketch.train_samples(root, 4, 0)
    captions = root / "PKU-Sketch" / "TriReID.txt"
    captions.write_text(captions.read_text() + "\n21 a caption without the separators\n")
    with pytest.raises(DatasetError, match=r"TriReID\.txt, line \d+: expected"):
        pku_sketch.train_samples(root, 1, 0)


# ----------------------------------------------------------------------------
# Caption text: pre_caption and the clauses of feedback rounds
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("A man wearing a gray sweater, pink shorts and brown shoes. He has short black hair "
     "and holds a green handbag.",
     ["A man wearing a gray sweater,", "pink shorts and brown shoes.",
      "He has short black hair", "and holds a green handbag."]),
    ("the woman is wearing a white top with a long black skirt; she carries a bag",
     ["the woman is wearing a white top", "with a long black skirt;", "she carries a bag"]),
    ("a man with a black and white striped shirt", ["a man with a black and white striped shirt"]),
    ("A teenager man with short hair. He is in black short sleeve clothes, and wears blue "
     "long pants with a backpack.",
     ["A teenager man with short hair.", "He is in black short sleeve clothes,",
      "and wears blue long pants with a backpack."]),
    ("", []),
])
def test_clause_pieces(text, expected):
    assert clause_pieces(text) == expected
    assert " ".join(clause_pieces(text)) == " ".join(text.split())


def test_feedback_rounds_grow_to_the_whole_text():
    text = "A man in a red coat, black trousers. He carries a bag."
    rounds = feedback_rounds(text, 5)
    assert rounds == ["", "A man in a red coat,", "A man in a red coat, black trousers.",
                      text, text, text]
    assert feedback_rounds("", 2) == ["", "", ""]


@pytest.mark.parametrize("caption, expected", [
    # Hand-derived from the reference's rules: lower-case; . ! " ( ) * # : ; ~ become
    # spaces; runs of 2+ whitespace become one space; spaces trimmed at both ends.
    ("A man in a Red shirt. He carries a bag.", "a man in a red shirt he carries a bag"),
    ('She wears "blue" jeans (ripped); and: boots!~#*', "she wears blue jeans ripped and boots"),
    ("  commas, stay,  as do-dashes/slashes ", "commas, stay, as do-dashes/slashes"),
    ("tab\tstays but\t\ttabs collapse", "tab\tstays but tabs collapse"),
    ("", ""),
])
def test_pre_caption(caption, expected):
    assert pre_caption(caption) == expected


def test_pre_caption_keeps_77_words():
    assert pre_caption(" ".join(f"w{i}" for i in range(100))).split() == \
        [f"w{i}" for i in range(77)]
