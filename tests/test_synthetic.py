"""The procedural datasets: layouts, metadata, appearance, groups and determinism."""
from __future__ import annotations

import filecmp
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets import synthetic as S

SCALE = 0.2


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = S.generate(root, seed=0, scale=SCALE, workers=1)
    return root, summary


def _persons(summary, name):
    return [S.person_from_dict(d) for d in summary[name]["persons"]]


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def test_summary_counts(generated):
    root, summary = generated
    assert list(summary) == list(S.DATASETS)
    for name, info in summary.items():
        assert info["status"] == "generated"
        assert Path(info["folder"]) == root / S.FOLDERS[name]
        assert (root / S.FOLDERS[name] / S.MARKER).is_file()
        assert info["people"] == len(info["persons"]) >= S._MIN_PEOPLE[name]
        assert info["photos"] >= 2 * info["people"]
    assert summary["pku-sketch"]["people"] == 40          # 200 at scale 1
    assert not any(p.name.endswith(".partial") for p in root.iterdir())


@pytest.mark.parametrize("name", ["cuhk-pedes", "icfg-pedes", "rstpreid"])
def test_pedes_layout(generated, name):
    root, summary = generated
    ds = root / S.FOLDERS[name]
    people = {p.pid: p for p in _persons(summary, name)}
    ids_by_split, photos_per_id, with_bt = {}, Counter(), 0
    for split in ("train", "val", "test"):
        entries = json.loads((ds / f"{split}_reid.json").read_text())
        assert isinstance(entries, list) and entries
        ids = set()
        for e in entries:
            assert set(e) <= {"id", "file_path", "captions", "split", "captions_bt"}
            assert isinstance(e["id"], int) and e["split"] == split
            assert re.fullmatch(rf"{split}/{e['id']:04d}_[12]\.jpg", e["file_path"])
            assert (ds / "imgs" / e["file_path"]).is_file()
            assert (ds / "imgs-sketch" / e["file_path"]).is_file()
            assert 1 <= len(e["captions"]) <= 2
            assert all(isinstance(c, str) and len(c.split()) >= 5 for c in e["captions"])
            if "captions_bt" in e:
                assert split == "train"
                assert len(e["captions_bt"]) == len(e["captions"])
                assert not set(e["captions_bt"]) & set(e["captions"])
                with_bt += 1
            # every caption names the colours that tell group members apart
            p = people[e["id"]]
            assert p.split == split
            for text in e["captions"] + e.get("captions_bt", []):
                for colour in p.top + (p.lower_colour,):
                    assert colour in text
            ids.add(e["id"])
            photos_per_id[e["id"]] += 1
        ids_by_split[split] = ids
    tr, va, te = ids_by_split["train"], ids_by_split["val"], ids_by_split["test"]
    assert not (tr & va or tr & te or va & te)
    assert set(photos_per_id.values()) == {2}
    assert set(people) == tr | va | te
    assert with_bt > 0
    # on disk there is nothing else than what the JSON lists
    listed = {(s + "/" + f.name) for s in ("train", "val", "test") for f in (ds / "imgs" / s).iterdir()}
    assert len(listed) == 2 * len(people)


def test_caption_styles_differ(generated):
    root, _ = generated
    first = {}
    for name in ("cuhk-pedes", "icfg-pedes", "rstpreid"):
        entries = json.loads((root / S.FOLDERS[name] / "train_reid.json").read_text())
        caps = [c for e in entries for c in e["captions"]]
        first[name] = np.mean([len(c.split()) for c in caps])
    assert first["icfg-pedes"] > first["cuhk-pedes"] > first["rstpreid"]


