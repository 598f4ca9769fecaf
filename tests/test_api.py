"""The Python API (``engine.api.Retriever``): the README's example as written, every kind of
query, a folder or a list of photos, the same results as search.py, and bad input in one
line."""
from __future__ import annotations

import re

import pytest
from PIL import Image

import search
from engine.api import Retriever
from engine.gallery import default_index_path
from utils.config import REPO_ROOT
from utils.errors import UserError

# search.main sets up logging on the captured standard output.
pytestmark = pytest.mark.usefixtures("restore_logging")

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# The README's example names these; the test puts tiny fixtures in their place.
PLACEHOLDERS = ('"outputs/Market_finetune"', '"photos/"', '"witness.png"')
QUERIES = {  # search.py's options -> Retriever.search's arguments
    "composed": (["--text", "a young woman", "--text", "wearing a red top"],
                 {"feedback": ["a young woman", "wearing a red top"]}),
    "sketch": ([], {}),
    "text": (["--text", "a young woman wearing a red top"],
             {"text": "a young woman wearing a red top"}),
}


@pytest.fixture(scope="module")
def retriever(market_run, synthetic_root, tmp_path_factory):
    """The stage-2 run with the synthetic Market-Sketch-1K query photos (35) indexed."""
    folder = synthetic_root / "Market-Sketch-1K" / "photo" / "query"
    index = tmp_path_factory.mktemp("api") / "index"
    return Retriever.load(market_run, device="cpu").index(folder, index)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_readme_example_runs_as_written(market_run, gallery, sketch, capsys):
    blocks = [block for block in PYTHON_BLOCK.findall((REPO_ROOT / "README.md").read_text())
              if "Retriever" in block]
    assert len(blocks) == 1 and len(blocks[0].splitlines()) == 5
    code = blocks[0]
    for placeholder, fixture in zip(PLACEHOLDERS, (market_run, gallery, sketch)):
        assert code.count(placeholder) == 1, placeholder
        code = code.replace(placeholder, repr(str(fixture)))
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert all(line.split()[1].startswith("cam/") for line in lines)
    index = default_index_path(market_run / "checkpoint_best.pth", gallery)
    assert (index / "index.json").is_file()  # indexed beside the checkpoint


@pytest.mark.parametrize("kind", QUERIES)
def test_results_equal_search_py(kind, retriever, sketch, capsys):
    """The same photos and scores as search.py prints and returns for the same query."""
    options, arguments = QUERIES[kind]
    if kind != "text":
        options, arguments = ["--sketch", str(sketch), *options], {"sketch": sketch, **arguments}
    found = retriever.search(**arguments, topk=7)
    printed = search.main(["--checkpoint", str(retriever.model_file), "--device", "cpu",
                           "--gallery", str(retriever.gallery.folder),
                           "--index", str(retriever.gallery.index.folder), "--topk", "7",
                           *options])
    assert found == printed and len(found) == 7
    out = capsys.readouterr().out
    for rank, (path, score) in enumerate(found, start=1):
        assert f"{rank:>4}  {score:>7.4f}  {path}" in out
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)


def test_the_forms_of_a_query(retriever, sketch):
    """A sketch as a path or a PIL image; feedback as one string or as rounds; text alone
    as ``text=`` or as feedback without a sketch."""
    rounds = ["a young woman", "wearing a red top"]
    composed = retriever.search(sketch, rounds)
    assert len(composed) == 10
    assert retriever.search(Image.open(sketch), feedback=rounds) == composed
    assert retriever.search(sketch, "a young woman, wearing a red top") == composed
    assert retriever.search(sketch, [" ", *rounds]) == composed  # blank rounds are dropped
    by_text = retriever.search(text="a young woman, wearing a red top")
    assert retriever.search(feedback=rounds) == by_text != composed
    assert retriever.search(sketch) != composed
    assert retriever.query_text(rounds) == "a photo of * , and a young woman, wearing a red top"


