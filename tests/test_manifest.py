"""Your own data (``data.dataset=manifest``): a row per photo in a .jsonl or .csv file.

The synthetic Market-Sketch-1K people in the manifest layout (``generate(layout=
"manifest")``), trained and tested with the tiny CLIP as they come and with each optional
field taken away, in both file forms; bad rows named by the loader and by datasets.check;
and the same people in Market-Sketch-1K's own layout, which must give the same test."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

import train_adapt
from datasets import check, manifest, market_sketch
from datasets import synthetic as S
from datasets.base import TrainSample
from datasets.synthetic.layouts import manifest_csv
from tests.conftest import run_token, tiny_overrides
from utils.errors import DatasetError
from utils.metrics import rank_metrics

SCALE = 0.1  # 12 people: 6 trained on, 6 tested


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(root, manifest folder, its rows): both layouts of the same people."""
    root = tmp_path_factory.mktemp("manifest_data")
    S.generate(root, seed=0, scale=SCALE, datasets=["mask1k"], workers=1)
    summary = S.generate(root, seed=0, scale=SCALE, layout="manifest", workers=1)
    jsonl = Path(summary["mask1k"]["manifest"][0])
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return root, jsonl.parent, rows


def _write(folder: Path, name: str, rows: list) -> Path:
    """``rows`` as a manifest ``name`` (.jsonl or .csv) in ``folder``."""
    path = folder / name
    if path.suffix == ".csv":
        path.write_text(manifest_csv(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _without(rows: list, *fields) -> list:
    return [{key: value for key, value in row.items() if key not in fields} for row in rows]


def _stage1(clip, path: Path, out: Path, **extra) -> dict:
    values = {"data.dataset": "manifest", "data.manifest": str(path), **extra}
    return train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                             *tiny_overrides(clip, "unused", out, **values)])


def _stage2(clip, path: Path, out: Path, stage1: Path, **extra) -> dict:
    return run_token(clip, "unused", out, stage1, **{"data.dataset": "manifest",
                                                     "data.manifest": str(path), **extra})


def _tasks(history: dict, split: str = "test") -> set:
    return set(history[split]["tasks"])


