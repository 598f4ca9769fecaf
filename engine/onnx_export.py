"""The encoders of a model as ONNX graphs (``python -m engine.export SRC --format onnx --out
DIR``), for clients without PyTorch.

DIR receives:

    image_encoder.onnx   images float32 [batch, 3, H, W] (normalised) -> image_features
                         float32 [batch, E], raw (not normalised, as ``CLIP.encode_image``)
    text_encoder.onnx    tokens int64 [batch, length] -> text_features float32 [batch, E],
                         normalised
    query_encoder.onnx   (stage 2 only) sketch_features float32 [batch, E] (raw, from the
                         image encoder) and tokens int64 [batch, length] of "a photo of * ,
                         and ..." -> query_features float32 [batch, E], normalised
    config.json          how to prepare images and texts, ids, prompts, shapes, file names
    bpe_simple_vocab_16e6.txt.gz   the tokenizer's BPE merges (``model.tokenizer``)

``length`` is any length up to the context length that keeps every row's end-of-text token
(rows padded with 0 after it, as ``tokenize`` pads them); the graphs pool at the first
occurrence of the largest id. The graphs are traced with the TorchScript-based exporter
(``dynamo=False``, opset 17): it needs nothing beyond torch and keeps the batch and the text
length symbolic. Before the folder appears, onnxruntime runs every graph on a batch of a
size and text lengths other than those traced, against PyTorch; a difference above 1e-4
stops the export and nothing is written.
"""
from __future__ import annotations

import json
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.transforms import NORMALIZATIONS, eval_transform
from engine.onnx_runtime import CONFIG_NAME, FORMAT, FORMAT_VERSION, import_onnxruntime
from model.clip import trim_after_last_text
from model.onnx_graphs import IMAGE_IO, QUERY_IO, TEXT_IO, ImageEncoder, QueryEncoder, TextEncoder
from model.token import TokenModel
from model.tokenizer import DEFAULT_MERGES_PATH, PLACEHOLDER, default_tokenizer, tokenize
from utils.errors import UserError

OPSET = 17
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted in float32
VOCABULARY = Path(DEFAULT_MERGES_PATH).name
FILES = {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx",
         "query_encoder": "query_encoder.onnx"}
GRAPH_IO = {"image_encoder": IMAGE_IO, "text_encoder": TEXT_IO, "query_encoder": QUERY_IO}
NORMALIZED = {"image_encoder": False, "text_encoder": True, "query_encoder": True}
# Feedback of the traced batch (2 rows, short) and of the check (3 rows: none, short, and one
# longer than the context, cut to it), so that the check sees shapes the trace did not.
TRACE_FEEDBACK = ("a man", "a woman with a bag")
CHECK_FEEDBACK = ("", "a man in a red coat",
                  "an adult woman with long hair, wearing a green long-sleeved top, " * 8)


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file or a folder with anything in it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; an ONNX export writes a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; exports never overwrite, choose another "
                        "--out")


def graphs_of(model: nn.Module) -> dict:
    """{name: graph module} of a loaded model: image and text encoders, and for a stage-2
    model the query encoder."""
    graphs = {"image_encoder": ImageEncoder(model.clip), "text_encoder": TextEncoder(model.clip)}
    if isinstance(model, TokenModel):
        graphs["query_encoder"] = QueryEncoder(model)
    return {name: graph.eval() for name, graph in graphs.items()}


def graph_inputs(model: nn.Module, batch: int, feedback, seed: int) -> dict:
    """{name: input tensors} for every graph: random images, the raw features of those
    images as sketch features, and the tokens of texts (cut after the longest)."""
    clip = model.clip
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *clip.visual.image_size, generator=generator)
    texts = [(list(feedback) * batch)[row] or "a person" for row in range(batch)]
    tokens = trim_after_last_text(tokenize(texts, clip.context_length))
    inputs = {"image_encoder": (images,), "text_encoder": (tokens,)}
    if isinstance(model, TokenModel):
        with torch.no_grad():
            sketch_feats = clip.encode_image(images)
        queries = [model.query_text(text) for text in (list(feedback) * batch)[:batch]]
        inputs["query_encoder"] = (sketch_feats,
                                   trim_after_last_text(tokenize(queries, clip.context_length)))
    return inputs


def write_graph(graph: nn.Module, inputs: tuple, path: Path, io: dict) -> None:
    """Trace ``graph`` on ``inputs`` into ``path`` (batch and text length symbolic) and check
    the file with ``onnx.checker``."""
    import onnx
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's notice that a newer exporter exists, and its notes on indexing
        # (the indices here are never negative); the check below compares the numbers.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(io["inputs"]), output_names=list(io["outputs"]),
                          dynamic_axes=io["dynamic_axes"], do_constant_folding=True)
    onnx.checker.check_model(str(path))


