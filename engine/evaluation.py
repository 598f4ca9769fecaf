"""Feature extraction and retrieval evaluation shared by both stages."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.base import ImageListDataset
from model.tokenizer import tokenize
from utils.distributed import is_main
from utils.errors import ConfigError
from utils.metrics import rank_metrics
from utils.precision import autocast
from utils.rerank import check_parameters, k_reciprocal_rerank

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


@torch.no_grad()
def encode_images(encode, paths: Sequence, transform: Callable, device: torch.device,
                  batch_size: int = 128, num_workers: int = 0, desc: str = "images",
                  dtype=None, load_truncated_images: bool = True) -> torch.Tensor:
    """Features [N, E] (float32, on ``device``) of the images at ``paths``; ``encode`` maps a
    batch of images to features (e.g. ``model.encode_image``, normalised), ``transform``
    prepares one image (``datasets.transforms.eval_transform``); ``load_truncated_images``
    (``data.load_truncated_images``): see ``datasets.base.read_image``."""
    loader = DataLoader(ImageListDataset(paths, transform, load_truncated_images),
                        batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    feats = []
    for images, _ in tqdm(loader, desc=desc, leave=False, disable=not is_main()):
        with autocast(device, dtype):
            feats.append(encode(images.to(device, non_blocking=True)).float())
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], context_length: int, device: torch.device,
                 batch_size: int = 128, dtype=None) -> torch.Tensor:
    """Normalised features [N, E] of ``texts``."""
    feats = []
    for start in tqdm(range(0, len(texts), batch_size), desc="texts", leave=False,
                      disable=not is_main()):
        tokens = tokenize(list(texts[start:start + batch_size]), context_length).to(device)
        with autocast(device, dtype):
            feats.append(model.encode_text(tokens).float())
    return torch.cat(feats)


# The ``test.rerank_*`` key of each argument of ``utils.rerank.check_parameters``.
RERANK_KEYS = {"k1": "test.rerank_k1", "k2": "test.rerank_k2", "lambda_value": "test.rerank_lambda"}


def rerank_setting(cfg) -> dict | None:
    """``test.rerank``'s setting for ``retrieval``: None when off, else ``{"k1", "k2",
    "lambda"}`` (as ``results.json`` records it), checked: a bad value is a ConfigError
    naming its key."""
    if not isinstance(cfg.test.rerank, bool):
        raise ConfigError(f"test.rerank={cfg.test.rerank!r} must be true or false")
    if not cfg.test.rerank:
        return None
    setting = {"k1": cfg.test.rerank_k1, "k2": cfg.test.rerank_k2,
               "lambda": cfg.test.rerank_lambda}
    try:
        check_parameters(setting["k1"], setting["k2"], setting["lambda"])
    except ValueError as error:  # its message names the arguments: name the keys instead
        message = re.sub(r"\b(k1|k2|lambda_value)\b",
                         lambda found: RERANK_KEYS[found.group(1)], str(error))
        raise ConfigError(f"{message} (test.rerank=true)") from None
    return setting


def similarity_scores(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                      rerank: dict | None = None) -> torch.Tensor:
    """Scores [Q, G] (float32, higher = more similar) of normalised query features [Q, E]
    against gallery features [G, E]: cosine similarity, or with ``rerank`` (see
    ``rerank_setting``) minus the k-reciprocal re-ranked distance of
    ``utils.rerank.k_reciprocal_rerank``, whose graph holds all Q queries and G photos."""
    if rerank is None:
        return query_feats @ gallery_feats.t()
    # Renormalised in float32: features that went through float16 keep a norm of 1 only
    # to about 1e-3.
    distances = k_reciprocal_rerank(F.normalize(query_feats.float(), dim=1),
                                    F.normalize(gallery_feats.float(), dim=1),
                                    rerank["k1"], rerank["k2"], rerank["lambda"])
    return distances.neg_()


def retrieval(query_feats: torch.Tensor, gallery_feats: torch.Tensor, query_ids, gallery_ids,
              query_cams=None, gallery_cams=None, rank_denominator: str = "valid",
              rerank: dict | None = None) -> dict:
    """Ranking of a gallery for each query by ``similarity_scores`` (cosine, or re-ranked
    with ``rerank``) -> R1/R5/R10/mAP/mINP (%). ``rank_denominator`` and the cameras: see
    ``utils.metrics.rank_metrics`` (a same-person, same-camera photo is left out after
    re-ranking, as the Market-1501 evaluators do)."""
    similarity = similarity_scores(query_feats, gallery_feats, rerank)  # [Q, G]

    def as_tensor(values):
        return (None if values is None
                else torch.as_tensor(values, device=similarity.device))
    return rank_metrics(similarity, as_tensor(query_ids), as_tensor(gallery_ids),
                        as_tensor(query_cams), as_tensor(gallery_cams),
                        rank_denominator=rank_denominator)


def format_table(rows: dict, title: str = "") -> str:
    """{"row name": {"R1": .., ...}} -> an aligned text table."""
    name_width = max([len(name) for name in rows] + [len(title), 4])
    header = f"{title:<{name_width}}" + "".join(f"{metric:>8}" for metric in METRICS)
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        lines.append(f"{name:<{name_width}}" + "".join(f"{metrics[m]:>8.2f}" for m in METRICS))
    return "\n".join(lines)


def results_rows(results: dict) -> dict:
    """Flatten ``{"tasks": ..}`` or ``{"datasets": {name: {"tasks": ..}}}`` to table rows."""
    if "datasets" in results:
        return {f"{name} {task}": metrics for name, block in results["datasets"].items()
                for task, metrics in block["tasks"].items()}
    return dict(results["tasks"])
