"""The procedural datasets: layouts, metadata, appearance, families and determinism (the
information design itself: tests/test_synthetic_design.py)."""
from __future__ import annotations

import filecmp
import hashlib
import json
import pickle
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets import synthetic as S
from datasets.synthetic.layouts import _MIN_PEOPLE
from datasets.synthetic.persons import _CODES, _rng
from datasets.synthetic.writer import _save

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
        assert info["people"] == len(info["persons"]) >= _MIN_PEOPLE[name]
        assert info["photos"] >= 2 * info["people"]
        assert info["format"] == S.FORMAT_VERSION
        marker = json.loads((root / S.FOLDERS[name] / S.MARKER).read_text())
        assert marker["format"] == S.FORMAT_VERSION and marker["persons"] == info["persons"]
        assert marker["design"] == info["design"]
        splits = info["design"]["splits"]
        assert set(splits) == {p["split"] for p in info["persons"]}
        assert sum(c["people"] for c in splits.values()) == info["people"]
        assert ("best_possible" in info["design"]) == (name == "mask1k")
        drawn = name in ("mask1k", "pku-sketch")       # the PEDES sketches are traced
        assert bool(info["sketch_styles"]) == drawn
        if drawn:
            assert set(info["sketch_styles"]) == {str(p["pid"]) for p in info["persons"]}
            assert sum(map(len, info["sketch_styles"].values())) == info["sketches"]
    assert summary["pku-sketch"]["people"] == 40          # 200 at scale 1
    assert not any(p.name.endswith(".partial") for p in root.iterdir())


FORMAT_OF = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def _format(path):
    """The format PIL reads from the file's bytes (not from its name)."""
    with Image.open(path) as img:
        return img.format


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def _pedes_entries(ds, name):
    """Every annotation entry as ``(entry, relative photo path)``, from the files the dataset
    ships."""
    if name == "rstpreid":
        entries = json.loads((ds / "data_captions.json").read_text())
        assert isinstance(entries, list) and entries
        return [(e, e["img_path"]) for e in entries]
    out = []
    for split in ("train", "val", "test"):
        entries = json.loads((ds / f"{split}_reid.json").read_text())
        assert isinstance(entries, list) and entries
        assert all(e["split"] == split for e in entries)
        out += [(e, e["file_path"]) for e in entries]
    return out


PRINT_WORDS = {"plain": ("plain",), "band": ("band",), "stripes": ("stripes",),
               "sash": ("sash", "diagonal"), "logo": ("logo", "circle")}


CUHK_FORMS = {  # source -> regex of a photo path under imgs/ (groups: pid, photo number or cam)
    "CUHK01": r"CUHK01/(\d{4})00([12])\.png",
    "VIPeR": r"cam_([ab])/(\d{3})_(0|45|90|135|180)\.bmp",
    "CUHK-SYSU": r"(train|test)_query/p(\d+)_s(\d+)\.jpg",
    "Market": r"Market/(\d{4})_c([12])s1_\d{6}_01\.jpg",
}


def _cuhk_source(rel, person):
    """Which source folder ``rel`` is in, checking that its name fits ``person``."""
    for source, pattern in CUHK_FORMS.items():
        m = re.fullmatch(pattern, rel)
        if not m:
            continue
        if source == "VIPeR":
            assert int(m.group(2)) == person.pid, rel
        elif source == "CUHK-SYSU":
            assert int(m.group(2)) == person.pid, rel
            assert m.group(1) == ("train" if person.split == "train" else "test"), rel
        else:
            assert int(m.group(1)) == person.pid, rel
        return source
    raise AssertionError(f"{rel} is in none of CUHK-PEDES's source forms")


