"""PKU-Sketch with ``idx/``: a split's people come from its sketch list and its photos are
every photo of theirs in ``photo/``, as the paper's code takes them; the visible lists are
only compared with ``photo/`` (log warnings, ``datasets.check`` warnings)."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from datasets import check, pku_sketch, prepare
from datasets import synthetic as S


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("pku")
    S.generate(root, seed=0, scale=0.1, datasets=["pku-sketch"], workers=1)  # 20 people
    return root


@pytest.fixture
def root(generated, tmp_path):
    """A private copy with idx/ for trial 1."""
    shutil.copytree(generated / "PKU-Sketch", tmp_path / "PKU-Sketch")
    prepare.main(["pku-sketch", "--root", str(tmp_path), "--trials", "1"])
    return tmp_path


def _folder(root):
    return root / "PKU-Sketch"


def _people(root, part: str) -> list:
    lines = (_folder(root) / "idx" / f"{part}_sketch_1.txt").read_text().splitlines()
    return sorted(int(line.split()[1]) for line in lines)


def _all_photos_of(root, people) -> list:
    """Every photo of ``people`` in photo/, by person then name."""
    return [path for pid in sorted(people)
            for path in sorted((_folder(root) / "photo").glob(f"{pid}_*.jpg"))]


def _spoil_visible_list(root, part: str) -> tuple:
    """Leave the first photo out of the visible list and name one that does not exist;
    returns (the photo left out, the name that does not exist)."""
    path = _folder(root) / "idx" / f"{part}_visible_1.txt"
    lines = path.read_text().splitlines()
    left_out = lines[0].split()[0]
    ghost = "photo/999_05_1.jpg"
    path.write_text("\n".join(lines[1:] + [f"{ghost} 999 05 0"]) + "\n")
    return left_out, ghost


def test_gallery_is_every_photo_of_the_test_people(root, caplog):
    expected = _all_photos_of(root, _people(root, "test"))
    left_out, ghost = _spoil_visible_list(root, "test")
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        test = pku_sketch.eval_set(root, 1, 0, "test")
    assert test.gallery_paths == expected
    assert _folder(root) / left_out in test.gallery_paths
    assert test.gallery_ids == [int(p.name.split("_")[0]) for p in expected]
    assert test.gallery_cams == [int(p.name.split("_")[1]) for p in expected]
    assert sorted(set(test.sketch_ids)) == _people(root, "test")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "test_visible_1.txt" in warning
    assert "names 1 photo(s) not in photo/ (999_05_1.jpg)" in warning
    assert f"leaves out 1 photo(s) of its people that are in photo/ ({left_out[6:]})" in warning
    assert f"every photo of the split's people in photo/ ({len(expected)})" in warning


def test_training_photos_are_every_photo_of_the_training_people(root, caplog):
    left_out, _ = _spoil_visible_list(root, "train")
    person = int(left_out.split("/")[1].split("_")[0])
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        samples = pku_sketch.train_samples(root, 1, 0)
    assert sorted(int(s.sketch.stem) for s in samples) == _people(root, "train")
    for sample in samples:
        pid = int(sample.sketch.stem)
        assert list(sample.photos) == _all_photos_of(root, [pid])
    (sample,) = [s for s in samples if int(s.sketch.stem) == person]
    assert _folder(root) / left_out in sample.photos
    assert "train_visible_1.txt" in caplog.text and "leaves out 1 photo(s)" in caplog.text
    # data.pku_reference_indexing reads the same photos.
    quirk = pku_sketch.train_samples(root, 1, 0, reference_indexing=True)
    assert {p for s in quirk for p in s.photos} <= {p for s in samples for p in s.photos}


def test_visible_lists_may_be_absent_or_name_someone_else(root, caplog):
    expected = _all_photos_of(root, _people(root, "test"))
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        assert pku_sketch.eval_set(root, 1, 0, "test").gallery_paths == expected
    assert not caplog.records  # prepare's lists agree with photo/
    (_folder(root) / "idx" / "test_visible_1.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        assert pku_sketch.eval_set(root, 1, 0, "test").gallery_paths == expected
    assert not caplog.records  # absent: nothing to say
    stranger = _all_photos_of(root, _people(root, "train")[:1])[0]
    visible = _folder(root) / "idx" / "test_visible_1.txt"
    visible.write_text("".join(f"photo/{p.name} {p.name.split('_')[0]} 05 0\n"
                               for p in expected + [stranger]) + "a line without an id\n")
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        assert pku_sketch.eval_set(root, 1, 0, "test").gallery_paths == expected
    assert f"names 1 photo(s) of people outside its sketch list ({stranger.name})" in caplog.text
    assert "has 1 line(s) that are not 'path id cam style'" in caplog.text


def test_check_lists_the_disagreements_as_warnings(root, tmp_path, capsys):
    people = _people(root, "train") + _people(root, "test")
    left_out, ghost = _spoil_visible_list(root, "test")
    status = check.main([f"data.root={root}", "data.dataset=pku-sketch", "data.trials=[1]",
                         "--workers", "1", "--json", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    assert status == 0 and "no problems: training would work" in out
    assert "warnings: 2" in out
    assert f"PKU-Sketch/{ghost}, which is not in photo/" in out
    assert "PKU-Sketch/idx/test_visible_1.txt, line " in out
    assert f"leaves out PKU-Sketch/{left_out}, a photo of one of its people" in out
    report = json.loads((tmp_path / "p.json").read_text())
    assert len(report["warnings"]["split_lists"]) == 2
    rows = report["tables"]["PKU-Sketch (splits: idx/)"]["rows"]
    assert rows["trial 1 test"]["photos"] == len(_all_photos_of(root, _people(root, "test")))
    assert rows["all trials"]["photos"] == len(_all_photos_of(root, people))
