"""Search photos with a sketch, words or both, from Python: a ``Retriever`` is one model (a
checkpoint of either stage, plain CLIP weights, or an ONNX export) and one gallery of
photos. ``search.py`` and ``app.py`` are built on it.

    from engine.api import Retriever
    retriever = Retriever.load("outputs/Market_finetune")     # or Retriever.load_onnx(DIR)
    retriever.index("photos/")                                # embedded once, then reused
    retriever.search("witness.png", feedback=["a red coat", "a black backpack"], topk=5)
    retriever.search(text="a man in a red coat")              # -> [(path, score), ...]

What a model can do: a stage-2 model composes a sketch with feedback ("a photo of * , and
<round 1>, <round 2>"; a sketch alone is "a photo of *"); a stage-1 model or plain CLIP
weights (zero-shot) search by a sketch alone (the image tower) or by words alone (the text
tower); every model searches by words alone. A query it cannot run is a ``UserError``
with one line saying why.
"""
from __future__ import annotations

import copy
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image

from datasets.base import read_image
from engine.evaluation import rerank_setting
from engine.gallery import (
    ANN_KINDS,
    SAVE_EVERY,
    AnnSettings,
    IndexedGallery,
    default_index_path,
    file_signature,
    require_faiss,
)
from engine.models import TorchEncoders, checkpoint_file, load_for_inference
from engine.onnx_runtime import CONFIG_NAME, OnnxEncoders
from model.token import join_feedback
from utils.config import load_config
from utils.distributed import resolve_device
from utils.errors import UserError

BATCH_SIZE = 64  # images per forward pass while indexing (test.batch_size; KEY=VALUE wins)
# What an ONNX export is, by its config's "stage".
ONNX_KINDS = {"token": "ONNX export of a stage-2 model", "adapt": "ONNX export of a stage-1 model",
              "clip": "ONNX export of CLIP (zero-shot)"}
ONNX_KEYS = ("test.", "data.")  # the config keys KEY=VALUE may set for an ONNX export


