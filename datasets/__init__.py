"""Datasets by name (``data.dataset``): the one registry of what can be trained and tested.

Each name maps to a loader module (``pedes``, ``market_sketch``, ``pku_sketch``,
``manifest``) and the datasets it stands for (Tri-PEDES is the union of three). ``manifest``
is your own data: a ``.jsonl`` or ``.csv`` file named by ``data.manifest``, a row per photo
(``datasets.manifest``). Every loader offers the same
interface, which is all the rest of the project uses:

    config_train_samples(cfg, members, trial)        -> [TrainSample]
    config_eval_sets(cfg, members, split, trial)     -> [EvalSet]
    config_has_split(cfg, members, split)            -> bool
    scan(report, cfg, members)                       counts and problems for datasets.check

A new dataset is a loader module with these four functions plus one entry below (and, to
test without real data, a layout in ``datasets.synthetic``).
"""
from __future__ import annotations

import dataclasses
import importlib

from utils.errors import ConfigError

PEDES = ("cuhk-pedes", "icfg-pedes", "rstpreid")


@dataclasses.dataclass(frozen=True)
class Entry:
    loader: str         # module of this package
    members: tuple      # the datasets the name stands for
    stages: tuple       # stages that may train and test on it: "adapt", "token"


REGISTRY = {
    "tri-pedes": Entry("pedes", PEDES, ("adapt", "token")),
    **{name: Entry("pedes", (name,), ("adapt", "token")) for name in PEDES},
    "mask1k": Entry("market_sketch", ("mask1k",), ("token",)),
    "pku-sketch": Entry("pku_sketch", ("pku-sketch",), ("token",)),
    "manifest": Entry("manifest", ("manifest",), ("adapt", "token")),
}
DATASET_NAMES = tuple(REGISTRY)


def names_for(stage: str) -> tuple:
    """The dataset names a stage accepts."""
    return tuple(name for name, entry in REGISTRY.items() if stage in entry.stages)


def check_name(name: str, allowed=DATASET_NAMES) -> str:
    if name not in allowed:
        raise ConfigError(f"data.dataset={name!r} is not one of: {', '.join(allowed)}")
    return name


def members(name: str) -> list:
    """The datasets that ``name`` stands for (Tri-PEDES: its three test sets)."""
    return list(REGISTRY[check_name(name)].members)


def loader(name: str):
    """The loader module of dataset ``name``."""
    return importlib.import_module(f"datasets.{REGISTRY[check_name(name)].loader}")


def source(cfg) -> str:
    """Where ``cfg``'s data come from, for messages: ``data.dataset=NAME`` or, for your own
    data, ``data.manifest=FILE``."""
    if cfg.data.dataset == "manifest":
        return f"data.manifest={cfg.data.get('manifest')}"
    return f"data.dataset={cfg.data.dataset}"


def train_samples(cfg, trial=None) -> list:
    """``TrainSample`` list of the training split of ``data.dataset``."""
    name = cfg.data.dataset
    return loader(name).config_train_samples(cfg, members(name), trial)


def eval_sets(cfg, split: str, trial=None) -> list:
    """``EvalSet`` per test set of ``data.dataset`` (Tri-PEDES: one per member)."""
    name = cfg.data.dataset
    return loader(name).config_eval_sets(cfg, members(name), split, trial)


def has_split(cfg, split: str) -> bool:
    """Whether every test set of ``data.dataset`` also has ``split`` (e.g. val)."""
    name = cfg.data.dataset
    return split == "test" or loader(name).config_has_split(cfg, members(name), split)
