"""Searching a folder of photos with a sketch and text feedback: the gallery index and the
query engine shared by ``search.py`` and ``app.py``."""
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
from model.build import token_model_from_checkpoint
from model.token import join_feedback
from utils.checkpoint import UNREADABLE_FILE_ERRORS, load_checkpoint, save_atomic
from utils.config import load_config
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
    parser.add_argument("--checkpoint", required=True, help="stage-2 checkpoint (train_token.py)")
    parser.add_argument("--gallery", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--index", help="gallery index file (default: beside the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


def default_index_path(checkpoint: Path, gallery: Path) -> Path:
    """``<run dir>/gallery_index/<gallery name>-<hash of its absolute path>.pt``."""
    digest = hashlib.sha1(str(gallery.resolve()).encode()).hexdigest()[:10]
    return checkpoint.resolve().parent / "gallery_index" / f"{gallery.name}-{digest}.pt"


class SearchEngine:
    """A stage-2 model and the embedded photos of one gallery folder.

    Queries run under a lock, so one engine can serve concurrent requests.
    """

    def __init__(self, checkpoint: str | Path, gallery: str | Path, index: str | Path | None = None,
                 device: str = "auto", batch_size: int = 64):
        self.checkpoint_path = Path(checkpoint)
        self.gallery = Path(gallery)
        if not self.gallery.is_dir():
            raise UserError(f"gallery folder not found: {self.gallery}")
        state = load_checkpoint(self.checkpoint_path, expected_stage="token")
        self.cfg = load_config(None, [f"test.batch_size={batch_size}"], base=state["config"])
        self.device = resolve_device(device)
        self.model = token_model_from_checkpoint(state, self.cfg, str(self.checkpoint_path))
        self.model = self.model.to(self.device).eval()
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
            encoded = encode_images(self.model.encode_image, [self.gallery / p for p in todo],
                                    self.transform, self.device, self.cfg.test.batch_size,
                                    desc="gallery", dtype=self.dtype).cpu()
            features.update(zip(todo, encoded))
        matrix = torch.stack([features[p] for p in paths])  # [G, E]
        if todo or len(paths) != len(stored["paths"]):
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({"format": INDEX_FORMAT, "model": self.model_key, "paths": paths,
                         "files": signatures, "features": matrix}, self.index_path)
        return paths, matrix.to(self.device)

    # ------------------------------------------------------------------------- query
    def query_text(self, feedback: Sequence[str]) -> str:
        return self.model.query_text(join_feedback(feedback))

    @torch.no_grad()
    def search(self, sketch: Image.Image, feedback: Sequence[str] = (), topk: int = 10) -> list:
        """[(gallery-relative path, cosine score)] of the best ``topk`` photos for a sketch and
        the feedback so far (each entry one round, joined after "a photo of * , and")."""
        images = self.transform(sketch.convert("RGB")).unsqueeze(0).to(self.device)
        with self.lock:
            with autocast(self.device, self.dtype):
                sketch_feats = self.model.clip.encode_image(images)
                query = self.model.encode_query(sketch_feats, [join_feedback(feedback)]).float()
            scores = (query @ self.features.t())[0]
        best = scores.topk(min(topk, len(self.paths)))
        return [(self.paths[i], float(s)) for s, i in zip(best.values.tolist(),
                                                          best.indices.tolist())]