def test_market_layout(generated):
    root, summary = generated
    ds = root / "Market-Sketch-1K"
    people = _persons(summary, "mask1k")
    split_of = {p.pid: p.split for p in people}
    assert set(split_of.values()) == {"train", "query"}
    for split in ("train", "query"):
        names = [f.name for f in (ds / "photo" / split).iterdir()]
        per_id = Counter()
        for n in names:
            m = re.fullmatch(r"(\d{4})_c([1-6])s([1-6])_(\d{6})_00\.jpg", n)
            assert m, n
            assert split_of[int(m.group(1))] == split
            per_id[int(m.group(1))] += 1
        assert set(per_id) == {pid for pid, s in split_of.items() if s == split}
        assert min(per_id.values()) >= 2
    styles = defaultdict(set)
    for style in S.STYLES:
        for split in ("train", "query"):
            folder = ds / "sketch" / style / split
            assert folder.is_dir()
            for f in folder.iterdir():
                m = re.fullmatch(rf"(\d{{4}})_{style}\.jpg", f.name)
                assert m, f
                assert split_of[int(m.group(1))] == split
                styles[int(m.group(1))].add(style)
    assert set(styles) == set(split_of)
    assert all(2 <= len(s) <= 6 for s in styles.values())


def test_market_attribute_mat(generated):
    root, summary = generated
    mat = scipy.io.loadmat(root / "Market-Sketch-1K" / "market_attribute.mat",
                           squeeze_me=True, struct_as_record=False)
    attr = mat["market_attribute"]
    people = {p.pid: p for p in _persons(summary, "mask1k")}
    for key, split in (("train", "train"), ("test", "query")):
        part = getattr(attr, key)
        index = [str(s) for s in np.atleast_1d(part.image_index)]
        assert all(re.fullmatch(r"\d{4}", s) for s in index)
        assert sorted(int(s) for s in index) == sorted(pid for pid, p in people.items() if p.split == split)
        for f in S.MARKET_FIELDS:
            values = np.atleast_1d(getattr(part, f))
            assert values.shape == (len(index),), f
        for i, s in enumerate(index):
            want = people[int(s)].market_attributes()
            for f in S.MARKET_FIELDS:
                assert np.atleast_1d(getattr(part, f))[i] == want[f], (s, f)
    # the coding itself: ranges and one lower colour per person
    age = np.atleast_1d(attr.train.age)
    assert set(age) <= {1, 2, 3, 4}
    downs = sum(np.atleast_1d(getattr(attr.train, "down" + c)) == 2 for c in S.DOWN_COLOURS)
    ups = sum(np.atleast_1d(getattr(attr.train, "up" + c)) == 2 for c in S.UP_COLOURS)
    assert set(downs) == {1} and set(ups) <= {1, 2}
    # the raw struct is MATLAB-shaped: 1 x N doubles and a 1 x N cell of strings
    raw = scipy.io.loadmat(root / "Market-Sketch-1K" / "market_attribute.mat")["market_attribute"]
    train = raw["train"][0, 0]
    assert train["age"][0, 0].dtype == np.float64 and train["age"][0, 0].shape[0] == 1
    assert train["image_index"][0, 0].dtype == object


def test_pku_layout(generated):
    root, summary = generated
    ds = root / "PKU-Sketch"
    n = summary["pku-sketch"]["people"]
    ids = set(range(1, n + 1))
    assert {p.pid for p in _persons(summary, "pku-sketch")} == ids
    for i in ids:
        assert (ds / "photo" / f"{i}_1.jpg").is_file() and (ds / "photo" / f"{i}_2.jpg").is_file()
        assert (ds / "sketch" / f"{i}.jpg").is_file()
    lines = (ds / "TriReID.txt").read_text().splitlines()
    per_id = Counter()
    for line in lines:
        m = re.fullmatch(r"(\d+)/(\d+_[12]\.jpg)@(.+)", line)
        assert m, line
        assert (ds / "photo" / m.group(2)).is_file() and m.group(2).startswith(m.group(1) + "_")
        per_id[int(m.group(1))] += 1
    assert set(per_id) == ids and set(per_id.values()) == {2}
    splits = set()
    for trial in range(1, 11):
        got = {}
        for part in ("train", "test"):
            vis = (ds / "idx" / f"{part}_visible_{trial}.txt").read_text().splitlines()
            sk = (ds / "idx" / f"{part}_sketch_{trial}.txt").read_text().splitlines()
            vis_ids, sk_ids = set(), set()
            for line in vis:
                path, pid, cam, style = line.split()
                assert (ds / path).is_file() and path == f"photo/{pid}_{cam}.jpg" and style == "0"
                vis_ids.add(int(pid))
            for line in sk:
                path, pid, cam, style = line.split()
                assert (ds / path).is_file() and path == f"sketch/{pid}.jpg" and cam == "3"
                assert 1 <= int(style) <= 6
                sk_ids.add(int(pid))
            assert vis_ids == sk_ids and len(vis) == 2 * len(sk)
            got[part] = vis_ids
        assert not got["train"] & got["test"] and got["train"] | got["test"] == ids
        assert len(got["test"]) == n // 4 and len(got["train"]) == n - n // 4
        splits.add(frozenset(got["test"]))
    assert len(splits) > 5


