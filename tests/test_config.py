"""Config system: defaults, stage files, overrides, and errors that help."""
from __future__ import annotations

import ast
import io
import os
import re
import textwrap
import tokenize
from pathlib import Path

import pytest
import torch
import yaml

from utils.config import REPO_ROOT, defaults, flatten, load_config, save_config, to_plain
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


# --------------------------------------------------------------------------
# Every key the code reads exists in the defaults: a static scan of the project's own source.
# --------------------------------------------------------------------------
# Folders that are never the project's source, wherever they sit (a virtual environment in
# the clone, installed packages, build output, caches). Any folder holding ``pyvenv.cfg`` (a
# venv) or ``conda-meta`` (a conda environment) is skipped too, whatever its name.
SKIPPED_FOLDERS = {"venv", "site-packages", "dist-packages", "build", "dist", "__pycache__",
                   "node_modules"}
PROJECT_PACKAGES = {"utils", "model", "datasets", "engine", "bench"}
# Methods of EasyDict/dict: ``cfg.train.get`` is not a key (``.get("lr")`` reads "lr").
MAPPING_METHODS = {"get", "items", "keys", "values", "copy", "update", "pop", "setdefault"}
# Calls that return the config (or section) they are given, and calls that make one.
PASS_THROUGH = {"EasyDict", "dict", "to_plain", "deepcopy"}
CONFIG_MAKERS = {"load_config", "defaults"}


def _skipped_folder(path: Path) -> bool:
    return (path.name.startswith(".") or path.name in SKIPPED_FOLDERS
            or (path / "pyvenv.cfg").exists() or (path / "conda-meta").is_dir())


def project_sources(root: Path) -> list:
    """The project's own ``.py`` files: the top-level scripts and every package beside them
    (a folder with ``__init__.py``) but ``tests``; never a virtual environment, site-packages,
    ``.git`` or a build folder, wherever they sit."""
    files = sorted(root.glob("*.py"))
    packages = sorted(folder for folder in root.iterdir()
                      if folder.is_dir() and (folder / "__init__.py").is_file()
                      and folder.name != "tests" and not _skipped_folder(folder))
    for package in packages:
        for folder, subfolders, names in os.walk(package):
            subfolders[:] = sorted(name for name in subfolders
                                   if not _skipped_folder(Path(folder) / name))
            files += [Path(folder) / name for name in sorted(names) if name.endswith(".py")]
    return files