class Retriever:
    """A model and, once ``index`` has run, the gallery it searches.

    Build one with ``Retriever.load`` (PyTorch) or ``Retriever.load_onnx`` (onnxruntime);
    both search alike. Searches run one at a time under ``lock``, so one retriever can serve
    concurrent requests.
    """

    def __init__(self, encoders, cfg, kind: str, model_key: str, model_file: Path):
        self.encoders = encoders      # TorchEncoders or OnnxEncoders
        self.cfg = cfg                # the config (search reads data.* and test.*)
        self.kind = kind              # what the model is, in words: "stage-2 checkpoint", ...
        self.model_key = model_key    # what an index's features depend on
        self.model_file = model_file  # default index folders go beside it
        self.gallery: IndexedGallery | None = None
        self.lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint: str | Path, overrides: Sequence[str] = (),
             device: str | torch.device | None = None) -> Retriever:
        """The PyTorch model in ``checkpoint``: a run folder (its ``checkpoint_best.pth``), a
        checkpoint file of either stage, an export, or plain CLIP weights (zero-shot).
        ``overrides``: config overrides as on the command line, ``["KEY=VALUE", ...]`` (e.g.
        ``model.quick_gelu=false`` for an open_clip file); ``device``: auto (None), cpu,
        cuda, cuda:N or a ``torch.device``."""
        path = checkpoint_file(Path(checkpoint))
        loaded = load_for_inference(path, [f"test.batch_size={BATCH_SIZE}",
                                           *override_list(overrides)])
        if not isinstance(device, torch.device):
            device = resolve_device(device or "auto")
        encoders = TorchEncoders(loaded.model, loaded.cfg, device)
        kind = ("stage-2 checkpoint" if encoders.composes else
                "CLIP (zero-shot)" if loaded.zero_shot else "stage-1 checkpoint")
        # What the stored features depend on: the weights (this file), how images are
        # prepared and the precision.
        cfg = loaded.cfg
        size, mtime = file_signature(path)
        model_key = (f"{path.resolve()}:{size}:{mtime}:{list(cfg.model.image_size)}:"
                     f"{cfg.data.normalize}:{cfg.data.test_interpolation}:{encoders.dtype}")
        return cls(encoders, cfg, kind, model_key, path)

    @classmethod
    def load_onnx(cls, folder: str | Path, overrides: Sequence[str] = ()) -> Retriever:
        """The encoders of an ONNX export folder (``python -m engine.export RUN --format onnx
        --out DIR``), run by onnxruntime on the CPU (``pip install onnxruntime``). The model's
        settings are the export's; ``overrides`` may set ``test.*`` and ``data.*`` keys."""
        folder = Path(folder)
        overrides = override_list(overrides)
        foreign = [item for item in overrides if not item.startswith(ONNX_KEYS)]
        if foreign:
            raise UserError(f"{foreign[0]}: an ONNX export keeps its model settings in "
                            f"{folder / CONFIG_NAME}; KEY=VALUE may set test.* and data.* keys")
        cfg = load_config(None, [f"test.batch_size={BATCH_SIZE}", *overrides])
        encoders = OnnxEncoders(folder, batch_size=cfg.test.batch_size)
        config = encoders.config
        # Its own key: an index made by PyTorch is never read as this model's, nor the
        # other way round.
        image_encoder = folder / config["files"]["image_encoder"]
        size, mtime = file_signature(image_encoder)
        image = config["image"]
        model_key = (f"onnx:{image_encoder.resolve()}:{size}:{mtime}:{list(image['size'])}:"
                     f"{image['normalize']}:{image['interpolation']}")
        return cls(encoders, cfg, ONNX_KINDS[config["stage"]], model_key, folder / CONFIG_NAME)

    @property
    def composes(self) -> bool:
        """Whether the model composes a sketch with text (a stage-2 model)."""
        return self.encoders.composes

    @property
    def paths(self) -> list:
        """The indexed photos, as results name them (empty before ``index``)."""
        return self.gallery.paths if self.gallery is not None else []

    # ------------------------------------------------------------------------ gallery
    def index(self, gallery: str | Path | Sequence, index: str | Path | None = None, *,
              ann: str | AnnSettings | None = None, rerank: bool = False,
              save_every: int = SAVE_EVERY, num_workers: int | None = 0) -> Retriever:
        """Embed the photos to search, and return this retriever.

        ``gallery``: a folder (searched recursively; results name photos relative to it),
        whose features are kept in an index folder, ``index`` or by default
        ``gallery_index/<name>-<hash>/`` beside the model, and reused while the model and
        the photos are unchanged (``engine.gallery.build_index``: new and changed photos
        are embedded alone, ``save_every`` at a time; under torchrun each process embeds a
        share); or a sequence of image paths, embedded now and held in memory (results name
        them as given). ``ann``: "ivf", "hnsw" or an ``AnnSettings``, FAISS search
        (``pip install faiss-cpu``); ``rerank``: k-reciprocal re-ranking with
        ``test.rerank_k1``, ``test.rerank_k2`` and ``test.rerank_lambda``; ``num_workers``:
        data-loading processes while embedding (None: ``data.num_workers``).
        """
        if isinstance(ann, str):
            if ann not in ANN_KINDS:
                raise UserError(f"ann={ann!r} is not one of {', '.join(ANN_KINDS)}")
            ann = AnnSettings(ann)
        if ann is not None:
            if rerank:
                raise UserError("re-ranking ranks the whole gallery exactly; leave out ann")
            require_faiss()  # before any embedding
        options = {"ann": ann, "rerank": self._rerank_values() if rerank else None}
        data = self.cfg.data
        workers = data.num_workers if num_workers is None else num_workers

        def embed(paths: list) -> torch.Tensor:  # [n, E], normalised
            return self.encoders.encode_images(paths, num_workers=workers,
                                               load_truncated_images=data.load_truncated_images)

        if isinstance(gallery, (str, os.PathLike)):
            folder = Path(gallery)
            if not folder.is_dir():
                raise UserError(f"gallery folder not found: {folder}")
            index_path = Path(index) if index else default_index_path(self.model_file, folder)
            # The old default index was a file beside the new default folder.
            legacy = None if index else index_path.with_name(index_path.name + ".pt")
            self.gallery = IndexedGallery.from_folder(folder, index_path, self.model_key,
                                                      embed, save_every, legacy, **options)
            return self
        if index is not None:
            raise UserError("index= names the index folder of a gallery folder; a list of "
                            "photos is held in memory")
        paths = [Path(path) for path in gallery]
        if not paths:
            raise UserError("no photos to index: the list is empty")
        missing = next((path for path in paths if not path.is_file()), None)
        if missing is not None:
            raise UserError(f"image not found: {missing}")
        self.gallery = IndexedGallery.from_files(paths, embed, **options)
        return self

    def _rerank_values(self) -> tuple:
        """(k1, k2, lambda) of ``test.rerank_*``, checked as ``test.py`` checks them."""
        cfg = copy.deepcopy(self.cfg)
        cfg.test.rerank = True
        setting = rerank_setting(cfg)
        return setting["k1"], setting["k2"], setting["lambda"]

    # -------------------------------------------------------------------------- query
    @torch.no_grad()
    def search(self, sketch: str | Path | Image.Image | None = None,
               feedback: str | Sequence[str] = (), *, text: str | None = None,
               topk: int = 10) -> list:
        """[(path, cosine score)] of the ``topk`` best photos of the gallery, best first.

        ``sketch``: an image file or a PIL image. ``feedback``: one round of text or a
        sequence of rounds, joined by commas after the sketch's word ("a photo of * , and
        <round 1>, <round 2>", stage 2); without a sketch its words alone are searched.
        ``text``: words alone (text -> image), with neither a sketch nor feedback. With
        re-ranking the order is the re-ranked one and the scores stay cosine similarities.
        """
        rounds = as_rounds(feedback)
        self.check_query(sketch is not None, rounds, text)
        if self.gallery is None:
            raise UserError("nothing to search yet: index a gallery folder or a list of photos "
                            "first (Retriever.index)")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise UserError(f"topk must be a whole number of at least 1, not {topk!r}")
        image = None if sketch is None else self.read_sketch(sketch)
        words = join_feedback(rounds) if text is None else text
        with self.lock:
            query = self._encode_query(image, words)  # [1, E]
            scores, rows = self.gallery.rank(query, topk)
        return [(self.gallery.paths[row], float(score))
                for score, row in zip(scores[0].tolist(), rows[0].tolist())]

    def check_query(self, sketch: bool, feedback: str | Sequence[str] = (),
                    text: str | None = None) -> None:
        """A ``UserError`` for a query this model cannot run (``sketch``: whether one is
        given)."""
        words = join_feedback(as_rounds(feedback))
        if text is not None:
            if not isinstance(text, str):
                raise UserError(f"text must be a string, not {type(text).__name__}")
            if sketch or words:
                raise UserError("text= searches by words alone; give the words that go with "
                                "a sketch as feedback=")
            words = text.strip()
        if not sketch and not words:
            raise UserError("give a sketch, words (feedback= or text=), or a sketch with "
                            "feedback")
        if sketch and words and not self.composes:
            raise UserError(f"this {self.kind} searches by a sketch or by text, not both; "
                            "composing them needs a stage-2 checkpoint (train_token.py)")

    def query_text(self, feedback: str | Sequence[str], sketch: bool = True) -> str:
        """The text the query is encoded from: the composed prompt (stage 2 with a sketch),
        the feedback alone (no sketch), or "" (a sketch alone, image tower)."""
        text = join_feedback(as_rounds(feedback))
        if sketch and self.composes:
            return self.encoders.query_text(text)
        return "" if sketch else text

    def read_sketch(self, sketch: str | Path | Image.Image) -> Image.Image:
        """The sketch as an RGB image: read from its file (``data.load_truncated_images``
        applies) or converted."""
        if isinstance(sketch, Image.Image):
            return sketch.convert("RGB")
        if not isinstance(sketch, (str, os.PathLike)):
            raise UserError(f"sketch must be an image file or a PIL image, not "
                            f"{type(sketch).__name__}")
        return read_image(Path(sketch), self.cfg.data.load_truncated_images)

    def _encode_query(self, image: Image.Image | None, words: str) -> torch.Tensor:
        """Normalised query features [1, E]: the words (text tower), the sketch (image
        tower), or both composed (stage 2; a sketch alone is "a photo of *")."""
        encoders = self.encoders
        if image is None:
            return encoders.encode_text([words])
        if not self.composes:
            return encoders.encode_images([image])
        return encoders.encode_query(encoders.encode_images([image], normalize=False), [words])