@pytest.mark.parametrize("name", ["cuhk-pedes", "icfg-pedes", "rstpreid"])
def test_pedes_layout(generated, name):
    root, summary = generated
    ds = root / S.FOLDERS[name]
    sketch_dir = ds / ("imgs-sketch2" if name == "cuhk-pedes" else "imgs-sketch")
    other = ds / ("imgs-sketch" if name == "cuhk-pedes" else "imgs-sketch2")
    assert sketch_dir.is_dir() and not other.exists()
    people = {p.pid: p for p in _persons(summary, name)}
    ids_by_split = defaultdict(set)
    paths_of = defaultdict(list)
    with_bt = 0
    for e, rel in _pedes_entries(ds, name):
        path_key = "img_path" if name == "rstpreid" else "file_path"
        allowed = {"id", path_key, "captions", "split"}
        if name != "rstpreid":
            allowed |= {"captions_bt"}
        assert {"id", path_key, "captions", "split"} <= set(e) <= allowed, e
        assert isinstance(e["id"], int) and e["split"] in ("train", "val", "test")
        photo = ds / "imgs" / rel
        assert photo.is_file(), rel
        assert _format(photo) == FORMAT_OF[photo.suffix], rel
        sketch_rel = rel[:-4] + ".jpg" if rel.endswith(".bmp") else rel
        sketch = sketch_dir / sketch_rel
        assert sketch.is_file(), sketch_rel
        assert _format(sketch) == FORMAT_OF[sketch.suffix], sketch_rel
        assert 2 <= len(e["captions"]) <= 3
        assert all(isinstance(c, str) and len(c.split()) >= 5 for c in e["captions"])
        # the last caption is the person's Market attribute sentence (the stage-2 words)
        p = people[e["id"]]
        assert e["captions"][-1] == S.attribute_sentence(p)
        if "captions_bt" in e:
            assert e["split"] == "train"
            assert len(e["captions_bt"]) == len(e["captions"])
            assert not set(e["captions_bt"]) & set(e["captions"])
            with_bt += 1
        # every caption names the colours that tell the schemes of a family apart, and
        # every detailed one (all but the attribute sentence and its paraphrase) the print
        # that tells its silhouettes apart
        assert p.split == e["split"]
        for text in e["captions"] + e.get("captions_bt", []):
            for colour in p.top + (p.lower_colour,):
                assert colour in text
        for text in e["captions"][:-1] + e.get("captions_bt", [])[:-1]:
            assert any(word in text for word in PRINT_WORDS[p.sil.print]), (p.sil.print, text)
        ids_by_split[e["split"]].add(e["id"])
        paths_of[e["id"]].append(rel)
    tr, va, te = ids_by_split["train"], ids_by_split["val"], ids_by_split["test"]
    assert not (tr & va or tr & te or va & te) and tr and va and te
    assert {len(v) for v in paths_of.values()} == {2}
    assert set(people) == tr | va | te
    assert (with_bt > 0) == (name != "rstpreid")
    # on disk there is nothing else than what the annotations list
    listed = sorted(rel for rels in paths_of.values() for rel in rels)
    assert _files(ds / "imgs") == listed
    assert len(_files(sketch_dir)) == len(listed)
    meta = sorted(f.name for f in ds.iterdir() if f.is_file())
    if name == "rstpreid":
        assert meta == [S.MARKER, "data_captions.json"]
    else:
        assert meta == sorted([S.MARKER] + [f"{s}_reid.json" for s in ("train", "val", "test")])
        assert not (ds / "data_captions.json").exists()

    if name == "rstpreid":
        for pid, rels in paths_of.items():
            cams = set()
            for rel in rels:
                m = re.fullmatch(r"(\d{4})_c(\d{1,2})_(\d{4})\.jpg", rel)   # flat, no folders
                assert m and int(m.group(1)) == pid, rel
                cams.add(int(m.group(2)))
            assert len(cams) == 2 and cams <= set(range(1, 16))
    elif name == "icfg-pedes":
        for pid, rels in paths_of.items():
            folder = "train" if people[pid].split == "train" else "test"
            got = []
            for rel in rels:
                m = re.fullmatch(rf"{folder}/{pid:04d}/{pid:04d}_(\d{{3}})_(\d{{2}})"
                                 rf"_0302morning_\d{{4}}_0\.jpg", rel)
                assert m, rel
                got.append(int(m.group(1)))
                assert 1 <= int(m.group(2)) <= 15
            assert sorted(got) == [1, 2]
    else:
        sources, scenes = Counter(), []
        for pid, rels in paths_of.items():
            found = {_cuhk_source(rel, people[pid]) for rel in rels}
            assert len(found) == 1, rels           # one person, one source set
            source = found.pop()
            sources[source] += 1
            if source == "VIPeR":                  # one photo from each camera
                assert sorted(rel.split("/")[0] for rel in rels) == ["cam_a", "cam_b"]
            if source == "CUHK-SYSU":
                scenes += [int(re.search(r"_s(\d+)\.jpg$", rel).group(1)) for rel in rels]
        assert set(sources) == set(CUHK_FORMS)     # every form occurs
        assert len(scenes) == len(set(scenes))
        suffixes = {Path(rel).suffix for rel in listed}
        assert suffixes == {".png", ".bmp", ".jpg"}
        sketch_suffixes = {Path(rel).suffix for rel in _files(sketch_dir)}
        assert sketch_suffixes == {".png", ".jpg"}  # a BMP photo's sketch is a JPEG