def test_topk(retriever, sketch):
    assert len(retriever.search(sketch, topk=1)) == 1
    every = retriever.search(sketch, topk=1000)  # more than the gallery holds
    assert len(every) == len(retriever.paths) == 35
    assert retriever.search(sketch, topk=3) == every[:3]
    for topk in (0, -1, 2.5, True):
        assert "topk must be a whole number of at least 1" in one_line_error(
            retriever.search, sketch, topk=topk)


def test_a_list_of_photos_is_searched_in_memory(retriever, market_run, sketch):
    """Photos given as paths: held in memory (no index folder), named as given, and scored
    as the indexed folder scores them."""
    folder = retriever.gallery.folder
    photos = [folder / path for path in retriever.paths]
    from_list = Retriever.load(market_run / "checkpoint_best.pth", device="cpu").index(
        [str(path) for path in photos])
    assert from_list.gallery.index is None and from_list.gallery.folder is None
    for arguments in ({"sketch": sketch, "feedback": ["a man"]}, {"text": "a red top"}):
        expected = retriever.search(**arguments, topk=5)
        found = from_list.search(**arguments, topk=5)
        assert [path for path, _ in found] == [str(folder / path) for path, _ in expected]
        assert [score for _, score in found] == pytest.approx(
            [score for _, score in expected], abs=1e-6)
    # Re-ranking and the rerank setting work on a list too.
    reranked = Retriever.load(market_run, device="cpu").index(photos, rerank=True)
    assert len(reranked.search(text="a red top", topk=35)) == 35


@pytest.mark.parametrize("problem, expected", [
    ("nothing", "give a sketch, words (feedback= or text=), or a sketch with feedback"),
    ("text and sketch", "text= searches by words alone; give the words that go with a "
                        "sketch as feedback="),
    ("missing sketch", "image not found: "),
    ("not an image", "sketch must be an image file or a PIL image, not int"),
])
def test_bad_queries_are_one_line(problem, expected, retriever, sketch, tmp_path):
    arguments = {"nothing": {}, "text and sketch": {"sketch": sketch, "text": "a man"},
                 "missing sketch": {"sketch": tmp_path / "nothing.png"},
                 "not an image": {"sketch": 3}}[problem]
    assert expected in one_line_error(retriever.search, **arguments)


def test_a_stage1_model_refuses_a_composed_query(stage1_run, gallery, sketch, tmp_path):
    stage1 = Retriever.load(stage1_run, device="cpu")
    assert one_line_error(stage1.search, sketch, ["a man"]) == (
        "this stage-1 checkpoint searches by a sketch or by text, not both; composing them "
        "needs a stage-2 checkpoint (train_token.py)")  # refused before any indexing
    assert "nothing to search yet" in one_line_error(stage1.search, sketch)
    stage1.index(gallery, tmp_path / "index")
    assert len(stage1.search(sketch, topk=3)) == len(stage1.search(text="a man", topk=3)) == 3


@pytest.mark.parametrize("problem, expected", [
    ("checkpoint", "checkpoint not found: "),
    ("run folder", "holds no checkpoint_best.pth; give a checkpoint file"),
    ("overrides", "overrides must be a list of \"KEY=VALUE\" strings"),
    ("gallery", "gallery folder not found: "),
    ("photo", "image not found: "),
    ("empty list", "no photos to index: the list is empty"),
    ("ann", "ann='flat' is not one of ivf, hnsw"),
])
def test_bad_models_and_galleries_are_one_line(problem, expected, market_run, tmp_path):
    if problem == "checkpoint":
        message = one_line_error(Retriever.load, tmp_path / "nothing.pth")
    elif problem == "run folder":
        message = one_line_error(Retriever.load, tmp_path)
    elif problem == "overrides":
        message = one_line_error(Retriever.load, market_run, "model.image_size=[32,16]")
    else:
        retriever = Retriever.load(market_run, device="cpu")
        gallery = {"gallery": tmp_path / "no photos", "photo": [tmp_path / "gone.jpg"],
                   "empty list": [], "ann": tmp_path}[problem]
        message = one_line_error(retriever.index, gallery,
                                 **({"ann": "flat"} if problem == "ann" else {}))
    assert expected in message
