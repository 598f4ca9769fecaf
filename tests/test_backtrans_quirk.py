"""``data.drop_captions_without_backtrans``: the paper's code pairs ``captions`` with
``captions_bt`` one to one (``zip``), so an entry with fewer back-translations trains on
fewer captions; off by default."""
from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from datasets import pedes
from utils.config import load_config

ENTRIES = [
    # two captions, one back-translation: the paper's code trains on the first only
    {"id": 1, "file_path": "train/1.jpg", "captions": ["A man in red.", "He has a bag."],
     "captions_bt": ["A man wearing red."]},
    # no back-translations at all: the paper's code fills in empty ones, keeps both
    {"id": 2, "file_path": "train/2.jpg", "captions": ["A woman.", "She walks."]},
    # as many back-translations as captions: nothing to drop
    {"id": 3, "file_path": "train/3.jpg", "captions": ["A child."],
     "captions_bt": ["A kid."]},
]


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "CUHK-PEDES"
    folder.mkdir()
    (folder / "train_reid.json").write_text(json.dumps(ENTRIES))
    (folder / "test_reid.json").write_text(json.dumps(ENTRIES[:1]))
    for entry in ENTRIES:
        for sub in ("imgs", "imgs-sketch"):
            path = folder / sub / entry["file_path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16), (entry["id"] * 40, 0, 0)).save(path)
    return tmp_path


def _by_person(samples) -> dict:
    """{person label: [(caption, back-translation or None)]}, in order."""
    found = {}
    for sample in samples:
        found.setdefault(sample.label, []).append(
            (sample.captions[0], sample.captions_bt[0] if sample.captions_bt else None))
    return found


def _samples(root, drop: bool, empty: bool = False, clean: bool = False):
    return pedes.train_samples(root, ["cuhk-pedes"], clean=clean, empty_missing_backtrans=empty,
                               drop_captions_without_backtrans=drop)


def test_off_by_default_every_caption_trains(root):
    assert _by_person(_samples(root, drop=False)) == {
        0: [("A man in red.", "A man wearing red."), ("He has a bag.", None)],
        1: [("A woman.", None), ("She walks.", None)],
        2: [("A child.", "A kid.")]}


def test_on_an_entry_keeps_the_captions_with_a_back_translation(root, caplog):
    with caplog.at_level(logging.INFO, logger="datasets.pedes"):
        samples = _samples(root, drop=True)
    assert _by_person(samples) == {
        0: [("A man in red.", "A man wearing red.")],  # 1 of 2: as zip(captions, captions_bt)
        1: [("A woman.", None), ("She walks.", None)],  # no captions_bt: kept (see below)
        2: [("A child.", "A kid.")]}
    lines = [r.getMessage() for r in caplog.records if "drop_captions_without_backtrans" in
             r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("CUHK-PEDES train: dropped 1 of 5 captions")
    assert lines[0].endswith("0 photo(s) kept no caption")


def test_with_empty_missing_backtrans_as_the_paper_s_code(root):
    """The paper's code first fills a missing captions_bt with one empty string per caption,
    then zips: the entry without back-translations keeps both captions, each with ""."""
    assert _by_person(_samples(root, drop=True, empty=True)) == {
        0: [("A man in red.", "A man wearing red.")],
        1: [("A woman.", ""), ("She walks.", "")],
        2: [("A child.", "A kid.")]}
    # Only the fill-in, without the drop: every caption, the extra one without a partner.
    assert _by_person(_samples(root, drop=False, empty=True))[0] == [
        ("A man in red.", "A man wearing red."), ("He has a bag.", None)]


def test_an_entry_with_empty_back_translations_loses_its_photo(root, caplog):
    entries = [dict(ENTRIES[0], captions_bt=[]), *ENTRIES[1:]]
    (root / "CUHK-PEDES" / "train_reid.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.INFO, logger="datasets.pedes"):
        samples = _samples(root, drop=True, clean=True)
    # Person 1's only photo trains on nothing, as zip(captions, []) gives nothing; its
    # label stays taken, as the paper's code numbers a person before pairing the captions.
    assert sorted({s.label for s in samples}) == [1, 2]
    assert "dropped 2 of 5 captions" in caplog.text and "1 photo(s) kept no caption" in caplog.text
    assert [s.captions[0] for s in samples if s.label == 2] == ["a child"]  # cleaned


def test_the_key_reaches_the_loader(root, caplog):
    base = [f"data.root={root}", "data.dataset=cuhk-pedes", "data.pre_caption=false"]
    off = pedes.config_train_samples(load_config(None, base), ["cuhk-pedes"])
    with caplog.at_level(logging.INFO, logger="datasets.pedes"):
        on = pedes.config_train_samples(
            load_config(None, [*base, "data.drop_captions_without_backtrans=true"]),
            ["cuhk-pedes"])
    assert (len(off), len(on)) == (5, 4)
    assert "dropped 1 of 5 captions" in caplog.text
    assert load_config(None, []).data.drop_captions_without_backtrans is False