def _config(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


# ----------------------------------------------------------------------------
# Every field, both file forms; the named dataset's equivalent
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_runs(data, tiny_clip_path, tmp_path_factory):
    """Stage 1 then stage 2 on the generated manifest, as .jsonl and as .csv."""
    _, folder, rows = data
    runs = {}
    for suffix in (".jsonl", ".csv"):
        path = _write(folder, f"all{suffix}", rows)
        out1, out2 = (tmp_path_factory.mktemp(f"full{suffix[1:]}{stage}") for stage in (1, 2))
        runs[suffix] = (_stage1(tiny_clip_path, path, out1), out1,
                        _stage2(tiny_clip_path, path, out2, out1, **{"test.multi_query": "true"}),
                        out2)
    return runs


def test_every_field_trains_and_tests_both_stages_in_both_forms(full_runs):
    for history1, out1, history2, out2 in full_runs.values():
        assert _tasks(history1) == {"text_to_image", "sketch_to_image"}
        assert _tasks(history2) == {"interactive", "sketch_only", "text_only",
                                    "interactive_mq", "sketch_only_mq"}
        assert history1["select"]["split"] == history2["select"]["split"] == "test"  # no val
        assert (out1 / "checkpoint_best.pth").is_file() and (out2 / "checkpoint_best.pth").is_file()
        losses = _config(out1)["loss"]
        assert losses["nitc"] == losses["nisc"] == losses["ritc"] == 1.0
    # the two forms hold the same rows: the same samples, the same numbers
    (jsonl, csv) = full_runs.values()
    assert jsonl[0]["test"] == csv[0]["test"] and jsonl[2]["test"] == csv[2]["test"]


def test_loaders_read_both_forms_alike(data):
    _, folder, rows = data
    jsonl, csv = _write(folder, "same.jsonl", rows), _write(folder, "same.csv", rows)
    assert manifest.train_samples(jsonl) == manifest.train_samples(csv)
    assert manifest.eval_set(jsonl, "test") == manifest.eval_set(csv, "test")


def test_the_named_dataset_gives_the_same_test(data, full_runs, tiny_clip_path, tmp_path):
    """The manifest's gallery and sketch queries are Market-Sketch-1K's, byte for byte, with
    the same feedback: a stage-2 checkpoint scores the same on both."""
    root, folder, _ = data
    named = market_sketch.eval_set(root, "test")
    own = manifest.eval_set(folder / "all.jsonl", "test")
    assert sorted(p.name for p in own.gallery_paths) == sorted(p.name for p in named.gallery_paths)
    assert len(own.sketch_paths) == len(named.sketch_paths)
    assert sorted((p.parent.parent.name, p.name, text) for p, text in
                  zip(own.sketch_paths, own.feedback)) == \
        sorted((p.parent.parent.name, p.name, text) for p, text in
               zip(named.sketch_paths, named.feedback))
    for mine, theirs in zip(sorted(own.gallery_paths), sorted(named.gallery_paths)):
        assert mine.read_bytes() == theirs.read_bytes()
    # no query camera is a gallery camera of its person: the camera rule leaves nothing out
    for query_cam, pid in zip(own.sketch_cams, own.sketch_ids):
        assert query_cam not in {cam for cam, gid in zip(own.gallery_cams, own.gallery_ids)
                                 if gid == pid}
    import test as test_entry
    checkpoint = full_runs[".jsonl"][3] / "checkpoint_best.pth"
    results = test_entry.main(["--checkpoint", str(checkpoint), "data.dataset=mask1k",
                               f"data.root={root}", f"output_dir={tmp_path / 'named'}",
                               "test.multi_query=true"])
    mine = full_runs[".jsonl"][2]["test"]["tasks"]
    for task, metrics in results["tasks"].items():
        assert metrics == pytest.approx(mine[task], abs=1e-4), task


# ----------------------------------------------------------------------------
# Optional fields taken away
# ----------------------------------------------------------------------------

def test_no_captions_turns_the_text_losses_and_tasks_off(data, tiny_clip_path, tmp_path,
                                                         caplog):
    _, folder, rows = data
    path = _write(folder, "no_text.csv", _without(rows, "captions", "feedback"))
    with caplog.at_level(logging.INFO):
        history1 = _stage1(tiny_clip_path, path, tmp_path / "s1", **{"loss.id": 0.5})
    for name in ("nitc", "ritc", "id"):
        lines = [r.getMessage() for r in caplog.records if f"loss.{name}=" in r.getMessage()]
        assert len(lines) == 1 and "turned off" in lines[0] and "a caption" in lines[0], name
    assert "loss.nisc" not in caplog.text
    losses = _config(tmp_path / "s1")["loss"]  # what was trained is what config.yaml says
    assert (losses["nitc"], losses["ritc"], losses["id"], losses["nisc"]) == (0, 0, 0, 1.0)
    assert _tasks(history1) == {"sketch_to_image"}
    left_out = [r for r in caplog.records if "text_to_image left out" in r.getMessage()]
    assert len(left_out) == 1

    caplog.clear()
    with caplog.at_level(logging.INFO):
        history2 = _stage2(tiny_clip_path, path, tmp_path / "s2", tmp_path / "s1",
                           **{"test.rounds": 2})
    assert _tasks(history2) == {"sketch_only"} and "rounds" not in history2["test"]
    assert "interactive, text_only and the feedback rounds left out (no query sketch has " \
           "feedback)" in caplog.text


def test_feedback_is_the_field_else_the_first_caption(data, tmp_path):
    _, folder, rows = data
    queries = [row for row in rows if row["split"] == "query"]
    edited = [dict(row, feedback="in a hurry") if row is queries[0] else
              _without([row], "feedback")[0] if row is queries[1] else row for row in rows]
    own = manifest.eval_set(_write(folder, "feedback.jsonl", edited), "test")
    feedback = {path: text for path, text in zip(own.sketch_paths, own.feedback)}
    for row, expected in ((queries[0], "in a hurry"), (queries[1], queries[1]["captions"][0]),
                          (queries[2], queries[2]["feedback"])):
        assert {feedback[folder / sketch] for sketch in row["sketches"]} == {expected}


def test_no_sketches_trains_stage_1_on_text_and_refuses_stage_2(data, tiny_clip_path, tmp_path,
                                                                caplog, capsys):
    _, folder, rows = data
    path = _write(folder, "no_sketches.jsonl", _without(rows, "sketches"))
    with caplog.at_level(logging.INFO):
        history = _stage1(tiny_clip_path, path, tmp_path / "s1")
    assert [r.getMessage() for r in caplog.records if "turned off" in r.getMessage()] == [
        f"loss.nisc=1 turned off (set to 0): no training sample of data.manifest={path} has "
        "a sketch"]
    assert _config(tmp_path / "s1")["loss"]["nisc"] == 0
    assert _tasks(history) == {"text_to_image"}
    # the best epoch is picked on the task there is, and the log says so
    assert "sketch_to_image has no queries" in caplog.text
    assert "the best epoch is picked on text_to_image" in caplog.text
    with pytest.raises(SystemExit) as stopped:
        _stage2(tiny_clip_path, path, tmp_path / "s2", tmp_path / "s1")
    assert stopped.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("error:")]
    assert error == (f"error: data.manifest={path}: no training sample has a sketch; stage 2 "
                     "learns a word from sketches (stage 1 trains without them)")


