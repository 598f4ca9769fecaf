"""The dataset tools: sketch drawing (datasets.make_sketches) and the pre-training check
(datasets.check), on small synthetic datasets."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import check, make_sketches, pedes, prepare
from datasets.synthetic import generate

SCALE = 0.1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """CUHK-PEDES, Market-Sketch-1K and PKU-Sketch at scale 0.1, with the generator's summary."""
    root = tmp_path_factory.mktemp("data")
    summary = generate(root, seed=0, scale=SCALE, datasets=["cuhk-pedes", "mask1k", "pku-sketch"],
                       workers=1)
    return root, summary


@pytest.fixture
def cuhk_copy(data, tmp_path):
    """A private copy of CUHK-PEDES to break."""
    root = tmp_path / "root"
    shutil.copytree(data[0] / "CUHK-PEDES", root / "CUHK-PEDES")
    return root


def _files(folder: Path) -> list:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _state(folder: Path) -> dict:
    return {name: ((folder / name).stat().st_mtime_ns, (folder / name).read_bytes())
            for name in _files(folder)}


# ----------------------------------------------------------------------------
# make_sketches
# ----------------------------------------------------------------------------

def test_sketch_of_draws_dark_lines_on_white(data):
    photo = Image.open(next((data[0] / "CUHK-PEDES" / "imgs").rglob("*.jpg")))
    sketch = make_sketches.sketch_of(photo)
    assert sketch.size == photo.size
    pixels = np.asarray(sketch.convert("RGB"), np.int16)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    grey = pixels[..., 0]
    assert (grey > 230).mean() > 0.6          # mostly white paper
    assert 0.02 < (grey < 80).mean() < 0.35   # some, not too many, dark strokes
    small = np.asarray(sketch.resize((32, 64), Image.BILINEAR), np.int16)
    assert (small < 128).mean() > 0.02        # the strokes survive the network's input size
    assert make_sketches.sketch_of(photo).tobytes() == sketch.tobytes()  # deterministic
    flat = make_sketches.sketch_of(Image.new("RGB", (20, 40), (90, 120, 30)))
    assert np.asarray(flat).min() > 230       # nothing to draw on a flat image


def test_make_sketches_writes_skips_and_overwrites(data, tmp_path, capsys):
    src = data[0] / "CUHK-PEDES" / "imgs"
    dst = tmp_path / "imgs-sketch"
    assert make_sketches.main([str(src), str(dst), "--workers", "2"]) == 0
    names = _files(src)
    assert _files(dst) == names
    out = capsys.readouterr().out
    assert f"{len(names)} written, 0 skipped" in out and "0 failed" in out
    assert {Path(name).suffix for name in names} == {".jpg", ".png", ".bmp"}
    for name in names:
        with Image.open(src / name) as photo, Image.open(dst / name) as sketch:
            assert sketch.size == photo.size and sketch.format == photo.format
            assert sketch.mode == "L"

    before = _state(dst)
    assert make_sketches.main([str(src), str(dst), "--workers", "1"]) == 0
    assert f"0 written, {len(names)} skipped" in capsys.readouterr().out
    assert _state(dst) == before

    old = 1_000_000_000
    for name in names:
        os.utime(dst / name, ns=(old, old))
    assert make_sketches.main([str(src), str(dst), "--workers", "1", "--overwrite"]) == 0
    assert f"{len(names)} written, 0 skipped" in capsys.readouterr().out
    after = _state(dst)
    assert all(after[name][0] != old for name in names)
    assert all(after[name][1] == before[name][1] for name in names)  # same drawing again


