"""Searching a folder of photos with a sketch, text, or both: the gallery index and the query
engine shared by ``search.py`` and ``app.py``.

What a model can do: a stage-2 checkpoint composes a sketch with text ("a photo of * , and
<text>"; a sketch alone is "a photo of *") and searches by text alone; a stage-1 checkpoint
or plain CLIP weights (zero-shot) search by a sketch alone (the image tower) or by text
alone (the text tower).
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from datasets.base import IMAGE_SUFFIXES
from datasets.transforms import eval_transform
from engine.evaluation import encode_images
from engine.models import load_for_inference
from model.token import TokenModel, join_feedback
from model.tokenizer import tokenize
from utils.checkpoint import UNREADABLE_FILE_ERRORS, save_atomic
from utils.distributed import resolve_device
from utils.errors import UserError
from utils.precision import autocast, inference_dtype

log = logging.getLogger(__name__)
INDEX_FORMAT = 1


def list_images(folder: Path) -> list:
    """Image files under ``folder`` (recursively), as sorted relative POSIX paths."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def file_signature(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def add_engine_arguments(parser) -> None:
    """The command-line options of a ``SearchEngine`` (search.py and app.py share them)."""
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of either stage (stage 2 composes sketch and text), "
                        "an export, or plain CLIP weights")
    parser.add_argument("--gallery", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--index", help="gallery index file (default: beside the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.quick_gelu=false for an open_clip file")


def default_index_path(checkpoint: Path, gallery: Path) -> Path:
    """``<run dir>/gallery_index/<gallery name>-<hash of its absolute path>.pt``."""
    digest = hashlib.sha1(str(gallery.resolve()).encode()).hexdigest()[:10]
    return checkpoint.resolve().parent / "gallery_index" / f"{gallery.name}-{digest}.pt"


class SearchEngine:
    """A model and the embedded photos of one gallery folder.

    Queries run under a lock, so one engine can serve concurrent requests.
    """

    def __init__(self, checkpoint: str | Path, gallery: str | Path, index: str | Path | None = None,
                 device: str = "auto", batch_size: int = 64, overrides=()):
        self.checkpoint_path = Path(checkpoint)
        self.gallery = Path(gallery)
        if not self.gallery.is_dir():
            raise UserError(f"gallery folder not found: {self.gallery}")
        loaded = load_for_inference(self.checkpoint_path,
                                    [f"test.batch_size={batch_size}", *overrides])
        self.cfg = loaded.cfg
        self.device = resolve_device(device)
        self.model = loaded.model.to(self.device).eval()
        # A stage-2 model composes a sketch with text; the others search by one or the other.
        self.composes = isinstance(self.model, TokenModel)
        self.kind = ("stage-2 checkpoint" if self.composes else
                     "CLIP (zero-shot)" if loaded.zero_shot else "stage-1 checkpoint")
        self.transform = eval_transform(self.cfg)
        self.dtype = inference_dtype(self.device, self.cfg)
        # What the stored features depend on: the weights (this file), how images are
        # prepared and the precision.
        signature = file_signature(self.checkpoint_path)
        self.model_key = (f"{self.checkpoint_path.resolve()}:{signature[0]}:{signature[1]}:"
                          f"{list(self.cfg.model.image_size)}:{self.cfg.data.normalize}:"
                          f"{self.cfg.data.test_interpolation}:{self.dtype}")
        self.index_path = Path(index) if index else default_index_path(self.checkpoint_path,
                                                                       self.gallery)
        self.paths, self.features = self._load_or_build_index()
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ gallery index
    def _read_index(self) -> dict | None:
        if not self.index_path.is_file():
            return None
        try:
            stored = torch.load(self.index_path, map_location="cpu", weights_only=True)
        except UNREADABLE_FILE_ERRORS:
            log.warning("gallery index %s is unreadable; rebuilding it", self.index_path)
            return None
        if not isinstance(stored, dict) or stored.get("format") != INDEX_FORMAT \
                or stored.get("model") != self.model_key:
            log.info("gallery index %s was made with another model; rebuilding it",
                     self.index_path)
            return None
        return stored

    def _load_or_build_index(self) -> tuple:
        """Reuse stored features of unchanged files; embed new and changed ones only."""
        paths = list_images(self.gallery)
        if not paths:
            raise UserError(f"the gallery {self.gallery} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        signatures = {path: file_signature(self.gallery / path) for path in paths}
        stored = self._read_index() or {"files": {}, "paths": [], "features": None}
        position = {path: row for row, path in enumerate(stored["paths"])}
        reusable = [p for p in paths if p in position and stored["files"].get(p) == signatures[p]]
        todo = [p for p in paths if p not in set(reusable)]
        features = {}
        if reusable:
            rows = torch.as_tensor([position[p] for p in reusable])
            features.update(zip(reusable, stored["features"][rows]))
        if todo:
            log.info("embedding %d of %d gallery photos (%d reused from %s)", len(todo),
                     len(paths), len(reusable), self.index_path)
            encoded = encode_images(
                self.model.encode_image, [self.gallery / p for p in todo], self.transform,
                self.device, self.cfg.test.batch_size, desc="gallery", dtype=self.dtype,
                load_truncated_images=self.cfg.data.load_truncated_images).cpu()
            features.update(zip(todo, encoded))
        matrix = torch.stack([features[p] for p in paths])  # [G, E]
        if todo or len(paths) != len(stored["paths"]):
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({"format": INDEX_FORMAT, "model": self.model_key, "paths": paths,
                         "files": signatures, "features": matrix}, self.index_path)
        return paths, matrix.to(self.device)

    # ------------------------------------------------------------------------- query
    def query_text(self, feedback: Sequence[str], sketch: bool = True) -> str:
        """The text the query is encoded from: the composed prompt (stage 2 with a sketch),
        the feedback alone (no sketch), or "" (a sketch alone, image tower)."""
        text = join_feedback(feedback)
        if sketch and self.composes:
            return self.model.query_text(text)
        return "" if sketch else text

    def check_query(self, sketch: bool, feedback: Sequence[str]) -> None:
        """A ``UserError`` for a query this model cannot run."""
        text = join_feedback(feedback)
        if not sketch and not text:
            raise UserError("give a sketch, text feedback, or both")
        if sketch and text and not self.composes:
            raise UserError(f"this {self.kind} searches by a sketch or by text, not both; "
                            "composing them needs a stage-2 checkpoint (train_token.py)")

    @torch.no_grad()
    def search(self, sketch: Image.Image | None = None, feedback: Sequence[str] = (),
               topk: int = 10) -> list:
        """[(gallery-relative path, cosine score)] of the best ``topk`` photos for a sketch,
        the feedback so far (each entry one round, joined by commas), or both (stage 2:
        "a photo of * , and <feedback>")."""
        self.check_query(sketch is not None, feedback)
        text = join_feedback(feedback)
        images = None if sketch is None else \
            self.transform(sketch.convert("RGB")).unsqueeze(0).to(self.device)
        with self.lock:
            with autocast(self.device, self.dtype):
                if images is not None and self.composes:
                    query = self.model.encode_query(self.model.clip.encode_image(images), [text])
                elif images is not None:
                    query = self.model.encode_image(images)
                else:
                    tokens = tokenize([text], self.model.clip.context_length).to(self.device)
                    query = self.model.encode_text(tokens)
            scores = (query.float() @ self.features.t())[0]
        best = scores.topk(min(topk, len(self.paths)))
        return [(self.paths[i], float(s)) for s, i in zip(best.values.tolist(),
                                                          best.indices.tolist())]