def test_neither_sketches_nor_captions_is_an_error(data, tiny_clip_path, tmp_path, capsys):
    _, folder, rows = data
    train = [row for row in rows if row["split"] == "train"]
    path = _write(folder, "photos_only.csv", _without(train, "sketches", "captions") +
                  [row for row in rows if row["split"] != "train"])
    with pytest.raises(SystemExit):
        _stage1(tiny_clip_path, path, tmp_path / "s1")
    assert f"error: {path}: none of the 14 train rows has sketches or captions; stage 1 " \
           "learns from at least one of them (stage 2 from sketches)" in capsys.readouterr().err
    # whatever gives such samples, the stage refuses them with a line naming what is missing
    from engine.stages import AdaptStage
    from utils.config import load_config
    cfg = load_config(None, ["data.dataset=manifest", f"data.manifest={path}"])
    photos = [TrainSample(0, (folder / train[0]["image"],), None)]
    with pytest.raises(DatasetError, match="none of the 1 training samples has a sketch or a "
                                           "caption"):
        AdaptStage().usable_samples(cfg, photos)


def test_rows_missing_what_the_losses_need_are_left_out_and_counted(data, caplog):
    _, folder, rows = data
    samples = manifest.train_samples(_write(folder, "mixed.jsonl", rows))
    train_rows = [row for row in rows if row["split"] == "train"]
    assert len(samples) == sum(max(len(row.get("captions", [])), len(row.get("sketches", [])))
                               for row in train_rows)
    assert any(sample.sketch is None for sample in samples)  # a photo row without sketches
    from engine.stages import AdaptStage, TokenStage
    from utils.config import load_config
    cfg = load_config(None, ["data.dataset=manifest", f"data.manifest={folder / 'mixed.jsonl'}"])
    with caplog.at_level(logging.WARNING):
        kept = AdaptStage().usable_samples(cfg, samples)
    assert all(s.sketch is not None and s.captions for s in kept) and len(kept) < len(samples)
    assert f"{len(samples) - len(kept)} of {len(samples)} training samples left out" in caplog.text
    cfg.loss.nisc = 0  # then sketches are not needed, and every sample trains
    assert AdaptStage().usable_samples(cfg, samples) == samples
    assert all(s.sketch is not None for s in TokenStage().usable_samples(cfg, samples))


