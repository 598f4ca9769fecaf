"""ONNX export (python -m engine.export --format onnx) and its runner (engine.onnx_runtime):
onnxruntime gives PyTorch's features and rankings, pooling never reads int64 ids with
ArgMax, and nothing on disk is overwritten."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import export
from engine.evaluation import encode_images, retrieval
from engine.models import load_for_inference
from model.tokenizer import tokenize
from tests.peers import missing_peer

TOLERANCE = 1e-4
# Texts of three lengths, with and without the placeholder; the last of "full" is cut to
# the whole context.
TEXTS = {
    "short": ["a man", "a photo of *", "red"],
    "long": ["an adult woman with long hair, wearing a green long-sleeved top and a long "
             "purple dress", "a photo of * , and carrying a backpack and a black bag"],
    "full": ["a photo of * , and " + "a red coat, " * 30, "blue " * 100],
}
FEEDBACK = ["", "a man in a red coat", "an adult woman with long hair, " * 12]


@pytest.fixture(scope="module")
def runtime():
    """onnxruntime, or skip (fail under CI) where it or onnx is not installed."""
    for package in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            missing_peer(f"{package} is not installed: pip install -r requirements-dev.txt")
    import onnxruntime
    return onnxruntime


@pytest.fixture(scope="module")
def market_onnx(runtime, market_run, tmp_path_factory):
    """The stage-2 run exported to ONNX through the command line."""
    out = tmp_path_factory.mktemp("onnx") / "market_onnx"
    export.main([str(market_run), "--format", "onnx", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def market_model(market_run):
    return load_for_inference(market_run / "checkpoint_best.pth").model


def session(runtime, path):
    return runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def rows_of(texts, batch):
    return [texts[row % len(texts)] for row in range(batch)]


def lengths_of(tokens):
    """Text lengths to feed the graphs: cut after the longest text, a few padding ids
    more, and the whole context."""
    shortest = int(tokens.float().argmax(dim=-1).max()) + 1
    return sorted({shortest, min(shortest + 5, tokens.shape[1]), tokens.shape[1]})


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnx_features_equal_pytorch(runtime, market_onnx, market_model, batch):
    model = market_model
    images = torch.randn(batch, 3, *model.clip.visual.image_size,
                         generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        sketch_feats = model.clip.encode_image(images)
    (onnx_images,) = session(runtime, market_onnx / "image_encoder.onnx").run(
        None, {"images": images.numpy()})
    assert np.abs(onnx_images - sketch_feats.numpy()).max() < TOLERANCE
    text_session = session(runtime, market_onnx / "text_encoder.onnx")
    query_session = session(runtime, market_onnx / "query_encoder.onnx")
    checked = 0
    for texts in TEXTS.values():
        tokens = tokenize(rows_of(texts, batch))  # [B, 77]
        with torch.no_grad():
            expected_text = model.encode_text(tokens).numpy()
            expected_query = model.compose(sketch_feats, tokens).numpy()
        for length in lengths_of(tokens):
            (text_feats,) = text_session.run(None, {"tokens": tokens[:, :length].numpy()})
            (query_feats,) = query_session.run(None, {"sketch_features": sketch_feats.numpy(),
                                                      "tokens": tokens[:, :length].numpy()})
            assert np.abs(text_feats - expected_text).max() < TOLERANCE, length
            assert np.abs(query_feats - expected_query).max() < TOLERANCE, length
            checked += 1
    assert checked >= 7  # short, long and full texts at several lengths each
    # The composed query as the model makes it from feedback.
    from engine.onnx_runtime import OnnxEncoders
    encoders = OnnxEncoders(market_onnx)
    feedback = rows_of(FEEDBACK, batch)
    with torch.no_grad():
        expected = model.encode_query(sketch_feats, feedback)
    assert (encoders.encode_query(sketch_feats, feedback) - expected).abs().max() < TOLERANCE


def argmax_input_types(path) -> list:
    """The element type (onnx.TensorProto enum) of the input of every ArgMax in a graph."""
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*graph.input, *graph.value_info, *graph.output]}
    return [types.get(node.input[0]) for node in graph.node if node.op_type == "ArgMax"]


def test_end_of_text_pooling_reads_no_int64_argmax(runtime, market_onnx, market_model, tmp_path,
                                                    monkeypatch):
    """Some runtimes lack ArgMax over int64 ids: the graphs compare the ids as float32."""
    import onnx
    for name in ("text_encoder.onnx", "query_encoder.onnx"):
        types = argmax_input_types(market_onnx / name)
        assert types == [onnx.TensorProto.FLOAT], (name, types)
    # The check catches the trap: an argmax taken on the int64 ids themselves.
    import model.clip
    from engine.onnx_export import write_graph
    from model.onnx_graphs import TEXT_IO, TextEncoder
    monkeypatch.setattr(model.clip, "end_of_text_positions", lambda tokens: tokens.argmax(-1))
    trapped = tmp_path / "trapped.onnx"
    write_graph(TextEncoder(market_model.clip).eval(), (tokenize(["a man"])[:, :4],), trapped,
                TEXT_IO)
    assert argmax_input_types(trapped) == [onnx.TensorProto.INT64]


def test_ranking_from_onnx_equals_pytorch(runtime, market_onnx, market_run, synthetic_root):
    """The synthetic Market-Sketch-1K test split ranked from onnxruntime's features: the
    same order and the same metrics as the evaluation of the PyTorch model."""
    from datasets.transforms import eval_transform
    from engine.onnx_runtime import OnnxEncoders
    from engine.stages import TokenStage
    loaded = load_for_inference(market_run / "checkpoint_best.pth",
                                [f"data.root={synthetic_root}", "device=cpu"])
    model, cfg, device = loaded.model, loaded.cfg, torch.device("cpu")
    stage = TokenStage()
    expected = stage.evaluate(model, cfg, "test", device)["tasks"]
    (eval_set,) = stage.eval_sets(cfg, "test")
    assert eval_set.feedback and len(eval_set.gallery_paths) > 20
    encoders = OnnxEncoders(market_onnx)
    gallery = encoders.encode_images(eval_set.gallery_paths)
    sketch_raw = encoders.encode_images(eval_set.sketch_paths, normalize=False)
    queries = {"interactive": encoders.encode_query(sketch_raw, eval_set.feedback),
               "sketch_only": F.normalize(sketch_raw, dim=-1),
               "text_only": encoders.encode_text(eval_set.feedback)}
    # PyTorch's features, as the evaluation makes them, for the order of every ranking.
    torch_gallery = encode_images(model.encode_image, eval_set.gallery_paths, eval_transform(cfg),
                                  device)
    torch_sketch = encode_images(model.clip.encode_image, eval_set.sketch_paths,
                                 eval_transform(cfg), device)
    with torch.no_grad():
        torch_queries = {"interactive": model.encode_query(torch_sketch, eval_set.feedback),
                         "sketch_only": F.normalize(torch_sketch, dim=-1),
                         "text_only": model.encode_text(tokenize(eval_set.feedback))}
    assert (gallery - torch_gallery).abs().max() < TOLERANCE
    assert set(expected) == set(queries)
    cams = ((eval_set.sketch_cams, eval_set.gallery_cams) if cfg.test.stage2_drop_same_camera
            else (None, None))
    for task, query_feats in queries.items():
        order = (query_feats @ gallery.t()).argsort(dim=1, descending=True, stable=True)
        torch_order = (torch_queries[task] @ torch_gallery.t()).argsort(dim=1, descending=True,
                                                                        stable=True)
        assert torch.equal(order, torch_order), task
        metrics = retrieval(query_feats, gallery, eval_set.sketch_ids, eval_set.gallery_ids,
                            *cams, rank_denominator=cfg.test.rank_denominator)
        assert metrics == expected[task], task


@pytest.mark.parametrize("source", ["stage1", "clip"])
def test_stage1_and_clip_files_export_two_encoders(runtime, stage1_run, tiny_clip_path, tmp_path,
                                                   capsys, source):
    from engine.onnx_runtime import OnnxEncoders
    from utils.errors import UserError
    path = stage1_run / "checkpoint_best.pth" if source == "stage1" else tiny_clip_path
    overrides = [] if source == "stage1" else ["model.image_size=[32,16]"]
    out = tmp_path / "onnx"
    written = export.main([str(path), *overrides, "--format", "onnx", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "max |onnxruntime - PyTorch|" in printed and "query_encoder" not in printed
    assert {file.name for file in written} == {"image_encoder.onnx", "text_encoder.onnx",
                                               "config.json", "bpe_simple_vocab_16e6.txt.gz"}
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == ("adapt" if source == "stage1" else "clip")
    assert config["image"]["size"] == [32, 16] and config["text"]["prompt"] is None
    model = load_for_inference(path, overrides).model
    encoders = OnnxEncoders(out)
    assert not encoders.composes
    texts = rows_of(TEXTS["long"] + TEXTS["short"], 5)
    images = torch.randn(5, 3, 32, 16)
    with torch.no_grad():
        assert (encoders.encode_text(texts) - model.encode_text(tokenize(texts))
                ).abs().max() < TOLERANCE
        assert (encoders.encode_images(images) - model.encode_image(images)
                ).abs().max() < TOLERANCE
    with pytest.raises(UserError, match="has no query encoder"):
        encoders.encode_query(torch.zeros(1, 64), ["a man"])


def test_export_config_describes_inputs(market_onnx, market_model):
    config = json.loads((market_onnx / "config.json").read_text())
    clip = market_model.clip
    assert config["stage"] == "token" and config["opset"] >= 17
    assert config["files"] == {"image_encoder": "image_encoder.onnx",
                               "text_encoder": "text_encoder.onnx",
                               "query_encoder": "query_encoder.onnx"}
    assert config["image"]["size"] == list(clip.visual.image_size)
    assert config["image"]["interpolation"] == "bicubic"
    assert config["image"]["mean"] == [0.485, 0.456, 0.406]
    text = config["text"]
    assert text["placeholder_id"] == clip.placeholder_id
    assert text["end_of_text_id"] == 49407 and text["context_length"] == 77
    assert text["prompt"] == "a photo of * , and {}" and text["sketch_prompt"] == "a photo of *"
    assert (market_onnx / text["vocabulary"]).is_file()
    assert config["graphs"]["query_encoder"]["inputs"]["tokens"]["dtype"] == "int64"
    assert config["graphs"]["image_encoder"]["outputs"]["image_features"]["normalized"] is False


def test_search_with_onnx_equals_pytorch(runtime, market_onnx, market_run, gallery, sketch,
                                         capsys, restore_logging, embedded):
    """search.py --onnx DIR finds the photos of search.py --checkpoint, in the same order
    and with the same scores, for a sketch with feedback, a sketch alone and text alone.
    Each backend keeps its own index: ONNX features never pass for PyTorch's."""
    import search
    from engine.api import Retriever
    from engine.gallery import default_index_path, read_index
    from utils.errors import UserError
    checkpoint = market_run / "checkpoint_best.pth"
    queries = [["--sketch", str(sketch), "--text", "a man", "--text", "in a red coat"],
               ["--sketch", str(sketch)], ["--text", "a woman in a red top"]]
    for query in queries:
        by_torch = search.main(["--checkpoint", str(checkpoint), "--device", "cpu",
                                "--gallery", str(gallery), *query])
        torch_lines = capsys.readouterr().out.splitlines()
        by_onnx = search.main(["--onnx", str(market_onnx), "--gallery", str(gallery), *query])
        onnx_lines = capsys.readouterr().out.splitlines()
        assert len(by_onnx) == 10 and onnx_lines[0] == torch_lines[0]  # "query: ..."
        assert [path for path, _ in by_onnx] == [path for path, _ in by_torch], query
        assert np.allclose([score for _, score in by_onnx], [score for _, score in by_torch],
                           atol=TOLERANCE, rtol=0), query
    assert embedded == [35]  # PyTorch's index was built once, then reused
    torch_index = default_index_path(checkpoint, gallery)
    onnx_index = default_index_path(market_onnx / "config.json", gallery)
    assert onnx_index.parent.parent == market_onnx and (onnx_index / "index.json").is_file()
    torch_key = Retriever.load(checkpoint, device="cpu").model_key
    onnx_retriever = Retriever.load_onnx(market_onnx)
    assert onnx_retriever.model_key.startswith("onnx:") and onnx_retriever.model_key != torch_key
    assert read_index(torch_index, torch_key) is not None
    assert read_index(onnx_index, torch_key) is None  # another model's: rebuilt, not read
    onnx_retriever.index(gallery, torch_index)  # one --index for both: the last model's
    assert read_index(torch_index, torch_key) is None
    assert read_index(torch_index, onnx_retriever.model_key) is not None
    with pytest.raises(UserError, match=r"^model.image_size=\[32,16\]: an ONNX export keeps"):
        Retriever.load_onnx(market_onnx, ["model.image_size=[32,16]"])