def test_make_sketches_file_kinds_and_leftovers(data, tmp_path, capsys):
    photo = Image.open(next((data[0] / "PKU-Sketch" / "photo").glob("1_*.jpg")))
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b").mkdir(parents=True)
    photo.save(src / "a" / "UPPER.JPG")
    photo.save(src / "a" / "b" / "deep.png")
    photo.convert("RGBA").save(src / "alpha.png")
    photo.save(src / "c.bmp")
    photo.save(src / "d.jpeg")
    (src / "notes.txt").write_text("not an image")
    photo.save(src / ".hidden.jpg")
    leftover = dst / "a" / f".UPPER.JPG.x1{make_sketches.TEMP_SUFFIX}"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a sketch")
    assert make_sketches.main([str(src), str(dst), "--workers", "1"]) == 0
    assert _files(dst) == ["a/UPPER.JPG", "a/b/deep.png", "alpha.png", "c.bmp", "d.jpeg"]
    formats = {name: Image.open(dst / name).format for name in _files(dst)}
    assert formats == {"a/UPPER.JPG": "JPEG", "a/b/deep.png": "PNG", "alpha.png": "PNG",
                       "c.bmp": "BMP", "d.jpeg": "JPEG"}
    assert "5 written" in capsys.readouterr().out


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.jpg"

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(make_sketches.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        make_sketches.write_atomically(Image.new("L", (8, 16), 255), target)
    assert list(target.parent.iterdir()) == []  # neither the sketch nor a temporary file


def test_make_sketches_counts_and_names_corrupt_images(data, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(data[0] / "CUHK-PEDES" / "imgs", src)
    names = _files(src)
    (src / names[3]).write_bytes(b"this is not a JPEG file at all")
    assert make_sketches.main([str(src), str(dst), "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert f"{len(names) - 1} written, 0 skipped" in captured.out and "1 failed" in captured.out
    assert names[3] in captured.err and "Traceback" not in captured.err
    assert _files(dst) == [name for name in names if name != names[3]]


@pytest.mark.parametrize("case", ["missing", "file", "empty", "inside", "same"])
def test_make_sketches_bad_input_exits_2(data, tmp_path, capsys, case):
    src = data[0] / "CUHK-PEDES" / "imgs"
    dst = tmp_path / "dst"
    if case == "missing":
        src = tmp_path / "nowhere"
    elif case == "file":
        src = data[0] / "CUHK-PEDES" / "train_reid.json"
    elif case == "empty":
        src = tmp_path / "empty"
        src.mkdir()
        (src / "readme.txt").write_text("no images here")
    elif case == "inside":
        dst = src / "sketches"
    else:
        dst = src
    with pytest.raises(SystemExit) as exit_info:
        make_sketches.main([str(src), str(dst)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert str(src) in err
    assert not (data[0] / "CUHK-PEDES" / "imgs" / "sketches").exists()
    if case != "inside" and case != "same":
        assert not dst.exists()


# ----------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------

def _check(root, *extra, json_path=None):
    argv = [f"data.root={root}", *extra]
    if json_path is not None:
        argv += ["--json", str(json_path)]
    return check.main(argv)


def test_check_clean_pedes(data, tmp_path, capsys):
    root, summary = data
    status = _check(root, "data.dataset=cuhk-pedes", json_path=tmp_path / "c.json")
    out = capsys.readouterr().out
    assert status == 0 and "no problems" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["ok"] and report["exit_status"] == 0
    assert not any(report["problems"].values())
    rows = report["tables"]["CUHK-PEDES"]["rows"]
    expected = summary["cuhk-pedes"]
    assert rows["total"]["identities"] == expected["people"]
    assert rows["total"]["photos"] == expected["photos"]
    assert rows["total"]["sketches"] == expected["sketches"]
    for split in ("train", "val", "test"):
        entries = json.loads((root / "CUHK-PEDES" / f"{split}_reid.json").read_text())
        assert rows[split]["photos"] == rows[split]["sketches"] == len(entries)
        assert rows[split]["identities"] == len({entry["id"] for entry in entries})
        assert rows[split]["captions"] == sum(len(entry["captions"]) for entry in entries)
        assert f"  {split} " in out
    assert report["images_checked"] == expected["photos"] + expected["sketches"]


def test_check_clean_market_and_pku(data, tmp_path, capsys):
    root, summary = data
    assert _check(root, "data.dataset=mask1k", json_path=tmp_path / "m.json") == 0
    rows = json.loads((tmp_path / "m.json").read_text())["tables"]["Market-Sketch-1K"]["rows"]
    assert rows["total"]["identities"] == summary["mask1k"]["people"]
    assert rows["total"]["photos"] == summary["mask1k"]["photos"]
    assert rows["total"]["sketches"] == summary["mask1k"]["sketches"]
    styles = [key for key in rows["train"] if key.startswith("style ")]
    assert styles and all(sum(rows[part][key] for key in styles) == rows[part]["sketches"]
                          for part in ("train", "query"))

    assert _check(root, "data.dataset=pku-sketch", "data.trials=[1,2]",
                  json_path=tmp_path / "p.json") == 0
    tables = json.loads((tmp_path / "p.json").read_text())["tables"]
    (table,) = tables.values()
    rows = table["rows"]
    info = summary["pku-sketch"]
    for trial in (1, 2):
        train, test = rows[f"trial {trial} train"], rows[f"trial {trial} test"]
        assert train["identities"] + test["identities"] == info["people"]
        assert train["photos"] + test["photos"] == info["photos"]
        assert train["sketches"] + test["sketches"] == info["sketches"]
        assert train["captions"] + test["captions"] == 2 * info["people"]
    assert "trial 2 test" in capsys.readouterr().out


def test_check_finds_every_problem(cuhk_copy, tmp_path, capsys):
    folder = cuhk_copy / "CUHK-PEDES"
    train = json.loads((folder / "train_reid.json").read_text())
    test = json.loads((folder / "test_reid.json").read_text())
    lost_sketch = pedes.SketchFinder(folder).find(train[0]["file_path"])
    lost_sketch.unlink()
    broken_photo = folder / "imgs" / test[1]["file_path"]
    broken_photo.write_bytes(b"\xff\xd8 garbage, not a photo")
    test.append({"id": 4242, "file_path": "test/ghost_1.jpg", "captions": ["a ghost"],
                 "split": "test"})
    test.append({"id": 4243, "split": "test"})
    (folder / "test_reid.json").write_text(json.dumps(test))
    (folder / "val_reid.json").write_text("[]")

    status = _check(cuhk_copy, "data.dataset=cuhk-pedes", json_path=tmp_path / "r.json")
    out = capsys.readouterr().out
    assert status == 1
    assert f"no sketch of photo {train[0]['file_path']}" in out
    assert f"imgs/{test[1]['file_path']}" in out
    assert "test/ghost_1.jpg" in out and "id 4242" in out
    assert "lacks file_path, captions" in out
    assert "val_reid.json: the val split is empty" in out
    assert "training would fail" in out
    problems = json.loads((tmp_path / "r.json").read_text())["problems"]
    assert {key: len(items) for key, items in problems.items() if items} == {
        "layout": 1, "missing_files": 1, "missing_sketches": 1, "unreadable": 1,
        "empty_splits": 1}

    # Skipping unreadable images makes them a warning; the other problems stay fatal.
    assert _check(cuhk_copy, "data.dataset=cuhk-pedes", "data.skip_bad_images=true") == 1


def test_check_unreadable_only_is_skipped_with_skip_bad_images(cuhk_copy, capsys):
    folder = cuhk_copy / "CUHK-PEDES"
    entry = json.loads((folder / "train_reid.json").read_text())[0]
    photo = folder / "imgs" / entry["file_path"]
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])  # truncated JPEG
    # Unreadable only without data.load_truncated_images (tests/test_truncated_images.py).
    strict = "data.load_truncated_images=false"
    assert _check(cuhk_copy, "data.dataset=cuhk-pedes", strict) == 1
    assert f"imgs/{entry['file_path']}" in capsys.readouterr().out
    assert _check(cuhk_copy, "data.dataset=cuhk-pedes", strict, "data.skip_bad_images=true") == 0
    assert "data.skip_bad_images=true" in capsys.readouterr().out


def test_check_pku_problems(data, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(data[0] / "PKU-Sketch", root / "PKU-Sketch")
    assert prepare.main(["pku-sketch", "--root", str(root), "--trials", "2"]) == 0
    index = root / "PKU-Sketch" / "idx" / "test_visible_1.txt"
    index.write_text(index.read_text() + "photo/999_1.jpg 999 1 0\n")
    (root / "PKU-Sketch" / "sketch" / "1.jpg").unlink()
    assert _check(root, "data.dataset=pku-sketch", "data.trials=[1,2]") == 1
    out = capsys.readouterr().out
    assert "PKU-Sketch/photo/999_1.jpg" in out and "test_visible_1.txt, line" in out
    assert out.count("PKU-Sketch/sketch/1.jpg") == 1  # once, though both trials list it

    shutil.rmtree(root / "PKU-Sketch" / "idx")  # splits drawn from the seed instead
    assert _check(root, "data.dataset=pku-sketch", "data.trials=[1]") == 1
    out = capsys.readouterr().out
    assert "drawn from seed=" in out and "PKU-Sketch/sketch/1.jpg" in out


def test_check_names_training_sketches_without_a_photo(data, tmp_path, capsys):
    """A training sketch of a person with no training photo is listed, with the person's id
    as the dataset writes it; test parts may hold such sketches."""
    root = tmp_path / "root"
    shutil.copytree(data[0] / "Market-Sketch-1K", root / "Market-Sketch-1K")
    photos = sorted((root / "Market-Sketch-1K" / "photo" / "train").iterdir())
    person = photos[0].name[:4]
    for photo in photos:
        if photo.name.startswith(person):
            photo.unlink()
    assert _check(root, "data.dataset=mask1k", json_path=tmp_path / "m.json") == 1
    unmatched = json.loads((tmp_path / "m.json").read_text())["problems"]["unmatched"]
    assert unmatched and all(f"has no training photo of person {person}" in line
                             and line.startswith("Market-Sketch-1K train: training sketch ")
                             for line in unmatched)
    capsys.readouterr()

    shutil.copytree(data[0] / "PKU-Sketch", root / "PKU-Sketch")
    assert prepare.main(["pku-sketch", "--root", str(root), "--trials", "1"]) == 0
    # The photos of a split's people come from photo/ (the visible list is only compared).
    index = root / "PKU-Sketch" / "idx" / "train_visible_1.txt"
    gone = index.read_text().splitlines()[0].split()[1]
    for photo in (root / "PKU-Sketch" / "photo").glob(f"{gone}_*"):
        photo.unlink()
    assert _check(root, "data.dataset=pku-sketch", "data.trials=[1]",
                  json_path=tmp_path / "p.json") == 1
    unmatched = json.loads((tmp_path / "p.json").read_text())["problems"]["unmatched"]
    assert len(unmatched) == 1
    assert unmatched[0].startswith("PKU-Sketch trial 1 train: training sketch PKU-Sketch/")
    assert unmatched[0].endswith(f"has no training photo of person {int(gone)}")


@pytest.mark.parametrize("override", ["data.dataset=nope", "data.root={missing}"])
def test_check_bad_input_exits_2(data, tmp_path, capsys, override):
    override = override.format(missing=tmp_path / "missing")
    argv = [f"data.root={data[0]}", "data.dataset=cuhk-pedes", override]
    with pytest.raises(SystemExit) as exit_info:
        check.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert ("'nope'" in err) if "nope" in override else (str(tmp_path / "missing") in err)


def test_check_lists_20_problems_then_a_count(cuhk_copy, tmp_path, capsys):
    sketches = sorted(path for path in (cuhk_copy / "CUHK-PEDES" / "imgs-sketch2").rglob("*")
                      if path.is_file())
    assert len(sketches) > check.LIST_LIMIT
    for sketch in sketches:
        sketch.unlink()
    assert _check(cuhk_copy, "data.dataset=cuhk-pedes", json_path=tmp_path / "r.json") == 1
    out = capsys.readouterr().out
    assert f"missing sketches ({len(sketches)})" in out
    assert f"... and {len(sketches) - check.LIST_LIMIT} more" in out
    problems = json.loads((tmp_path / "r.json").read_text())["problems"]
    assert len(problems["missing_sketches"]) == len(sketches)
