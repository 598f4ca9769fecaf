"""Datasets by name (``data.dataset``): training samples and evaluation sets."""
from __future__ import annotations

from pathlib import Path

from utils.errors import ConfigError

PEDES = ("cuhk-pedes", "icfg-pedes", "rstpreid")
DATASET_NAMES = ("tri-pedes",) + PEDES + ("mask1k", "pku-sketch")
STAGE1_DATASETS = ("tri-pedes",) + PEDES


def check_name(name: str, allowed=DATASET_NAMES) -> str:
    if name not in allowed:
        raise ConfigError(f"data.dataset={name!r} is not one of: {', '.join(allowed)}")
    return name


def pedes_members(name: str) -> list:
    """The PEDES datasets that ``name`` stands for (Tri-PEDES is all three)."""
    return list(PEDES) if name == "tri-pedes" else [name]


def train_samples(cfg, trial=None) -> list:
    """``TrainSample`` list of the training split of ``data.dataset``."""
    name, root = check_name(cfg.data.dataset), Path(cfg.data.root)
    if name in STAGE1_DATASETS:
        from datasets import pedes
        return pedes.train_samples(root, pedes_members(name), cfg.data.sketch_pairing,
                                   cfg.data.pre_caption, cfg.data.empty_missing_backtrans,
                                   cfg.data.skip_missing_sketches)
    if name == "mask1k":
        from datasets import market_sketch
        return market_sketch.train_samples(root)
    from datasets import pku_sketch
    return pku_sketch.train_samples(root, trial, cfg.seed, cfg.data.pku_reference_indexing)


def eval_sets(cfg, split: str, trial=None) -> list:
    """``EvalSet`` per test set of ``data.dataset`` (Tri-PEDES: one per member)."""
    name, root = check_name(cfg.data.dataset), Path(cfg.data.root)
    if name in STAGE1_DATASETS:
        from datasets import pedes
        return [pedes.eval_set(root, member, split, cfg.data.pre_caption, cfg.test.sketch_queries,
                               cfg.data.skip_missing_sketches)
                for member in pedes_members(name)]
    if name == "mask1k":
        from datasets import market_sketch
        return [market_sketch.eval_set(root, split)]
    from datasets import pku_sketch
    return [pku_sketch.eval_set(root, trial, cfg.seed, split)]


def has_split(cfg, split: str) -> bool:
    """Whether every test set of ``data.dataset`` also has ``split`` (e.g. val)."""
    name, root = check_name(cfg.data.dataset), Path(cfg.data.root)
    if split == "test":
        return True
    if name in STAGE1_DATASETS:
        from datasets import pedes
        return all(pedes.has_split(root, member, split) for member in pedes_members(name))
    return False
