"""The encoders of an ONNX export (``python -m engine.export ... --format onnx``), run by
onnxruntime with the project's own tokenizer and evaluation transform.

    encoders = OnnxEncoders("market_onnx")
    gallery = encoders.encode_images(photo_paths)                 # [N, E], normalised
    sketch = encoders.encode_images([sketch_path], normalize=False)   # [1, E], raw
    query = encoders.encode_query(sketch, ["a man in a red coat"])    # [1, E], normalised
    scores = query @ gallery.t()

Features are float32 torch tensors on the CPU, as ``engine.evaluation`` makes them from the
PyTorch model, so the same ranking and metrics code takes either. onnxruntime is optional:
only this module and the export import it.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datasets.transforms import eval_transform
from engine.evaluation import encode_images
from model.clip import trim_after_last_text
from model.token import compose_query
from model.tokenizer import tokenize
from utils.config import load_config
from utils.errors import UserError

CONFIG_NAME = "config.json"
FORMAT = "interactreid-onnx"  # config.json's "format"
FORMAT_VERSION = 1
EXPORT_NEEDS = "--format onnx needs onnx and onnxruntime (pip install onnx onnxruntime)"
RUNTIME_NEEDS = "running ONNX encoders needs onnxruntime (pip install onnxruntime)"


def import_onnxruntime(for_export: bool = False):
    """The onnxruntime module (and, ``for_export``, a check that onnx is there too); a
    ``UserError`` with the pip command when either is missing."""
    try:
        if for_export:
            import onnx  # noqa: F401  (the export checks its graphs with it)
        import onnxruntime
    except ImportError:
        raise UserError(EXPORT_NEEDS if for_export else RUNTIME_NEEDS) from None
    return onnxruntime


def read_export_config(folder: Path) -> dict:
    """``config.json`` of an ONNX export folder, checked: its format, and every file it
    names present."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{folder} holds no {CONFIG_NAME}: not an ONNX export (write one "
                        "with python -m engine.export RUN --format onnx --out DIR)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path} is not the config of an ONNX export (\"format\": "
                        f"\"{FORMAT}\" expected)")
    if config.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} has version {config.get('version')!r}; this code reads "
                        f"version {FORMAT_VERSION}")
    for name in [*config["files"].values(), config["text"]["vocabulary"]]:
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} is missing (named by {path})")
    return config


class OnnxEncoders:
    """The image, text and (stage 2) query encoders of an ONNX export folder.

    ``providers``: onnxruntime's execution providers, in order of preference (the CPU's by
    default). Images are prepared by the evaluation transform the export's config
    describes (``datasets.transforms.eval_transform``), texts by ``model.tokenizer``.
    """

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 batch_size: int = 64):
        runtime = import_onnxruntime()
        self.folder = Path(folder)
        self.config = read_export_config(self.folder)
        self.batch_size = batch_size
        self.sessions = {name: runtime.InferenceSession(str(self.folder / file),
                                                        providers=list(providers))
                         for name, file in self.config["files"].items()}
        image = self.config["image"]
        cfg = load_config(None, [f"model.image_size={list(image['size'])}",
                                 f"data.normalize={image['normalize']}",
                                 f"data.test_interpolation={image['interpolation']}"])
        self.transform = eval_transform(cfg)
        self.context_length = int(self.config["text"]["context_length"])

    @property
    def composes(self) -> bool:
        """Whether the export composes a sketch with text (a stage-2 model)."""
        return "query_encoder" in self.sessions

    def _run(self, name: str, **inputs: np.ndarray) -> torch.Tensor:
        (out,) = self.sessions[name].run(None, inputs)
        return torch.from_numpy(out)

    def _in_batches(self, count: int, run: Callable[[slice], torch.Tensor]) -> torch.Tensor:
        if count == 0:
            return torch.zeros(0, int(self.config["embed_dim"]))
        return torch.cat([run(slice(start, start + self.batch_size))
                          for start in range(0, count, self.batch_size)])

    # ----------------------------------------------------------------------- images
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """One batch of prepared images [B, 3, H, W] (normalised) -> raw features [B, E]."""
        pixels = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return self._run("image_encoder", images=pixels)

    def encode_images(self, images, normalize: bool = True, num_workers: int = 0,
                      load_truncated_images: bool = True) -> torch.Tensor:
        """Features [N, E] of ``images``: image files (paths, read and prepared as
        evaluation reads them), PIL images or uint8 tensors [C, H, W] (prepared by the
        transform), or a float tensor [N, 3, H, W] already prepared. ``normalize``: unit
        length, for ranking photos or a sketch alone; raw for ``encode_query``."""
        if len(images) == 0:
            feats = self._in_batches(0, None)
        elif isinstance(images, torch.Tensor) and images.is_floating_point():
            feats = self._in_batches(len(images), lambda rows: self.image_features(images[rows]))
        elif all(isinstance(image, (str, Path)) for image in images):
            feats = encode_images(self.image_features, [Path(image) for image in images],
                                  self.transform, torch.device("cpu"), self.batch_size,
                                  num_workers=num_workers, desc="images (onnx)",
                                  load_truncated_images=load_truncated_images)
        else:
            prepared = list(images)
            feats = self._in_batches(len(prepared), lambda rows: self.image_features(
                torch.stack([self.transform(image) for image in prepared[rows]])))
        return F.normalize(feats, dim=-1) if normalize else feats

    # ------------------------------------------------------------------------ texts
    def tokens(self, texts: Sequence[str]) -> np.ndarray:
        """int64 tokens [B, L'] of ``texts``, cut after the longest text's end-of-text token
        (the features do not change; the graphs take any length up to the context)."""
        return trim_after_last_text(tokenize(list(texts), self.context_length)).numpy()

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised features [B, E] of ``texts`` (the text tower alone)."""
        texts = list(texts)
        return self._in_batches(len(texts), lambda rows: self._run(
            "text_encoder", tokens=self.tokens(texts[rows])))

    def query_text(self, feedback: str) -> str:
        """The composed query's text: the export's prompt with ``feedback`` in it, or its
        sketch-only prompt without feedback (``TokenModel.query_text``)."""
        text = self.config["text"]
        return compose_query(text["prompt"], feedback, text["sketch_prompt"])

    def encode_query(self, sketch_feats: torch.Tensor, feedback: Sequence[str]) -> torch.Tensor:
        """Normalised composed-query features [B, E] from raw sketch features [B, E]
        (``encode_images(..., normalize=False)``) and one feedback text per sketch (""
        for the sketch alone, "a photo of *"), as ``TokenModel.encode_query``."""
        if not self.composes:
            raise UserError(f"{self.folder} is an export of a {self.config['stage']} model, "
                            "which has no query encoder; composing a sketch with text needs "
                            "an export of a stage-2 checkpoint")
        texts = [self.query_text(text) for text in feedback]
        if len(texts) != len(sketch_feats):
            raise ValueError(f"{len(sketch_feats)} sketch features but {len(texts)} feedback "
                             "texts")
        sketch = np.ascontiguousarray(sketch_feats.detach().cpu().numpy(), dtype=np.float32)
        return self._in_batches(len(texts), lambda rows: self._run(
            "query_encoder", sketch_features=sketch[rows], tokens=self.tokens(texts[rows])))