def test_caption_styles_differ(generated):
    root, _ = generated
    first = {}
    for name in ("cuhk-pedes", "icfg-pedes", "rstpreid"):
        entries = _pedes_entries(root / S.FOLDERS[name], name)
        # the detailed captions: all but the last, the attribute sentence every set shares
        caps = [c for e, _ in entries if e["split"] == "train" for c in e["captions"][:-1]]
        first[name] = np.mean([len(c.split()) for c in caps])
    assert first["icfg-pedes"] > first["cuhk-pedes"] > first["rstpreid"]


def test_save_picks_the_format_from_the_suffix(tmp_path):
    img = Image.new("RGB", (8, 16), (200, 30, 40))
    for suffix, fmt in FORMAT_OF.items():
        _save(img, str(tmp_path / f"x{suffix}"))
        assert _format(tmp_path / f"x{suffix}") == fmt
    with pytest.raises(ValueError, match=r"\.gif"):
        _save(img, str(tmp_path / "x.gif"))


def test_plans_are_named_jobs(tmp_path):
    """Every image to render is a named record that survives the trip to a worker process."""
    kinds = {"cuhk-pedes": {S.TracedJob}, "mask1k": {S.PhotoJob, S.DrawnJob},
             "pku-sketch": {S.PhotoJob, S.DrawnJob}}
    for name, want in kinds.items():
        plan = S.plan_dataset(name, seed=0, scale=0.1, root=str(tmp_path))
        assert {type(job) for job in plan.jobs} == want
        photos = sum(isinstance(job, (S.PhotoJob, S.TracedJob)) for job in plan.jobs)
        sketches = sum(isinstance(job, (S.TracedJob, S.DrawnJob)) for job in plan.jobs)
        assert (photos, sketches) == (plan.photos, plan.sketches)
        for job in plan.jobs:
            assert job.seed_key[:2] == (0, _CODES[name])
            assert all(path.startswith(str(tmp_path)) for path in job.paths)
            if isinstance(job, S.DrawnJob):
                assert job.style in S.STYLES
        assert pickle.loads(pickle.dumps(plan.jobs)) == plan.jobs


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
            assert _format(ds / "photo" / split / n) == "JPEG"
            per_id[int(m.group(1))] += 1
        assert set(per_id) == {pid for pid, s in split_of.items() if s == split}
        assert min(per_id.values()) >= 2
    styles = defaultdict(set)
    for style in S.STYLES:
        # the release names sketches <pid>.jpg in some style folders, <pid>_<style>.jpg in others
        pattern = r"(\d{4})\.jpg" if style in "ACE" else rf"(\d{{4}})_{style}\.jpg"
        for split in ("train", "query"):
            folder = ds / "sketch" / style / split
            assert folder.is_dir()
            for f in folder.iterdir():
                m = re.fullmatch(pattern, f.name)
                assert m, f
                assert split_of[int(m.group(1))] == split
                assert _format(f) == "JPEG"
                styles[int(m.group(1))].add(style)
    assert set(styles) == set(split_of)
    assert all(2 <= len(s) <= 6 for s in styles.values())
    assert {str(pid): sorted(s) for pid, s in styles.items()} == summary["mask1k"]["sketch_styles"]


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
        in_split = sorted(pid for pid, p in people.items() if p.split == split)
        assert sorted(int(s) for s in index) == in_split
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