def test_cameras_leave_out_the_same_person_and_camera(data, tmp_path):
    _, folder, rows = data
    query = next(row for row in rows if row["split"] == "query")
    shown = [row for row in rows if row["split"] == "gallery" and
             row["person_id"] == query["person_id"]]
    moved = dict(query, camera=shown[0]["camera"])  # the query now shares a gallery camera
    own = manifest.eval_set(_write(folder, "cams.jsonl",
                                   [moved if row is query else row for row in rows]), "test")
    dropped = [g for g, (gid, cam) in enumerate(zip(own.gallery_ids, own.gallery_cams))
               if gid == query["person_id"] and cam == own.sketch_cams[0]]
    assert [own.gallery_paths[g] for g in dropped] == [folder / shown[0]["image"]]
    assert own.text_cams[:len(query["captions"])] == [own.sketch_cams[0]] * len(query["captions"])
    # without cameras nothing is left out: no cams at all
    bare = manifest.eval_set(_write(folder, "bare.csv", _without(rows, "camera")), "test")
    assert bare.gallery_cams is bare.sketch_cams is bare.text_cams is None
    # a row without a camera shares none with any other
    half = [_without([row], "camera")[0] if row["split"] == "gallery" else row for row in rows]
    mixed = manifest.eval_set(_write(folder, "half.jsonl", half), "test")
    assert not set(mixed.gallery_cams) & set(mixed.sketch_cams)
    similarity = torch.zeros(len(mixed.sketch_paths), len(mixed.gallery_paths))
    assert rank_metrics(similarity, torch.tensor(mixed.sketch_ids), torch.tensor(
        mixed.gallery_ids), torch.tensor(mixed.sketch_cams), torch.tensor(mixed.gallery_cams)
    ) == rank_metrics(similarity, torch.tensor(mixed.sketch_ids),
                      torch.tensor(mixed.gallery_ids))


def test_no_camera_and_string_ids_train(data, tiny_clip_path, tmp_path, caplog):
    _, folder, rows = data
    named = [dict(row, person_id=f"person-{row['person_id']}") for row in _without(rows, "camera")]
    path = _write(folder, "strings.csv", named)
    with caplog.at_level(logging.INFO):
        history = _stage1(tiny_clip_path, path, tmp_path / "s1")
    assert "person ids are not all integers; numbered 0..11 in sorted order" in caplog.text
    assert _tasks(history) == {"text_to_image", "sketch_to_image"}


def test_val_rows_pick_the_best_epoch(data, tiny_clip_path, tmp_path):
    _, folder, rows = data
    train_people = sorted({row["person_id"] for row in rows if row["split"] == "train"})
    val_people = set(train_people[:2])
    edited = [dict(row, split="val") if row["person_id"] in val_people else row for row in rows]
    path = _write(folder, "val.jsonl", edited)
    own = manifest.eval_set(path, "val")
    val_rows = [row for row in edited if row["split"] == "val"]
    assert len(own.gallery_paths) == len(val_rows)
    # a val query never counts its own photo: the same person and camera as that photo
    for sketch, pid, cam in zip(own.sketch_paths, own.sketch_ids, own.sketch_cams):
        row = next(r for r in val_rows if sketch.relative_to(folder).as_posix()
                   in r.get("sketches", []))
        photo = own.gallery_paths.index(folder / row["image"])
        assert (own.gallery_ids[photo], own.gallery_cams[photo]) == (pid, cam)
    history = _stage1(tiny_clip_path, path, tmp_path / "s1", **{"train.select_on": "auto"})
    assert history["select"]["split"] == "val" and "val" in history
    assert _tasks(history, "val") == {"text_to_image", "sketch_to_image"}


# ----------------------------------------------------------------------------
# Bad rows: named by the loader (the first) and by datasets.check (all)
# ----------------------------------------------------------------------------

def _bad_rows(rows: list) -> list:
    train = [row for row in rows if row["split"] == "train"]
    query = next(row for row in rows if row["split"] == "query")
    bad = [dict(train[0], image="photos/train/missing.jpg"),            # line 1
           dict(train[1], sketches=["sketches/A/train/nope.jpg"]),     # line 2
           dict(train[2], split="test"),                               # line 3
           dict(train[3], person_id=3.5),                              # line 4
           dict(train[4], caption=["a typo"]),                         # line 5
           _without([train[5]], "person_id")[0],                       # line 6
           dict(train[6], image=train[7]["image"]),                    # line 7
           train[7],                                                   # line 8
           dict(query, person_id=99999),                               # line 9
           dict(train[8], captions="a man, not a list")]               # line 10
    return bad + [row for row in rows if row not in train[:9] and row is not query]


