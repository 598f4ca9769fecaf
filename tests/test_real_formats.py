"""The datasets as people download them: the PEDES sets' own annotation files and the
Tri-PEDES sketch release, PKU-Sketch as unpacked (with datasets.prepare), Market-Sketch-1K
names and a full Market-1501 gallery. Small fixtures in the real file forms, built here."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from datasets import check, market_sketch, pedes, pku_sketch, prepare
from datasets.captions import pre_caption
from utils.errors import DatasetError
from utils.metrics import rank_metrics


def _image(path: Path, shade: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    formats = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}
    Image.new("RGB", (8, 16), (shade, 255 - shade, shade // 2)).save(path, formats[path.suffix])
    return path


# ----------------------------------------------------------------------------
# CUHK-PEDES: reid_raw.json, imgs-sketch2/, .bmp photos with .jpg sketches
# ----------------------------------------------------------------------------

CUHK_ENTRIES = [
    {"split": "train", "id": 1, "file_path": "CUHK01/0001001.png",
     "captions": ["A man in a RED coat.", "He wears black shoes!"], "processed_tokens": []},
    {"split": "train", "id": 1, "file_path": "cam_a/001_45.bmp",
     "captions": ["The man (tall) walks; a red coat."], "processed_tokens": []},
    {"split": "train", "id": 2, "file_path": "train_query/p2_s3.jpg",
     "captions": ["A woman with a bag"], "processed_tokens": []},
    {"split": "val", "id": 3, "file_path": "CUHK03/3_1.jpg", "captions": ["x"]},
    {"split": "test", "id": 4, "file_path": "test_query/p4_s1.jpg",
     "captions": ["A girl: blue jeans.", "Blue jeans and a cap"]},
    {"split": "test", "id": 4, "file_path": "cam_b/004_90.bmp", "captions": ["A cap"]},
    {"split": "test", "id": 5, "file_path": "Market/0005_c1s1_000151_01.jpg",
     "captions": ["An old man"]},
]


@pytest.fixture
def cuhk(tmp_path):
    folder = tmp_path / "CUHK-PEDES"
    folder.mkdir()
    (folder / "reid_raw.json").write_text(json.dumps(CUHK_ENTRIES))
    for number, entry in enumerate(CUHK_ENTRIES):
        _image(folder / "imgs" / entry["file_path"], 10 * number)
        sketch = Path(entry["file_path"])
        if sketch.suffix == ".bmp":  # the Tri-PEDES release draws .bmp photos as .jpg
            sketch = sketch.with_suffix(".jpg")
        _image(folder / "imgs-sketch2" / sketch, 200)
    return tmp_path


def test_cuhk_own_annotations_and_sketch_release(cuhk):
    assert [e["file_path"] for e in pedes.read_annotations(cuhk, "cuhk-pedes", "test")] == \
        ["test_query/p4_s1.jpg", "cam_b/004_90.bmp", "Market/0005_c1s1_000151_01.jpg"]
    assert all(pedes.has_split(cuhk, "cuhk-pedes", split) for split in ("train", "val", "test"))
    samples = pedes.train_samples(cuhk, ["cuhk-pedes"])
    assert len(samples) == 4  # one per caption
    sketches = {s.photos[0].name: s.sketch for s in samples}
    assert sketches["001_45.bmp"] == cuhk / "CUHK-PEDES/imgs-sketch2/cam_a/001_45.jpg"
    assert sketches["0001001.png"] == cuhk / "CUHK-PEDES/imgs-sketch2/CUHK01/0001001.png"
    assert [s.label for s in samples] == [0, 0, 0, 1]
    assert samples[0].captions == ("a man in a red coat",)
    test = pedes.eval_set(cuhk, "cuhk-pedes", "test")
    assert len(test.gallery_paths) == 3 and len(test.sketch_paths) == 4  # per caption
    assert test.text_queries == [pre_caption(c) for e in CUHK_ENTRIES[4:] for c in e["captions"]]
    assert test.sketch_paths[2] == cuhk / "CUHK-PEDES/imgs-sketch2/cam_b/004_90.jpg"


def test_split_files_win_over_the_own_file(cuhk):
    folder = cuhk / "CUHK-PEDES"
    for split in ("train", "val", "test"):
        entries = [{k: v for k, v in e.items() if k != "processed_tokens"}
                   for e in CUHK_ENTRIES if e["split"] == split][:1]
        (folder / f"{split}_reid.json").write_text(json.dumps(entries))
    assert len(pedes.read_annotations(cuhk, "cuhk-pedes", "test")) == 1
    (folder / "val_reid.json").unlink()
    assert not pedes.has_split(cuhk, "cuhk-pedes", "val")


def test_missing_sketches_stop_training_with_one_line_or_are_skipped(cuhk, caplog):
    folder = cuhk / "CUHK-PEDES/imgs-sketch2"
    (folder / "cam_a/001_45.jpg").unlink()
    (folder / "train_query/p2_s3.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        pedes.train_samples(cuhk, ["cuhk-pedes"])
    message = str(error.value)
    assert "no sketch of photo cam_a/001_45.bmp (id 1)" in message and "(and 1 more)" in message
    assert "data.skip_missing_sketches=true" in message and "\n" not in message
    with caplog.at_level(logging.WARNING, logger="datasets.pedes"):
        samples = pedes.train_samples(cuhk, ["cuhk-pedes"], skip_missing_sketches=True)
    assert [s.photos[0].name for s in samples] == ["0001001.png", "0001001.png"]
    assert "2 of 3 photos have no sketch" in caplog.text


def test_check_lists_every_missing_sketch(cuhk, capsys):
    folder = cuhk / "CUHK-PEDES/imgs-sketch2"
    for name in ("cam_a/001_45.jpg", "train_query/p2_s3.jpg", "cam_b/004_90.jpg"):
        (folder / name).unlink()
    status = check.main(["data.dataset=cuhk-pedes", f"data.root={cuhk}", "--workers", "1"])
    out = capsys.readouterr().out
    assert status == 1 and "missing sketches (3)" in out
    for photo in ("cam_a/001_45.bmp", "train_query/p2_s3.jpg", "cam_b/004_90.bmp"):
        assert f"no sketch of photo {photo}" in out


def test_icfg_and_rstpreid_own_files(tmp_path):
    icfg = tmp_path / "ICFG-PEDES"
    icfg.mkdir()
    entries = [{"id": 0, "file_path": "train/0000/0000_001_01_0302morning_0001_0.jpg",
                "captions": ["a"], "split": "train"},
               {"id": 7, "file_path": "test/0007/0007_001_01_0302morning_0002_0.jpg",
                "captions": ["b"], "split": "test"}]
    (icfg / "ICFG_PEDES.json").write_text(json.dumps(entries))  # the underscore spelling
    rstp = tmp_path / "RSTPReid"
    rstp.mkdir()
    (rstp / "data_captions.json").write_text(json.dumps([
        {"id": 0, "img_path": "0000_c14_0031.jpg", "captions": ["c", "d"], "split": "train"},
        {"id": 9, "img_path": "0009_c2_0004.jpg", "captions": ["e", "f"], "split": "val"}]))
    for folder, paths in ((icfg, [e["file_path"] for e in entries]),
                          (rstp, ["0000_c14_0031.jpg", "0009_c2_0004.jpg"])):
        for path in paths:
            _image(folder / "imgs" / path)
            _image(folder / "imgs-sketch" / path)
    assert not pedes.has_split(tmp_path, "icfg-pedes", "val")
    assert pedes.eval_set(tmp_path, "icfg-pedes", "test").gallery_ids == [7]
    val = pedes.eval_set(tmp_path, "rstpreid", "val")
    assert val.gallery_paths == [rstp / "imgs/0009_c2_0004.jpg"] and val.text_queries == ["e", "f"]
    assert len(pedes.train_samples(tmp_path, ["icfg-pedes", "rstpreid"])) == 3


def test_bad_entries_are_named(cuhk):
    (cuhk / "CUHK-PEDES" / "reid_raw.json").write_text(json.dumps(
        [{"split": "train", "id": 1, "captions": ["a"]}, {"split": "dev", "id": 2}]))
    entries, problems = pedes.parse_annotations(cuhk, "cuhk-pedes", "train")
    assert entries == [] and [kind for kind, _ in problems] == ["layout", "layout"]
    assert "entry 0 lacks file_path" in problems[0][1]
    assert "entry 1 has split 'dev'" in problems[1][1]
    with pytest.raises(DatasetError, match=r"entry 0 lacks file_path \(and 1 more problem"):
        pedes.read_annotations(cuhk, "cuhk-pedes", "train")


# ----------------------------------------------------------------------------
# PKU-Sketch as unpacked: <id>_<cam>_<frame>.jpg, styleAnnotation, no idx/
# ----------------------------------------------------------------------------

PKU_CAMS = {1: ("05", "07"), 2: ("05", "07"), 3: ("03", "05")}


@pytest.fixture
def pku(tmp_path):
    """20 people in five styles, named as in PKUSketchRE-ID_V1, captions with a BOM and
    CRLF line ends."""
    folder = tmp_path / "PKUSketchRE-ID_V1"
    lines = []
    for pid in range(1, 21):
        cams = PKU_CAMS.get(pid, ("04", "06"))
        for number, cam in enumerate(cams):
            name = f"{pid}_{cam}_{1000 * number + pid}.jpg"
            _image(folder / "photo" / name, 10 * pid)
            lines.append(f"{pid}/{name}@Caption {number} of person {pid}.")
        _image(folder / "sketch" / f"{pid}.jpg", 250)
    (folder / "TriReID.txt").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    styles = {"a": range(1, 9), "b": range(9, 13), "c": range(13, 17), "d": range(17, 19),
              "e": range(19, 21)}
    (folder / "styleAnnotation").mkdir()
    for letter, ids in styles.items():
        text = "".join(f"{pid}\r\n" for pid in ids)
        (folder / "styleAnnotation" / f"{letter}_{len(ids)}.txt").write_text(text)
    return tmp_path


def test_pku_unpacked_without_idx(pku, caplog):
    with caplog.at_level(logging.INFO, logger="datasets.pku_sketch"):
        test = pku_sketch.eval_set(pku, 2, 0, "test")
    assert "no idx/ folder" in caplog.text and "within the sketch styles" in caplog.text
    assert len(test.sketch_ids) == 5 and len(test.gallery_paths) == 10
    # Cameras from the names; sketches get a camera no photo has.
    assert {cam for cam in test.gallery_cams} <= {3, 4, 5, 6, 7}
    assert set(test.sketch_cams) == {0}
    assert test.feedback[0].startswith("Caption ") and "\ufeff" not in test.feedback[0]
    # Drawn within the styles: a quarter of each (largest remainders; 5 of 20 here).
    styles, _ = pku_sketch.read_styles(pku / "PKUSketchRE-ID_V1")
    per_style = {style: len(set(ids) & set(test.sketch_ids)) for style, ids in styles.items()}
    assert per_style == pku_sketch._test_counts({s: len(ids) for s, ids in styles.items()})
    assert sorted(per_style.values()) == [0, 1, 1, 1, 2]


def test_no_positive_is_ever_dropped_by_the_camera_filter(pku):
    """Real-style names: photo cameras 03..07, sketches camera 0; ranking with the camera
    filter keeps both photos of every query person as positives."""
    test = pku_sketch.eval_set(pku, 1, 0, "test")
    for query_cam in test.sketch_cams:
        assert query_cam not in test.gallery_cams
    similarity = __import__("torch").zeros(len(test.sketch_ids), len(test.gallery_ids))
    with_filter = rank_metrics(similarity, test.sketch_ids, test.gallery_ids, test.sketch_cams,
                               test.gallery_cams, rank_denominator="all")
    without = rank_metrics(similarity, test.sketch_ids, test.gallery_ids,
                           rank_denominator="all")
    assert with_filter == without


def test_prepare_writes_the_public_format_and_loaders_agree(pku, capsys):
    folder = pku / "PKUSketchRE-ID_V1"
    drawn = [pku_sketch.eval_set(pku, trial, 0, "test").sketch_ids for trial in (1, 2, 3)]
    assert prepare.main(["pku-sketch", "--root", str(pku), "--trials", "3"]) == 0
    assert "wrote 12 split files" in capsys.readouterr().out
    lines = (folder / "idx" / "train_visible_1.txt").read_text().splitlines()
    assert lines[0].split()[2] in {"03", "04", "05", "06", "07"} and lines[0].endswith(" 0")
    assert all(line.startswith("photo/") and len(line.split()) == 4 for line in lines)
    sketch = (folder / "idx" / "test_sketch_1.txt").read_text().splitlines()
    assert all(line.split()[2] == "0" and line.split()[3] in "12345" for line in sketch)
    # With idx/ the loaders read the same split they drew without it.
    assert [pku_sketch.eval_set(pku, trial, 0, "test").sketch_ids
            for trial in (1, 2, 3)] == drawn
    train = pku_sketch.train_samples(pku, 1, 0)
    assert len(train) == 15 and not {int(s.sketch.stem) for s in train} & set(drawn[0])
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["pku-sketch", "--root", str(pku), "--trials", "3"])
    assert exit_info.value.code == 2
    assert "never overwritten" in capsys.readouterr().err


def test_pku_idx_with_bom_and_crlf(pku, caplog):
    prepare.main(["pku-sketch", "--root", str(pku), "--trials", "1"])
    for kind in ("visible", "sketch"):  # the sketch list names the people
        index = pku / "PKUSketchRE-ID_V1" / "idx" / f"test_{kind}_1.txt"
        index.write_bytes(b"\xef\xbb\xbf" + index.read_bytes().replace(b"\n", b"\r\n"))
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        test = pku_sketch.eval_set(pku, 1, 0, "test")
    assert len(test.gallery_paths) == 10 and len(test.sketch_ids) == 5
    assert "disagree" not in caplog.text and "photo(s)" not in caplog.text  # the lists agree


def test_pku_idx_sketch_cams_that_collide_are_moved(pku, caplog):
    prepare.main(["pku-sketch", "--root", str(pku), "--trials", "1"])
    index = pku / "PKUSketchRE-ID_V1" / "idx" / "test_sketch_1.txt"
    index.write_text(index.read_text().replace(" 0 ", " 5 "))  # an old-style file: cam 5
    with caplog.at_level(logging.WARNING, logger="datasets.pku_sketch"):
        test = pku_sketch.eval_set(pku, 1, 0, "test")
    assert "sketch cameras shared a number" in caplog.text
    assert not set(test.sketch_cams) & set(test.gallery_cams)


def test_pku_bad_names_are_named(pku):
    _image(pku / "PKUSketchRE-ID_V1" / "photo" / "extra.jpg")
    with pytest.raises(DatasetError, match=r"extra\.jpg: photo name is not <id>_<cam>_<frame>"):
        pku_sketch.eval_set(pku, 1, 0, "test")


# ----------------------------------------------------------------------------
# Market-Sketch-1K names; a full Market-1501 gallery
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("0002.jpg", 2), ("0002A.jpg", 2), ("0002_A.jpg", 2), ("0002_c1s1_000451_03.jpg", 2),
    ("1501_c6s4_001902_01.jpg", 1501), ("-1_c1s1_000401_03.jpg", -1),
    ("0000_c1s1_000001_03.jpg", 0)])
def test_market_person_id_is_the_leading_digits(name, expected):
    assert market_sketch.person_id(Path(name)) == expected


def test_market_person_id_needs_digits():
    with pytest.raises(DatasetError, match="does not start with a person id"):
        market_sketch.person_id(Path("A_0002.jpg"))


def test_full_market_gallery_keeps_distractors_and_drops_junk(synthetic_root, tmp_path, caplog):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "Market-Sketch-1K", root / "Market-Sketch-1K")
    query = root / "Market-Sketch-1K" / "photo" / "query"
    plain = market_sketch.eval_set(root, "test")
    for name in ("-1_c1s1_000401_03.jpg", "-1_c3s1_000551_01.jpg"):
        _image(query / name)
    _image(query / "0000_c1s1_000001_03.jpg")
    with caplog.at_level(logging.INFO, logger="datasets.market_sketch"):
        full = market_sketch.eval_set(root, "test")
    assert len(full.gallery_paths) == len(plain.gallery_paths) + 1
    assert full.gallery_ids.count(0) == 1 and -1 not in full.gallery_ids
    assert "2 junk image(s) (-1) left out, 1 distractor(s) (0000) kept" in caplog.text


def test_public_style_sizes_give_the_public_test_counts():
    """The official style sizes (a 46, b 20, c 79, d 33, e 22) give the public split
    files' 11 + 5 + 20 + 8 + 6 test people; 150 / 50 in all."""
    styles, start = {}, 1
    for letter, size in pku_sketch.PUBLIC_STYLE_SIZES.items():
        styles[letter] = list(range(start, start + size))
        start += size
    train, test = pku_sketch.trial_split(list(range(1, 201)), styles, 4, 0)
    assert (len(train), len(test)) == (150, 50)
    assert {s: len(set(ids) & set(test)) for s, ids in styles.items()} == \
        pku_sketch.PUBLIC_TEST_PER_STYLE
    assert trial_splits_differ(styles)


def trial_splits_differ(styles) -> bool:
    ids = list(range(1, 201))
    return len({tuple(pku_sketch.trial_split(ids, styles, t, 0)[1]) for t in range(1, 11)}) == 10