def override_list(overrides: Sequence[str]) -> list:
    """``overrides``, a sequence of "KEY=VALUE" strings, as a list (a single string or a
    mapping is refused, not read letter by letter or key by key)."""
    if isinstance(overrides, (str, Mapping)):
        raise UserError(f"overrides must be a list of \"KEY=VALUE\" strings, such as "
                        f"[\"model.image_size=[384,128]\"], not {overrides!r}")
    return list(overrides)


def as_rounds(feedback: str | Sequence[str]) -> list:
    """Feedback as a list of rounds: one string is one round."""
    return [feedback] if isinstance(feedback, str) else list(feedback)


# ------------------------------------------------------------------- the command line
def add_retriever_arguments(parser) -> None:
    """The command-line options of a ``Retriever`` and its gallery (search.py, app.py)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="a checkpoint of either stage (stage 2 composes sketch and text) or "
                        "its run folder, an export, or plain CLIP weights")
    source.add_argument("--onnx", metavar="DIR",
                        help="an ONNX export folder (python -m engine.export RUN --format onnx "
                        "--out DIR), run by onnxruntime on the CPU instead of PyTorch")
    parser.add_argument("--gallery", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--index", help="gallery index folder (default: beside the checkpoint, "
                        "or inside the --onnx folder); an index file of the earlier format "
                        "there is converted")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N (a PyTorch model)")
    parser.add_argument("--ann", choices=ANN_KINDS,
                        help="approximate search with FAISS (pip install faiss-cpu): an IVF or "
                        "an HNSW index, built beside the features once (default: exact search)")
    parser.add_argument("--ann-nprobe", type=int, default=AnnSettings.nprobe, metavar="N",
                        help=f"--ann ivf: lists searched per query (default {AnnSettings.nprobe})")
    parser.add_argument("--ann-ef", type=int, default=AnnSettings.ef_search, metavar="N",
                        help="--ann hnsw: candidates kept while searching (efSearch, default "
                        f"{AnnSettings.ef_search})")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking (test.rerank_k1, test.rerank_k2, "
                        "test.rerank_lambda) with the gallery's neighbour lists, computed once "
                        "and stored in the index (a G x G search: galleries of up to ~100k)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.quick_gelu=false for an open_clip "
                        "file (with --onnx: test.* and data.* keys)")


def check_retriever_arguments(parser, args) -> None:
    """``parser.error`` for option values no retriever accepts."""
    if args.ann_nprobe < 1 or args.ann_ef < 1:
        parser.error("--ann-nprobe and --ann-ef must be at least 1")
    if args.rerank and args.ann:
        parser.error("--rerank ranks the whole gallery exactly; leave out --ann")


def retriever_from_args(args, device: torch.device | None = None) -> Retriever:
    """The model the shared options name (``--checkpoint`` or ``--onnx``, ``KEY=VALUE``);
    ``device``: one chosen by the caller (e.g. under torchrun) instead of ``--device``."""
    if args.onnx:
        return Retriever.load_onnx(args.onnx, args.overrides)
    return Retriever.load(args.checkpoint, args.overrides,
                          args.device if device is None else device)


def index_from_args(retriever: Retriever, args, **options) -> Retriever:
    """``retriever.index`` of ``--gallery`` with the shared options (``--index``, ``--ann``,
    ``--rerank``); ``options``: more keyword arguments of ``Retriever.index``."""
    ann = AnnSettings(args.ann, nprobe=args.ann_nprobe, ef_search=args.ann_ef) \
        if args.ann else None
    return retriever.index(args.gallery, args.index, ann=ann, rerank=args.rerank, **options)