EXPECTED = [  # (line, what the message says)
    (1, "image: file not found"), (2, "sketches: file not found"),
    (3, 'split: "test" is not one of train, query, gallery, val'),
    (4, "person_id: expected an integer or a string, got 3.5"),
    (5, "unknown field 'caption' (did you mean 'captions'?)"),
    (6, "missing required field 'person_id'"),
    (8, "image: the same photo as line 7"),
    (9, "person_id: query person 99999 has no gallery photo"),
    (10, "captions: expected captions as a JSON list of strings"),
]


def test_the_loader_stops_at_the_first_bad_row(data, tmp_path):
    _, folder, rows = data
    path = _write(folder, "bad.jsonl", _bad_rows(rows))
    with pytest.raises(DatasetError) as error:
        manifest.train_samples(path)
    message = str(error.value)
    # the file's first bad line, whatever found it (here: a photo that is not there)
    assert message.startswith(f"{path}, line 1, image: file not found: ") and "\n" not in message
    assert f"(and {len(EXPECTED) - 1} more problem(s): python -m datasets.check" in message


def test_check_lists_every_bad_row(data, tmp_path, capsys):
    _, folder, rows = data
    bad = _bad_rows(rows)
    lines = [json.dumps(row) for row in bad]
    lines.insert(10, '{"image": "photos/x.jpg", "person_id": 1,')  # line 11: cut off
    path = folder / "bad_all.jsonl"
    path.write_text("\n".join(lines) + "\n")
    status = check.main(["data.dataset=manifest", f"data.manifest={path}",
                         "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert status == 1 and "training would fail" in out
    for line, what in EXPECTED + [(11, "malformed JSON")]:
        assert any(f"{path}, line {line}" in text and what in text
                   for text in out.splitlines()), (line, what)
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(map(len, report["problems"].values())) == len(EXPECTED) + 1
    assert report["tables"]["manifest bad_all.jsonl"]["rows"]["gallery"]["photos"] == \
        sum(row["split"] == "gallery" for row in rows)


def test_csv_without_header_or_with_bad_cells(data, capsys):
    _, folder, rows = data
    text = manifest_csv(rows[:3])
    headless = folder / "headless.csv"
    headless.write_text(text.split("\n", 1)[1])
    with pytest.raises(DatasetError, match=r"headless\.csv, line 1: no header row: the first "
                                           r"line must name the columns"):
        manifest.train_samples(headless)
    typo = folder / "typo.csv"
    typo.write_text(text.replace("sketches", "sketch", 1))
    with pytest.raises(DatasetError, match=r"unknown column 'sketch' \(did you mean "
                                           r"'sketches'\?\)"):
        manifest.train_samples(typo)
    extra = folder / "extra.csv"
    extra.write_text(text.rstrip("\n") + ",one too many\n")
    assert check.main(["data.dataset=manifest", f"data.manifest={extra}"]) == 1
    assert f"{extra}, line 4: 8 cells for 7 columns" in capsys.readouterr().out


def test_the_config_names_what_is_wrong(tmp_path, capsys):
    for argv, message in (
            ([], "data.dataset=manifest needs data.manifest=FILE"),
            ([f"data.manifest={tmp_path / 'people.txt'}"], "expected a .jsonl or .csv file"),
            ([f"data.manifest={tmp_path / 'gone.csv'}"], "manifest not found")):
        with pytest.raises(SystemExit) as stopped:
            check.main(["data.dataset=manifest", *argv])
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_test_only_manifest_is_tested_not_trained(data, tmp_path):
    _, folder, rows = data
    path = _write(folder, "test_only.jsonl", [row for row in rows if row["split"] != "train"])
    assert manifest.eval_set(path, "test").sketch_paths
    with pytest.raises(DatasetError, match=r"no train rows \(split 'train'"):
        manifest.train_samples(path)