def test_pku_layout(generated, tmp_path):
    root, summary = generated
    ds = root / "PKU-Sketch"
    n = summary["pku-sketch"]["people"]
    ids = set(range(1, n + 1))
    people = {p.pid: p for p in _persons(summary, "pku-sketch")}
    assert set(people) == ids
    # as unpacked from PKUSketchRE-ID_V1, plus TriReID.txt; no split files
    assert sorted(f.name for f in ds.iterdir()) == sorted(
        [S.MARKER, "TriReID.txt", "photo", "sketch", "styleAnnotation"])
    assert not (ds / "idx").exists()
    photos = defaultdict(list)
    for f in (ds / "photo").iterdir():
        m = re.fullmatch(r"(\d+)_(\d{2})_([1-9]\d*)\.jpg", f.name)
        assert m, f.name
        assert 1 <= int(m.group(3)) <= 30000
        assert _format(f) == "JPEG"
        photos[int(m.group(1))].append((int(m.group(2)), f.name))
    assert set(photos) == ids
    pairs = set()
    for pid, shots in photos.items():
        cams = tuple(sorted(c for c, _ in shots))
        assert cams in S.PKU_CAMERA_PAIRS, (pid, cams)
        pairs.add(cams)
    assert pairs == set(S.PKU_CAMERA_PAIRS)
    assert sorted(f.name for f in (ds / "sketch").iterdir()) == sorted(f"{i}.jpg" for i in ids)
    assert all(_format(f) == "JPEG" for f in (ds / "sketch").iterdir())

    # TriReID.txt as released: a UTF-8 byte-order mark and CRLF line ends
    raw = (ds / "TriReID.txt").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and not raw.startswith(b"\xef\xbb\xbf\xef\xbb\xbf")
    assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n") == 2 * n
    lines = raw.decode("utf-8-sig").split("\r\n")[:-1]
    named = Counter()
    for line in lines:
        m = re.fullmatch(r"(\d+)/([^/@]+\.jpg)@(.+)", line)
        assert m, line
        pid, fname = int(m.group(1)), m.group(2)
        assert fname in {name for _, name in photos[pid]}, line
        for colour in people[pid].top + (people[pid].lower_colour,):
            assert colour in m.group(3)
        # PKU's feedback texts keep their style: no word for a sketch-only trait
        assert not re.search(r"\b(" + "|".join(S.TRAIT_WORDS) + r")\b", m.group(3)), line
        named[fname] += 1
    assert set(named) == {name for shots in photos.values() for _, name in shots}
    assert set(named.values()) == {1}

    # styleAnnotation: every person in exactly one of the five painting styles a..e
    style_of = {}
    files = sorted(f.name for f in (ds / "styleAnnotation").iterdir())
    assert [f[0] for f in files] == list("abcde")
    for fname in files:
        m = re.fullmatch(r"([a-e])_(\d+)\.txt", fname)
        assert m, fname
        listed = (ds / "styleAnnotation" / fname).read_text().split()
        assert len(listed) == int(m.group(2)) > 0
        for pid in listed:
            assert int(pid) not in style_of, pid
            style_of[int(pid)] = m.group(1).upper()
    assert set(style_of) == ids
    recorded = summary["pku-sketch"]["sketch_styles"]
    assert recorded == {str(pid): [style] for pid, style in style_of.items()}
    # ... and each sketch really is drawn in its annotated style
    code = _CODES["pku-sketch"]
    for pid in sorted(ids)[:4]:
        style = style_of[pid]
        rng = _rng(0, code, 12, pid, S.STYLES.index(style))
        img = S.render_drawn_sketch(people[pid], style, rng)
        _save(img, str(tmp_path / "again.jpg"))
        assert filecmp.cmp(tmp_path / "again.jpg", ds / "sketch" / f"{pid}.jpg", shallow=False), pid