class ConfigReads:
    """The config keys one module reads (or writes), found with ``ast``: ``[(line, key)]``
    with ``key`` dotted like ``"train.lr"``, or a top-level name like ``"seed"`` or ``"train"``.

    A config object is: a name (variable, parameter or attribute) called ``cfg`` or
    ``*_cfg`` -- ``<section>_cfg`` (``loss_cfg``, ``model_cfg``, ...) is that section, any
    other (``stored_cfg``) the whole config; ``<anything>["config"]`` (a checkpoint's stored
    config); ``load_config(...)``/``defaults()`` and ``EasyDict``/``dict``/``to_plain``/
    ``deepcopy`` of a config object; a key of the whole config that is a section; and a local
    name every assignment of which, in its function, binds the same config object
    (``data = cfg.data``). A key is read as ``.key``, ``["key"]``, ``.get("key")``,
    ``getattr(obj, "key")``, or ``[name]`` with ``name`` looping over literal strings.
    """

    def __init__(self, source: str, sections: set):
        self.sections = sections
        self.reads = []
        self._scope(ast.parse(source), {})

    # -- what an expression is: "" the whole config, "<section>", or None (not a config)
    def _by_name(self, name: str):
        if name == "cfg":
            return ""
        if name.endswith("_cfg"):
            section = name[:-len("_cfg")]
            return section if section in self.sections else ""
        return None

    def _access(self, node, loops):
        """(object, [keys]) when ``node`` reads keys of ``object``, else None."""
        if isinstance(node, ast.Attribute) and node.attr not in MAPPING_METHODS:
            return node.value, [node.attr]
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                return node.value, [key.value]
            if isinstance(key, ast.Name) and key.id in loops:
                return node.value, sorted(loops[key.id])
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in {"get", "pop", "setdefault"}:
                return func.value, [node.args[0].value]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "getattr" and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            return node.args[0], [node.args[1].value]
        return None

    def _kind(self, node, aliases, loops):
        access = self._access(node, loops)
        if access is not None:
            owner, keys = access
            owner_kind = self._kind(owner, aliases, loops)
            if owner_kind == "" and len(keys) == 1:
                return keys[0] if keys[0] in self.sections else None
            if owner_kind is not None:
                return None  # a leaf
        if isinstance(node, ast.Name):
            by_name = self._by_name(node.id)
            return by_name if by_name is not None else aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            return self._by_name(node.attr)
        if isinstance(node, ast.Subscript):
            key = node.slice
            return "" if isinstance(key, ast.Constant) and key.value == "config" else None
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in CONFIG_MAKERS:
                return ""
            if name in PASS_THROUGH and len(node.args) == 1:
                return self._kind(node.args[0], aliases, loops)
        return None

    # -- one function (or the module) at a time; nested functions see its aliases
    @staticmethod
    def _own_nodes(scope):
        """The nodes of ``scope``, not those inside the functions it defines (yielded too)."""
        pending = list(ast.iter_child_nodes(scope))
        while pending:
            node = pending.pop()
            yield node
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                pending.extend(ast.iter_child_nodes(node))

    def _scope(self, scope, outer_aliases: dict) -> None:
        nodes = list(self._own_nodes(scope))
        loops = {}
        for node in nodes:
            if isinstance(node, (ast.For, ast.comprehension)) \
                    and isinstance(node.target, ast.Name) \
                    and isinstance(node.iter, (ast.Tuple, ast.List, ast.Set)) \
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                            for e in node.iter.elts):
                loops.setdefault(node.target.id, set()).update(e.value for e in node.iter.elts)
        # Every binding of a name in this scope: (value or None where unknown).
        bindings = {}
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            arguments = scope.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                        arguments.vararg, arguments.kwarg]:
                if arg is not None:
                    bindings.setdefault(arg.arg, []).append(None)
        assigned = set()  # the Name targets of plain assignments, whose values are known
        for node in nodes:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        bindings.setdefault(target.id, []).append(node.value)
                        assigned.add(id(target))
        for node in nodes:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) \
                    and id(node) not in assigned:
                bindings.setdefault(node.id, []).append(None)  # loop, with, unpacking, ...
        aliases = {name: kind for name, kind in outer_aliases.items() if name not in bindings}
        for _ in range(2):  # twice, so that ``y = x`` after ``x = cfg.train`` resolves
            for name, values in bindings.items():
                if self._by_name(name) is not None:
                    continue
                kinds = {None if value is None else self._kind(value, aliases, loops)
                         for value in values}
                if len(kinds) == 1 and None not in kinds:
                    aliases[name] = kinds.pop()
        for node in nodes:
            access = self._access(node, loops)
            if access is not None:
                owner, keys = access
                owner_kind = self._kind(owner, aliases, loops)
                if owner_kind is not None:
                    prefix = f"{owner_kind}." if owner_kind else ""
                    self.reads += [(node.lineno, prefix + key) for key in keys]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                self._scope(node, aliases)


def known_keys() -> tuple:
    """(every dotted key and section name of the defaults, the section names)."""
    tree = defaults()
    sections = {name for name, value in tree.items() if isinstance(value, dict)}
    return set(flatten(tree)) | sections, sections


def unknown_config_reads(files, root: Path) -> tuple:
    """(["path:line: key" for each key read that the defaults lack], number of reads)."""
    known, sections = known_keys()
    unknown, count = [], 0
    for path in files:
        reads = ConfigReads(path.read_text(encoding="utf-8"), sections).reads
        count += len(reads)
        unknown += [f"{path.relative_to(root)}:{line}: {key}" for line, key in sorted(reads)
                    if key not in known]
    return unknown, count


def test_every_key_the_code_reads_exists():
    """A config key read anywhere in the project's source -- through ``cfg``, a section
    object (``loss_cfg``, ``data = cfg.data``) or a stored config (``["model"]["image_size"]``)
    -- must be a key of ``config/default.yaml``; sections alone do not stand for their keys."""
    files = project_sources(REPO_ROOT)
    scanned = {path.relative_to(REPO_ROOT).parts[0] for path in files}
    assert PROJECT_PACKAGES <= scanned and "train_adapt.py" in scanned, scanned
    unknown, count = unknown_config_reads(files, REPO_ROOT)
    assert count > 100, f"only {count} config reads found: the scan is broken"
    assert not unknown, "config keys read by the code but missing from default.yaml:\n" + \
        "\n".join(unknown)


# A real read in the project's source (the first match, the group being its leaf) and the typo
# planted in its place. Found by pattern, not by file, so that moving code does not break it.
MUTATIONS = [
    (r"(?<![\w.])cfg\.train\.(lr)\b", "lrr", "train.lrr"),
    (r"(?<![\w.])loss_cfg\.(\w+)", "nitcc", "loss.nitcc"),
    (r"(?<![\w.])model_cfg\.(\w+)", "n_layers", "model.n_layers"),
]