def _sample_images(root):
    photos = sorted((root / "CUHK-PEDES" / "imgs" / "train").glob("*.jpg"))[:6]
    photos += sorted((root / "Market-Sketch-1K" / "photo" / "query").glob("*.jpg"))[:6]
    photos += sorted((root / "PKU-Sketch" / "photo").glob("*.jpg"))[:6]
    sketches = sorted((root / "RSTPReid" / "imgs-sketch" / "test").glob("*.jpg"))[:6]
    sketches += [sorted((root / "Market-Sketch-1K" / "sketch" / s).rglob("*.jpg"))[0] for s in S.STYLES]
    sketches += sorted((root / "PKU-Sketch" / "sketch").glob("*.jpg"))[:6]
    return photos, sketches


def test_appearance(generated):
    root, _ = generated
    photos, sketches = _sample_images(root)
    for path in photos:
        img = _rgb(path)
        assert img.shape == (S.HEIGHT, S.WIDTH, 3)
        assert (img.max(2) - img.min(2)).mean() > 15, path          # coloured
    for path in sketches:
        img = _rgb(path)
        assert img.shape == (S.HEIGHT, S.WIDTH, 3)
        assert np.abs(img - img.mean(2, keepdims=True)).max() <= 6, path   # no colour
        border = np.concatenate([img[:2].ravel(), img[-1:].ravel(), img[:, :2].ravel(), img[:, -2:].ravel()])
        assert border.mean() > 245, path                                   # white paper
        assert (img < 80).mean() > 0.02, path                               # dark strokes
        small = Image.open(path).convert("L").resize((16, 32), Image.BOX)
        assert np.asarray(small).min() < 150, path                          # survive 1/4 size