def _sample_images(root):
    cuhk = root / "CUHK-PEDES"
    photos = []
    for source in ("CUHK01", "cam_a", "cam_b", "train_query", "Market"):   # PNG, BMP and JPEG
        photos += sorted((cuhk / "imgs" / source).iterdir())[:2]
    photos += sorted((root / "Market-Sketch-1K" / "photo" / "query").glob("*.jpg"))[:6]
    photos += sorted((root / "PKU-Sketch" / "photo").glob("*.jpg"))[:6]
    sketches = sorted((cuhk / "imgs-sketch2" / "CUHK01").iterdir())[:2]
    sketches += sorted((cuhk / "imgs-sketch2" / "cam_a").iterdir())[:2]
    sketches += sorted((root / "RSTPReid" / "imgs-sketch").glob("*.jpg"))[:6]
    sketches += [sorted((root / "Market-Sketch-1K" / "sketch" / s).rglob("*.jpg"))[0]
                 for s in S.STYLES]
    sketches += sorted((root / "PKU-Sketch" / "sketch").glob("*.jpg"))[:6]
    return photos, sketches


def test_appearance(generated):
    root, _ = generated
    photos, sketches = _sample_images(root)
    colourfulness = []
    for path in photos:
        img = _rgb(path)
        assert img.shape == (S.HEIGHT, S.WIDTH, 3)
        colourfulness.append((img.max(2) - img.min(2)).mean())
        assert colourfulness[-1] > 8, path          # colour, even for someone dressed in grey
    assert np.mean(colourfulness) > 20
    for path in sketches:
        img = _rgb(path)
        assert img.shape == (S.HEIGHT, S.WIDTH, 3)
        assert np.abs(img - img.mean(2, keepdims=True)).max() <= 6, path   # no colour
        border = np.concatenate([img[:2].ravel(), img[-1:].ravel(),
                                 img[:, :2].ravel(), img[:, -2:].ravel()])
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
        if len(p.top) > 1:                      # the sleeves in the second colour
            mask = small == S.LABEL["sleeve_l"]
            assert mask.sum() > 3 and nearest(np.median(arr[mask], 0)) == p.top[1]
        # a print is a shade of the top's colour: it adds no colour name of its own (judged
        # under the top's light: a dim photo makes even a white top nearly grey)
        mask = small == S.LABEL["print"]
        assert (mask.sum() > 3) == (p.sil.print != "plain"), (p.pid, p.sil.print)
        if mask.any():
            balance = np.array(S.COLOUR_RGB[p.top[0]]) / np.median(arr[top], 0)
            assert nearest(np.median(arr[mask], 0) * balance) == p.top[0], (p.pid, p.top)
        for part, present in (("backpack", p.sil.bag == "backpack"), ("hat", p.sil.hat),
                              ("bag", p.sil.bag in ("bag", "handbag"))):
            assert (lab == S.LABEL[part]).any() == present, (p.pid, part)


