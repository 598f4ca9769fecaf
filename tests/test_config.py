"""Config system: defaults, stage files, overrides, and errors that help."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from utils.config import (REPO_ROOT, defaults, flatten, load_config, save_config, to_plain)
from utils.errors import ConfigError

STAGE_FILES = ["TriPEDES_pretrain.yaml", "Market_finetune.yaml", "PKU_finetune.yaml"]


@pytest.mark.parametrize("name", STAGE_FILES)
def test_stage_files_load(name):
    cfg = load_config(REPO_ROOT / "config" / name)
    assert cfg.model.pretrained == "checkpoint/ViT-B-16.pt"
    assert cfg.data.dataset in {"tri-pedes", "mask1k", "pku-sketch"}


def test_stage_files_hold_only_differences():
    base = flatten(defaults())
    for name in STAGE_FILES:
        stage = flatten(yaml.safe_load((REPO_ROOT / "config" / name).read_text()))
        # data.dataset names what the file is about, even where it equals the default.
        same = [key for key, value in stage.items()
                if base.get(key) == value and key != "data.dataset"]
        assert not same, f"{name} repeats defaults: {same}"


def test_overrides_parse_as_yaml():
    cfg = load_config(REPO_ROOT / "config" / "Market_finetune.yaml",
                      ["train.lr=1e-3", "model.image_size=[384,128]", "train.resume=true",
                       "model.init_from=null", "data.trials=[1,2]", "output_dir=/tmp/x"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.image_size == [384, 128]
    assert cfg.train.resume is True and cfg.model.init_from is None
    assert cfg.data.trials == [1, 2] and cfg.output_dir == "/tmp/x"
    assert load_config(None, ["train.lr=2"]).train.lr == 2.0  # an int is fine for a float


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ("model.imagesize=[1,2]", "did you mean 'model.image_size'?"),
    ("lr=3", "did you mean 'train.lr'?"),
    ("train.lr=abc", "'train.lr' must be float"),
    ("train.epochs=2.5", "'train.epochs' must be int"),
    ("train.resume=maybe", "'train.resume' must be bool"),
    ("data.trials=5", "'data.trials' must be list"),
    ("just-a-word", "is not KEY=VALUE"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: 1e-4\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: YAML syntax error"):
        load_config(broken)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        load_config(typo)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_stored_config_round_trip(tmp_path):
    cfg = load_config(REPO_ROOT / "config" / "TriPEDES_pretrain.yaml", ["seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_plain(again) == to_plain(cfg)
    # Plain types only: a checkpoint holding it loads with weights_only=True.
    torch.save({"config": to_plain(cfg)}, tmp_path / "c.pth")
    assert torch.load(tmp_path / "c.pth", weights_only=True)["config"]["seed"] == 7
    rebuilt = load_config(None, ["data.root=/elsewhere"], base=to_plain(cfg))
    assert rebuilt.seed == 7 and rebuilt.data.root == "/elsewhere"


def test_every_key_the_code_reads_exists():
    """``cfg.a.b`` anywhere in the code must be a key (or section) of the defaults."""
    known = set()
    for key in flatten(defaults()):
        parts = key.split(".")
        known.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    pattern = re.compile(r"\bcfg((?:\.[A-Za-z_]\w*)+)")
    unknown = []
    for path in REPO_ROOT.rglob("*.py"):
        if {"tests", ".git"} & set(path.relative_to(REPO_ROOT).parts):
            continue
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            chain = match.group(1).lstrip(".").split(".")
            # Stop at the first method call on a section (e.g. cfg.train.get).
            while chain and ".".join(chain) not in known and len(chain) > 1:
                chain = chain[:-1]
            if ".".join(chain) not in known:
                unknown.append(f"{path.name}: cfg{match.group(1)}")
    assert not unknown, unknown


def test_every_default_key_has_a_comment():
    lines = (REPO_ROOT / "config" / "default.yaml").read_text().splitlines()
    bare = [line for line in lines
            if re.match(r"^\s*\w+:\s*\S", line) and "#" not in line]
    assert not bare, bare