def max_differences(folder: Path, graphs: dict, inputs: dict) -> dict:
    """{file name: max |onnxruntime - PyTorch|} of every graph on ``inputs``."""
    runtime = import_onnxruntime(for_export=True)
    differences = {}
    for name, graph in graphs.items():
        session = runtime.InferenceSession(str(folder / FILES[name]),
                                           providers=["CPUExecutionProvider"])
        feeds = {key: value.numpy() for key, value in zip(GRAPH_IO[name]["inputs"], inputs[name])}
        (onnx_out,) = session.run(None, feeds)
        with torch.no_grad():
            torch_out = graph(*inputs[name]).numpy()
        differences[FILES[name]] = float(np.abs(onnx_out - torch_out).max())
    return differences


def export_config(model: nn.Module, cfg, stage: str, source: Path, graphs: dict) -> dict:
    """config.json: what a client needs to prepare inputs and read outputs."""
    clip = model.clip
    height, width = clip.visual.image_size
    embed_dim = clip.arch.embed_dim
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    tokenizer = default_tokenizer()
    shapes = {"images": ["batch", 3, height, width], "tokens": ["batch", "length"],
              "sketch_features": ["batch", embed_dim]}
    dtypes = {"tokens": "int64"}
    io = {name: {"inputs": {key: {"dtype": dtypes.get(key, "float32"), "shape": shapes[key]}
                            for key in GRAPH_IO[name]["inputs"]},
                 "outputs": {key: {"dtype": "float32", "shape": ["batch", embed_dim],
                                   "normalized": NORMALIZED[name]}
                             for key in GRAPH_IO[name]["outputs"]}}
          for name in graphs}
    composes = isinstance(model, TokenModel)
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "stage": stage,  # token (stage 2), adapt (stage 1) or clip (CLIP weights as they are)
        "source": source.name, "opset": OPSET, "embed_dim": embed_dim,
        "files": {name: FILES[name] for name in graphs},
        "graphs": io,
        "image": {
            "size": [height, width],
            "resize": "the RGB image (8 bits) resized to size [H, W], aspect ratio not kept, "
                      "by PIL's Image.resize with this interpolation",
            "interpolation": cfg.data.test_interpolation,
            "scale": "1/255", "normalize": cfg.data.normalize,
            "mean": list(mean), "std": list(std), "layout": "[3, H, W], RGB",
        },
        "text": {
            "vocabulary": VOCABULARY,
            "tokenizer": "CLIP's byte-level BPE (model/tokenizer.py): ftfy, HTML unescaped, "
                         "whitespace collapsed, lower case; ids 0-255 bytes, 256-511 "
                         "word-final bytes, then one per merge of the vocabulary file (after "
                         "its header line, the first 48894), then start and end of text",
            "context_length": clip.context_length,
            "start_of_text_id": tokenizer.sot_token_id,
            "end_of_text_id": tokenizer.eot_token_id, "padding_id": 0,
            "placeholder": PLACEHOLDER, "placeholder_id": clip.placeholder_id,
            "prompt": model.template if composes else None,
            "sketch_prompt": model.sketch_prompt if composes else None,
        },
    }


def export_onnx(model: nn.Module, cfg, stage: str, source: Path, out: Path) -> dict:
    """Write the graphs of ``model`` (in eval mode, on the CPU, float32) with config.json
    and the vocabulary into the new folder ``out``, through a temporary folder beside it
    that becomes ``out`` once every graph matches PyTorch. Returns {file name: max
    |onnxruntime - PyTorch|}."""
    import_onnxruntime(for_export=True)
    check_out_folder(out)
    eval_transform(cfg)  # a ConfigError for a data.normalize or test_interpolation it lacks
    model = model.float().eval()
    graphs = graphs_of(model)
    traced = graph_inputs(model, 2, TRACE_FEEDBACK, seed=0)
    checked = graph_inputs(model, 3, CHECK_FEEDBACK, seed=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.{secrets.token_hex(4)}.partial"
    temporary.mkdir()  # never an existing one; the folder's mode follows the umask
    try:
        for name, graph in graphs.items():
            write_graph(graph, traced[name], temporary / FILES[name], GRAPH_IO[name])
        differences = max_differences(temporary, graphs, checked)
        failed = {name: diff for name, diff in differences.items() if not diff <= TOLERANCE}
        if failed:
            name, diff = next(iter(failed.items()))
            raise UserError(f"{name}: onnxruntime differs from PyTorch by {diff:.2e} (more than "
                            f"{TOLERANCE:g}); nothing written to {out}")
        config = export_config(model, cfg, stage, source, graphs)
        (temporary / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n",
                                             encoding="utf-8")
        shutil.copyfile(DEFAULT_MERGES_PATH, temporary / VOCABULARY)
        check_out_folder(out)  # again: something may have appeared meanwhile
        if out.is_dir():
            out.rmdir()  # empty: the export takes its place
        temporary.rename(out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return differences
