"""Feature extraction and retrieval evaluation shared by both stages."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.base import ImageListDataset
from model.tokenizer import tokenize
from utils.distributed import is_main
from utils.metrics import rank_metrics
from utils.precision import autocast

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


def retrieval(query_feats: torch.Tensor, gallery_feats: torch.Tensor, query_ids, gallery_ids,
              query_cams=None, gallery_cams=None, rank_denominator: str = "valid") -> dict:
    """Cosine-similarity ranking of a gallery for each query -> R1/R5/R10/mAP/mINP (%).
    ``rank_denominator``: see ``utils.metrics.rank_metrics``."""
    similarity = query_feats @ gallery_feats.t()  # [Q, G]
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