@pytest.mark.parametrize("pattern, typo, reported", MUTATIONS, ids=[m[2] for m in MUTATIONS])
def test_key_check_catches_a_planted_typo(tmp_path, pattern, typo, reported):
    """Mutation test: a copy of a real source file with one key mistyped is flagged at that
    line, and the untouched copy is not."""
    def in_code(source, match):  # not in a comment or a docstring
        line = source.count("\n", 0, match.start()) + 1
        column = match.start() - (source.rfind("\n", 0, match.start()) + 1)
        return any(token.type == tokenize.NAME and token.start == (line, column)
                   for token in tokenize.generate_tokens(io.StringIO(source).readline))

    for path in project_sources(REPO_ROOT):
        source = path.read_text(encoding="utf-8")
        match = next((m for m in re.finditer(pattern, source) if in_code(source, m)), None)
        if match:
            break
    else:
        pytest.fail(f"no project source reads {pattern!r} any more: pick another example")
    clean, mutated = tmp_path / "clean.py", tmp_path / "mutated.py"
    clean.write_text(source, encoding="utf-8")
    mutated.write_text(source[:match.start(1)] + typo + source[match.end(1):], encoding="utf-8")
    assert unknown_config_reads([clean], tmp_path)[0] == []
    line = source.count("\n", 0, match.start()) + 1
    assert unknown_config_reads([mutated], tmp_path)[0] == [f"mutated.py:{line}: {reported}"], \
        f"planted in a copy of {path.relative_to(REPO_ROOT)}:{line}"


def test_key_check_follows_aliases(tmp_path):
    """Section objects by name, by assignment, through ``EasyDict``, ``.get`` and loops."""
    path = tmp_path / "aliases.py"
    path.write_text(textwrap.dedent("""
        def build(cfg, loss_cfg, stored_cfg):
            train = cfg.train
            same = train
            both = EasyDict(stored_cfg["data"])
            a = train.lrr + same.epochz + loss_cfg.get("nitcc") + getattr(cfg.test, "rankz")
            b = [loss_cfg[name] for name in ("nitc", "nisx")] + both.rooot + cfg.seedd
            c = cfg.train.get("lr") + dict(cfg)["model"]["context_length"]

        def reused(cfg, data):
            data.anything  # a parameter: could be anything
            other = cfg.train
            other = 3
            return other.whatever  # bound to more than a section: not followed
    """), encoding="utf-8")
    unknown, _ = unknown_config_reads([path], tmp_path)
    assert unknown == ["aliases.py:6: loss.nitcc", "aliases.py:6: test.rankz",
                       "aliases.py:6: train.epochz", "aliases.py:6: train.lrr",
                       "aliases.py:7: data.rooot", "aliases.py:7: loss.nisx",
                       "aliases.py:7: seedd"]


def test_key_check_scans_only_the_project(tmp_path):
    """Virtual environments, site-packages, build output and tests are never scanned."""
    read = "def f(cfg):\n    return cfg.eggs\n"
    for relative in [".venv/lib/python3.11/site-packages/pkg/__init__.py",
                     "venv/lib/python3.11/site-packages/pkg/m.py",
                     "utils/.venv/lib/python3.11/site-packages/pkg/m.py",
                     "utils/env2/lib/m.py", "utils/conda/lib/m.py",
                     "build/lib/utils/__init__.py", "build/lib/utils/m.py",
                     "utils/build/m.py", "tests/__init__.py", "tests/test_x.py",
                     ".git/hooks/m.py", "notes/m.py"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(read)
    (tmp_path / "utils/env2/pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "utils/conda/conda-meta").mkdir()
    for relative in ["utils/__init__.py", "utils/config.py", "utils/sub/m.py", "train.py"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("def f(cfg):\n    return cfg.train.lr\n")
    files = project_sources(tmp_path)
    assert sorted(str(path.relative_to(tmp_path)) for path in files) == [
        "train.py", "utils/__init__.py", "utils/config.py", "utils/sub/m.py"]
    assert unknown_config_reads(files, tmp_path) == ([], 8)  # train, train.lr each


def test_every_default_key_has_a_comment():
    lines = (REPO_ROOT / "config" / "default.yaml").read_text().splitlines()
    bare = [line for line in lines
            if re.match(r"^\s*\w+:\s*\S", line) and "#" not in line]
    assert not bare, bare
