"""Configuration: defaults in ``config/default.yaml``, a stage file, then KEY=VALUE overrides.

    cfg = load_config("config/TriPEDES_pretrain.yaml",
                      ["train.lr=1e-3", "model.image_size=[384,128]"])

Every key must exist in the defaults (a typo is an error that suggests the nearest key) and
every value must have the default's type. YAML is read with the safe loader only.
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from easydict import EasyDict

from utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_PATH = REPO_ROOT / "config" / "default.yaml"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a syntax error names the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, "
                          f"got {type(data).__name__}")
    return data


def defaults() -> dict:
    """The default value of every key."""
    return read_yaml(DEFAULTS_PATH)


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# Keys that were renamed: a stored config (a checkpoint's) is read with the new name; given
# by a person, the old name is an error that names the new one.
RENAMED = {"train.log_every": "log.every_steps"}


def _renamed(tree: Mapping) -> dict:
    """``tree`` with every renamed key moved to its new name."""
    flat = flatten(tree)
    for old, new in RENAMED.items():
        if old in flat:
            flat.setdefault(new, flat.pop(old))
    renamed: dict = {}
    for key, value in flat.items():
        set_dotted(renamed, key, value)
    return renamed


def _unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    if key in RENAMED:
        return ConfigError(f"config key '{key}' is now '{RENAMED[key]}'")
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [name for name in known if name.rsplit(".", 1)[-1] == leaf][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _checked(key: str, value: Any, default: Any, source: str) -> Any:
    """Return ``value`` if it has the type of ``default`` (ints pass for floats)."""
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):
            value = _float_or_text(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{source}: '{key}' must be {type(default).__name__} "
                          f"(like the default {default!r}), got {value!r}")
    return value


def _float_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def merge(base: dict, updates: Mapping, source: str) -> dict:
    """Apply nested ``updates`` onto ``base`` (the defaults' shape), checking keys and types."""
    known = flatten(defaults())
    merged = copy.deepcopy(base)
    for key, value in flatten(updates).items():
        if key not in known:
            # A section given a scalar, or a typo: both are unknown keys.
            raise _unknown_key(key, known)
        set_dotted(merged, key, _checked(key, value, known[key], source))
    return merged


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def parse_overrides(overrides: Iterable[str]) -> dict:
    """["train.lr=1e-3", "model.image_size=[384,128]"] -> nested dict of YAML-parsed values."""
    tree: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not KEY=VALUE (e.g. train.lr=1e-4)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML: keep the literal string
        set_dotted(tree, key.strip(), value)
    return tree


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping | None = None) -> EasyDict:
    """Defaults (or ``base``, e.g. a checkpoint's stored config), then a YAML file, then
    overrides."""
    config = copy.deepcopy(dict(base)) if base is not None else defaults()
    if base is not None:
        # A stored config may predate new or renamed keys: fill them from the defaults,
        # move renamed ones, check the rest.
        config = merge(defaults(), _renamed(config), "stored config")
    if path is not None:
        config = merge(config, read_yaml(path), str(path))
    config = merge(config, parse_overrides(overrides), "command line")
    return EasyDict(config)


def to_plain(config: Mapping) -> dict:
    """EasyDict -> plain dicts/lists (safe for YAML and ``torch.load(weights_only=True)``)."""
    if isinstance(config, Mapping):
        return {str(key): to_plain(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(value) for value in config]
    return config


def save_config(config: Mapping, path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        yaml.safe_dump(to_plain(config), handle, sort_keys=False)


def config_from_command_line(argv, description: str, default_config: str | None = None):
    """Parse ``--config FILE [--debug] [KEY=VALUE ...]`` and return (config, args)."""
    import argparse

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config, help="stage YAML file in config/")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=1e-4 model.image_size=[384,128]")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides), args