def test_the_app_serves_an_onnx_export(runtime, market_onnx, gallery, tmp_path):
    import app
    from engine.api import Retriever
    retriever = Retriever.load_onnx(market_onnx).index(gallery, tmp_path / "index")
    api = app.SearchAPI(retriever)
    health = json.loads(api.answer(app.Request("GET", "/api/health")).body)
    assert health == {"ok": True, "gallery": 35, "composes": True,
                      "model": "ONNX export of a stage-2 model"}
    body = json.dumps({"feedback": ["a red coat"], "topk": 3}).encode()
    answer = api.answer(app.Request("POST", "/api/search", {
        "Content-Type": "application/json", "Content-Length": str(len(body))}, body))
    results = json.loads(answer.body)["results"]
    assert [result["id"] for result in results] == \
        [path for path, _ in retriever.search(text="a red coat", topk=3)]


def test_the_app_command_line_serves_an_onnx_export(runtime, market_onnx, gallery, tmp_path,
                                                     served_once, capsys, restore_logging):
    """``app.py --onnx DIR``: the export is what the server is given, the gallery indexed."""
    import app
    app.main(["--onnx", str(market_onnx), "--gallery", str(gallery), "--port", "0",
              "--index", str(tmp_path / "index")])
    retriever = served_once["retriever"]
    assert (retriever.kind, retriever.composes) == ("ONNX export of a stage-2 model", True)
    assert retriever.model_key.startswith("onnx:") and len(retriever.paths) == 35
    assert served_once["closed"] and "stopped" in capsys.readouterr().out