def test_photos_show_the_attributes():
    people = S.people("mask1k", seed=3, scale=0.2)
    names = list(S.COLOUR_RGB)
    table = np.array([S.COLOUR_RGB[n] for n in names], np.float32)
    nearest = lambda rgb: names[int(np.argmin(((table - rgb) ** 2).sum(1)))]  # noqa: E731
    for p in people:
        photo, lab = S.render_photo(p, np.random.default_rng(p.pid))
        arr = np.asarray(photo, np.float32)
        small = lab[S.SUPER // 2::S.SUPER, S.SUPER // 2::S.SUPER]
        top = small == S.LABEL["top"]
        assert top.sum() > 20
        assert nearest(np.median(arr[top], 0)) == p.top[0]
        if p.sil.lower != "dress":
            lower = small == S.LABEL["lower"]
            assert nearest(np.median(arr[lower], 0)) == p.lower_colour
        if len(p.top) > 1:
            part = "stripe" if p.sil.pattern == "stripes" else "sleeve_l"
            mask = small == S.LABEL[part]
            assert mask.sum() > 3 and nearest(np.median(arr[mask], 0)) == p.top[1]
        for part, present in (("backpack", p.sil.bag == "backpack"), ("hat", p.sil.hat),
                              ("bag", p.sil.bag in ("bag", "handbag"))):
            assert (lab == S.LABEL[part]).any() == present, (p.pid, part)


def test_groups_share_silhouettes_and_differ_in_colour(generated):
    _, summary = generated
    for name in S.DATASETS:
        people = _persons(summary, name)
        groups = defaultdict(list)
        for p in people:
            groups[p.group].append(p)
        assert all(2 <= len(g) <= 4 for g in groups.values())
        sils = set()
        for members in groups.values():
            assert len({m.sil for m in members}) == 1
            assert len({m.colours() for m in members}) == len(members)
            sils.add(members[0].sil)
        assert len(sils) == len(groups)            # every group its own silhouette
        heights = [s.height for s in sils]
        assert len(set(np.round(heights, 4))) == len(heights)
    # traced sketches of two members of one group in the same pose are identical
    members = [p for p in _persons(summary, "cuhk-pedes")]
    by_group = defaultdict(list)
    for p in members:
        by_group[p.group].append(p)
    a, b = next(g for g in by_group.values())[:2]
    pose = S.Pose(cx=32.0, feet=124.0)
    la = S.label_map(S.build_figure(a.sil, pose))
    lb = S.label_map(S.build_figure(b.sil, pose))
    assert np.array_equal(la, lb)
    ra = S.render_drawn_sketch(a, "C", np.random.default_rng(0))
    rb = S.render_drawn_sketch(b, "C", np.random.default_rng(0))
    assert np.array_equal(np.asarray(ra), np.asarray(rb))


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_deterministic(tmp_path):
    subset = ["rstpreid", "mask1k"]
    S.generate(tmp_path / "a", seed=0, scale=0.1, datasets=subset, workers=1)
    S.generate(tmp_path / "b", seed=0, scale=0.1, datasets=subset, workers=2)
    S.generate(tmp_path / "c", seed=1, scale=0.1, datasets=subset, workers=1)
    files = _tree(tmp_path / "a")
    assert files == _tree(tmp_path / "b") and len(files) > 50
    for rel in files:
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    same = [rel for rel in files
            if (tmp_path / "c" / rel).is_file()
            and filecmp.cmp(tmp_path / "a" / rel, tmp_path / "c" / rel, shallow=False)]
    assert len(same) < 0.05 * len(files)


def test_skip_overwrite_and_foreign_folders(tmp_path, caplog):
    first = S.generate(tmp_path, seed=0, scale=0.1, datasets=["rstpreid"], workers=1)
    assert first["rstpreid"]["status"] == "generated"
    stamp = os.stat(tmp_path / "RSTPReid" / "train_reid.json").st_mtime_ns
    again = S.generate(tmp_path, seed=0, scale=0.1, datasets=["rstpreid"], workers=1)
    assert again["rstpreid"]["status"] == "skipped"
    assert again["rstpreid"]["people"] == first["rstpreid"]["people"]
    assert os.stat(tmp_path / "RSTPReid" / "train_reid.json").st_mtime_ns == stamp
    # a folder this module did not write is never touched, even with overwrite
    (tmp_path / "PKU-Sketch").mkdir()
    (tmp_path / "PKU-Sketch" / "mine.txt").write_text("real data")
    out = S.generate(tmp_path, seed=0, scale=0.1, datasets=["pku-sketch", "rstpreid"],
                     overwrite=True, workers=1)
    assert out["pku-sketch"]["status"] == "foreign"
    assert os.listdir(tmp_path / "PKU-Sketch") == ["mine.txt"]
    assert out["rstpreid"]["status"] == "generated"
    assert (tmp_path / "RSTPReid" / S.MARKER).is_file()


def test_cli(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path), "--scale", "0.1", "--datasets", "pku-sketch",
                   "--seed", "2", "--workers", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "PKU-Sketch generated (20 people, 40 photos, 20 sketches)" in line
    assert len((tmp_path / "PKU-Sketch" / "TriReID.txt").read_text().splitlines()) == 40
