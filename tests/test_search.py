"""search.py and its gallery index: ranking, contact sheet, reuse and incremental updates of
the index, interactive rounds from a pipe, and bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import search
from engine.api import Retriever
from engine.gallery import default_index_path
from utils.config import REPO_ROOT

# search.main sets up logging on the captured standard output.
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_search_prints_ranking_and_writes_sheet(market_run, gallery, sketch, tmp_path, capsys):
    checkpoint = market_run / "checkpoint_best.pth"
    ranking = search.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery),
                           "--sketch", str(sketch), "--text", "a young woman",
                           "--text", "wearing a red top", "--topk", "5",
                           "--out", str(tmp_path / "ranked.png"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "query: a photo of * , and a young woman, wearing a red top" in out
    assert len(ranking) == 5 and [score for _, score in ranking] == sorted(
        (score for _, score in ranking), reverse=True)
    for rank, (path, score) in enumerate(ranking, start=1):
        assert f"{rank:>4}  {score:>7.4f}  {path}" in out
    assert (tmp_path / "ranked.png").stat().st_size > 0
    assert (default_index_path(checkpoint, gallery) / "index.json").is_file()


def test_index_is_reused_and_updated_incrementally(market_run, gallery, sketch, tmp_path,
                                                   embedded):
    checkpoint, index = market_run / "checkpoint_best.pth", tmp_path / "index.pt"
    photos = sorted((gallery / "cam").iterdir())
    first = Retriever.load(checkpoint, device="cpu").index(gallery, index)
    assert embedded == [len(photos)]
    Retriever.load(checkpoint, device="cpu").index(gallery, index)
    assert embedded == [len(photos)]  # nothing re-embedded
    shutil.copy(photos[0], gallery / "cam" / "new_photo.jpg")  # added
    photos[1].unlink()  # removed
    photos[2].write_bytes(photos[3].read_bytes())  # changed
    os.utime(photos[2], ns=(1, 1))
    updated = Retriever.load(checkpoint, device="cpu").index(gallery, index)
    assert embedded[-1] == 2
    assert "cam/new_photo.jpg" in updated.paths and f"cam/{photos[1].name}" not in updated.paths
    from datasets.base import read_image
    results = updated.search(read_image(sketch), ["a man"], topk=len(updated.paths))
    assert len(results) == len(first.paths)  # one added, one removed


def test_interactive_rounds_from_a_pipe(market_run, gallery, sketch, tmp_path):
    command = [sys.executable, "search.py", "--checkpoint", str(market_run / "checkpoint_best.pth"),
               "--gallery", str(gallery), "--sketch", str(sketch), "--topk", "3",
               "--interactive", "--index", str(tmp_path / "i.pt"), "--device", "cpu"]
    result = subprocess.run(command, cwd=REPO_ROOT, input="a red coat\nand a black backpack\n\n",
                            capture_output=True, text=True, timeout=120, check=True)
    queries = [line for line in result.stdout.splitlines() if "query: " in line]
    assert queries[0].endswith("query: a photo of *")
    assert queries[1].endswith("a photo of * , and a red coat")
    assert queries[2].endswith("a photo of * , and a red coat, and a black backpack")


@pytest.mark.parametrize("problem", ["sketch", "gallery", "stage", "missing", "neither"])
def test_bad_input_gets_one_line(market_run, stage1_run, gallery, sketch, tmp_path, capsys,
                                 problem):
    checkpoint = market_run / "checkpoint_best.pth"
    if problem == "sketch":
        sketch = tmp_path / "broken.png"
        sketch.write_bytes(b"not a picture")
        expected = "corrupt or unreadable image: " + str(sketch)
    elif problem == "gallery":
        gallery = tmp_path / "empty"
        gallery.mkdir()
        expected = "holds no images"
    elif problem == "stage":  # a sketch with text needs stage 2
        checkpoint = stage1_run / "checkpoint_best.pth"
        expected = "this stage-1 checkpoint searches by a sketch or by text, not both"
    elif problem == "missing":
        checkpoint = tmp_path / "nothing.pth"
        expected = "checkpoint not found"
    else:
        expected = "give --sketch, --text, or both"
    query = [] if problem == "neither" else ["--sketch", str(sketch), "--text", "a red coat"]
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery), *query,
                     "--device", "cpu", "--index", str(tmp_path / "i.pt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.count("\n") == 1


def _direct_ranking(model, features, query, paths, topk=5) -> list:
    scores = (query @ features.float().t())[0]  # the stored float16 features
    best = scores.topk(topk)
    return [paths[i] for i in best.indices.tolist()]


@pytest.mark.parametrize("source", ["stage1", "clip", "stage2"])
def test_any_model_searches_by_sketch_alone_and_text_alone(source, stage1_run, market_run,
                                                           tiny_clip_path, gallery, sketch,
                                                           tmp_path, capsys):
    """Stage-1 checkpoints and plain CLIP weights search by the image tower (sketch) or the
    text tower (text); a stage-2 checkpoint by "a photo of *" or the text alone."""
    import torch
    from PIL import Image

    from model.tokenizer import tokenize
    checkpoint = {"stage1": stage1_run / "checkpoint_best.pth", "clip": tiny_clip_path,
                  "stage2": market_run / "checkpoint_best.pth"}[source]
    extra = ["model.image_size=[32,16]"] if source == "clip" else []
    retriever = Retriever.load(checkpoint, extra, device="cpu").index(gallery, tmp_path / "i.pt")
    assert retriever.composes == (source == "stage2")
    model, image = retriever.encoders.model, Image.open(sketch)
    features = retriever.gallery.features
    with torch.no_grad():
        tokens = tokenize(["a woman in a red top"], model.clip.context_length)
        by_text = model.encode_text(tokens)
        pixels = retriever.encoders.transform(image.convert("RGB")).unsqueeze(0)
        by_sketch = (model.encode_query(model.clip.encode_image(pixels), [""])
                     if source == "stage2" else model.encode_image(pixels))
    assert [p for p, _ in retriever.search(None, ["a woman in a red top"], topk=5)] == \
        _direct_ranking(model, features, by_text, retriever.paths)
    assert [p for p, _ in retriever.search(image, [], topk=5)] == \
        _direct_ranking(model, features, by_sketch, retriever.paths)
    search.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery), "--text",
                 "a woman in a red top", "--device", "cpu", "--index", str(tmp_path / "i.pt"),
                 "--out", str(tmp_path / "text.png"), *extra])
    assert "query: a woman in a red top" in capsys.readouterr().out
    assert (tmp_path / "text.png").is_file()