def test_missing_onnx_is_one_line(market_run, tmp_path, capsys, monkeypatch, restore_logging):
    from engine.onnx_runtime import OnnxEncoders
    from utils.errors import UserError
    out = tmp_path / "onnx"
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(market_run), "--format", "onnx", "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: --format onnx needs onnx and onnxruntime "
                                       "(pip install onnx onnxruntime)\n")
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"pip install onnxruntime\)$"):
        OnnxEncoders(tmp_path)
    import search
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--onnx", str(tmp_path), "--gallery", str(tmp_path), "--text", "a man"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: running ONNX encoders needs onnxruntime "
                                       "(pip install onnxruntime)\n")


def test_onnx_export_never_overwrites(runtime, market_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")
    a_file = tmp_path / "file.onnx"
    a_file.write_bytes(b"keep me")
    cases = [
        ([str(market_run), "--format", "onnx", "--out", str(out)], "is not empty"),
        ([str(market_run), "--format", "onnx", "--out", str(a_file)], "is a file"),
        ([str(market_run), "--format", "onnx", "--out", str(tmp_path / "x"), "--half"],
         "--half applies to --format weights"),
        ([str(market_run), "data.root=x", "--out", str(tmp_path / "y.pth")],
         "apply to --format onnx only"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "keep me" and a_file.read_bytes() == b"keep me"
    # A graph that disagrees with PyTorch: nothing is written, no partial folder is left.
    import engine.onnx_export
    monkeypatch.setattr(engine.onnx_export, "TOLERANCE", -1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        export.main([str(market_run), "--format", "onnx", "--out", str(empty)])
    assert "onnxruntime differs from PyTorch" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "file.onnx", "onnx"]
    assert not any(empty.iterdir())