def test_families_cross_silhouettes_with_colour_schemes(generated):
    """Each family is F silhouettes x C colour schemes, one person each (the old design's
    groups shared one silhouette and differed only in colours)."""
    _, summary = generated
    sizes = {f * c for f, c in S.FAMILY_SHAPES}
    for name in S.DATASETS:
        people = _persons(summary, name)
        families = defaultdict(list)
        for p in people:
            families[p.family].append(p)
        assert all(len(members) in sizes for members in families.values())
        for members in families.values():
            sils = {p.silhouette for p in members}
            schemes = {p.scheme for p in members}
            assert (len(sils), len(schemes)) in S.FAMILY_SHAPES
            assert len({(p.silhouette, p.scheme) for p in members}) == len(members)
            # a silhouette is one line drawing; a scheme one set of colours
            for index in sils:
                assert len({p.sil for p in members if p.silhouette == index}) == 1
            for index in schemes:
                assert len({p.colours() for p in members if p.scheme == index}) == 1
            assert len({p.sil for p in members}) == len(sils)
            assert len({p.colours() for p in members}) == len(schemes)
            # the unstated colours are the family's
            assert len({(p.shoes, p.bag_colour, p.hat_colour, p.sil.hair_colour, p.sil.skin)
                        for p in members}) == 1
        # every family its own silhouettes
        assert len({p.sil for p in people}) == len({(p.family, p.silhouette) for p in people})
    # traced sketches of two people of one silhouette in the same pose are identical, those
    # of two silhouettes of one family are not
    people = _persons(summary, "cuhk-pedes")
    family = [p for p in people if p.family == people[0].family]
    a, b = [p for p in family if p.silhouette == 0][:2]
    c = next(p for p in family if p.silhouette == 1)
    pose = S.Pose(cx=32.0, feet=124.0)
    la, lb, lc = (S.label_map(S.build_figure(p.sil, pose)) for p in (a, b, c))
    assert np.array_equal(la, lb) and not np.array_equal(la, lc)
    ra = S.render_drawn_sketch(a, "C", np.random.default_rng(0))
    rb = S.render_drawn_sketch(b, "C", np.random.default_rng(0))
    assert np.array_equal(np.asarray(ra), np.asarray(rb))


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_deterministic(tmp_path):
    subset = ["cuhk-pedes", "mask1k", "pku-sketch"]      # JPEG, PNG, BMP, JSON, MAT, text
    S.generate(tmp_path / "a", seed=0, scale=0.1, datasets=subset, workers=1)
    S.generate(tmp_path / "b", seed=0, scale=0.1, datasets=subset, workers=2)
    S.generate(tmp_path / "c", seed=1, scale=0.1, datasets=subset[:1], workers=1)
    files = _tree(tmp_path / "a")
    assert files == _tree(tmp_path / "b") and len(files) > 50
    for rel in files:
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    # another seed: other file names, and (almost) no file with the same bytes
    digest = lambda path: hashlib.sha1(path.read_bytes()).hexdigest()  # noqa: E731
    folder = S.FOLDERS[subset[0]]
    seed0 = {digest(p) for p in (tmp_path / "a" / folder).rglob("*.*")}
    seed1 = [digest(p) for p in (tmp_path / "c" / folder).rglob("*.*")]
    assert len(seed1) > 50 and sum(h in seed0 for h in seed1) < 0.05 * len(seed1)


def test_skip_overwrite_and_foreign_folders(tmp_path, caplog):
    first = S.generate(tmp_path, seed=0, scale=0.1, datasets=["rstpreid"], workers=1)
    assert first["rstpreid"]["status"] == "generated"
    stamp = (tmp_path / "RSTPReid" / "data_captions.json").stat().st_mtime_ns
    again = S.generate(tmp_path, seed=0, scale=0.1, datasets=["rstpreid"], workers=1)
    assert again["rstpreid"]["status"] == "skipped"
    assert again["rstpreid"]["people"] == first["rstpreid"]["people"]
    assert (tmp_path / "RSTPReid" / "data_captions.json").stat().st_mtime_ns == stamp
    # a folder this module did not write is never touched, even with overwrite
    (tmp_path / "PKU-Sketch").mkdir()
    (tmp_path / "PKU-Sketch" / "mine.txt").write_text("real data")
    out = S.generate(tmp_path, seed=0, scale=0.1, datasets=["pku-sketch", "rstpreid"],
                     overwrite=True, workers=1)
    assert out["pku-sketch"]["status"] == "foreign"
    assert [p.name for p in (tmp_path / "PKU-Sketch").iterdir()] == ["mine.txt"]
    assert out["rstpreid"]["status"] == "generated"
    assert (tmp_path / "RSTPReid" / S.MARKER).is_file()
    # a folder of ours in an older format is rewritten even without overwrite
    marker = tmp_path / "RSTPReid" / S.MARKER
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(info, format=S.FORMAT_VERSION - 1)))
    (tmp_path / "RSTPReid" / "train_reid.json").write_text("[]")
    with caplog.at_level("WARNING", logger=S.__name__):
        again = S.generate(tmp_path, seed=0, scale=0.1, datasets=["rstpreid"], workers=1)
    assert again["rstpreid"]["status"] == "generated" and "format" in caplog.text
    assert not (tmp_path / "RSTPReid" / "train_reid.json").exists()
    assert json.loads(marker.read_text())["format"] == S.FORMAT_VERSION


def test_cli(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path), "--scale", "0.1", "--datasets", "pku-sketch",
                   "--seed", "2", "--workers", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "PKU-Sketch generated (20 people, 40 photos, 20 sketches)" in line
    raw = (tmp_path / "PKU-Sketch" / "TriReID.txt").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r\n") == 40
    assert not (tmp_path / "PKU-Sketch" / "idx").exists()
