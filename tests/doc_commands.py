"""The commands of the documentation, read from its fenced ``bash`` blocks and checked
against the code: every entry point they run exists, every ``--option`` they pass is one
that entry point's parser accepts, every ``KEY=VALUE`` names a config key, and every file
of the project they name (``--config`` files, shell scripts, requirement files) is there.

The options of an entry point are read from its own parser: the module runs as
``__main__`` with ``argparse`` stopped at its first ``parse_args``/``parse_known_args``,
which hands over the parser (nothing after it runs). Entry points that are not the
project's (pip, git, ruff, torchrun's own options) are left alone.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

from utils.config import REPO_ROOT, defaults, flatten

FENCE = re.compile(r"^```(bash|sh|shell)\n(.*?)^```", re.S | re.M)
OVERRIDE = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)=")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")
PYTHON = {"python", "python3"}
# Modules run with ``python -m`` that are not the project's, and what follows them.
FOREIGN_MODULES = {"pip", "pytest", "ruff", "venv"}
LAUNCHERS = {"torchrun", "torch.distributed.run"}
# torchrun's options that take a value (the script follows them).
LAUNCHER_VALUES = {"--nnodes", "--nproc_per_node", "--nproc-per-node", "--rdzv_backend",
                   "--rdzv-backend", "--rdzv_endpoint", "--rdzv-endpoint", "--node_rank",
                   "--node-rank", "--master_addr", "--master-addr", "--master_port",
                   "--master-port", "--rdzv_id", "--rdzv-id"}


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a fenced block: where it is and its words."""

    source: str  # "README.md:123"
    words: tuple


def fenced_commands(path: Path) -> list:
    """Every command of the ``bash`` blocks of ``path``: continuation lines joined, comments
    dropped, split at ``&&``, ``||``, ``;`` and ``|``."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name
    commands = []
    for match in FENCE.finditer(text):
        first_line = text.count("\n", 0, match.start(2)) + 1
        body = match.group(2)
        logical, start = "", None
        for number, line in enumerate(body.split("\n"), first_line):
            if start is None:
                start = number
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            commands += _split(logical, f"{name}:{start}")
            logical, start = "", None
    return commands


def _split(line: str, source: str) -> list:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for word in lexer:
        if word and set(word) <= set(";&|"):
            if words:
                commands.append(Command(source, tuple(words)))
            words = []
        else:
            words.append(word)
    if words:
        commands.append(Command(source, tuple(words)))
    return commands


@functools.cache
def config_keys() -> frozenset:
    """Every key a ``KEY=VALUE`` may set: the dotted leaves of the defaults and their
    sections (``seeds``, ``train.lr``, ``model.image_size``...)."""
    keys = set()
    for key in flatten(defaults()):
        parts = key.split(".")
        keys.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return frozenset(keys)


class _Parsed(Exception):
    def __init__(self, options):
        super().__init__("parser reached")
        self.options = options


@functools.cache
def entry_options(target: str) -> frozenset | None:
    """The option strings (``--gallery``, ``-h``...) of an entry point: a ``.py`` file of
    the project or a module name; None when it has no argparse parser.

    A parser that reads only what it knows (``parse_known_args``, e.g. a first pass for a
    few options) is given no words and the run goes on to the full parse."""
    seen = set()
    original_known = argparse.ArgumentParser.parse_known_args

    def stop(parser, *args, **kwargs):
        raise _Parsed(seen | set(parser._option_string_actions))

    def known(parser, *args, **kwargs):
        seen.update(parser._option_string_actions)
        return original_known(parser, [])

    saved_argv = sys.argv
    with contextlib.ExitStack() as stack:
        for name, patch in (("parse_args", stop), ("parse_intermixed_args", stop),
                            ("parse_known_args", known)):
            stack.callback(setattr, argparse.ArgumentParser, name,
                           getattr(argparse.ArgumentParser, name))
            setattr(argparse.ArgumentParser, name, patch)
        sys.argv = [target]
        # running a module of an imported package as __main__ is what is wanted here
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            if target.endswith(".py"):
                runpy.run_path(str(REPO_ROOT / target), run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=False)
        except _Parsed as parsed:
            return frozenset(parsed.options)
        except SystemExit:
            return None
        finally:
            sys.argv = saved_argv
    return None


def module_exists(module: str) -> bool:
    path = REPO_ROOT / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def check(command: Command) -> list:
    """Problems of one command, each a line naming where it is and what is wrong."""
    words = [word for word in command.words]
    while words and ENV.match(words[0]):
        words.pop(0)
    if not words:
        return []
    where = f"{command.source}: {' '.join(command.words)[:100]}"
    head, rest = words[0], words[1:]
    if head == "bash":
        return _check_script(rest, where)
    if head in ("pip", "pip3") or (head in PYTHON and rest[:2] == ["-m", "pip"]):
        return _check_requirements(rest, where)
    if head == "torchrun":
        return _check_launched(rest, where)
    if head not in PYTHON:
        return []
    if rest[:1] == ["-m"] and len(rest) > 1:
        module, arguments = rest[1], rest[2:]
        if module.split(".")[0] in FOREIGN_MODULES:
            return _check_requirements(arguments, where) if module == "pip" else []
        if module in LAUNCHERS:
            return _check_launched(arguments, where)
        if not module_exists(module):
            return [f"{where}: no module {module} in the project"]
        return _check_arguments(module, arguments, where)
    if rest and rest[0].endswith(".py"):
        if not (REPO_ROOT / rest[0]).is_file():
            return [f"{where}: no script {rest[0]} in the project"]
        return _check_arguments(rest[0], rest[1:], where)
    return []


def _check_launched(arguments: list, where: str) -> list:
    """``torchrun [its options] SCRIPT args``: the script and its arguments."""
    index = 0
    while index < len(arguments) and arguments[index].startswith("-"):
        option = arguments[index].split("=")[0]
        index += 1 if "=" in arguments[index] or option not in LAUNCHER_VALUES else 2
    if index >= len(arguments):
        return []
    script = arguments[index]
    if not (REPO_ROOT / script).is_file():
        return [f"{where}: no script {script} in the project"]
    return _check_arguments(script, arguments[index + 1:], where)


def _check_script(arguments: list, where: str) -> list:
    if not arguments:
        return []
    script = arguments[0]
    if not (REPO_ROOT / script).is_file():
        return [f"{where}: no script {script} in the project"]
    return [problem for word in arguments[1:] for problem in _check_override(word, where)]


def _check_requirements(arguments: list, where: str) -> list:
    problems = []
    for flag, value in zip(arguments, arguments[1:]):
        if flag == "-r" and not (REPO_ROOT / value).is_file():
            problems.append(f"{where}: no requirement file {value}")
    return problems


def _check_override(word: str, where: str) -> list:
    match = OVERRIDE.match(word)
    if not match:
        return []
    key = match.group(1)
    if key not in config_keys():
        return [f"{where}: {key} is not a config key (config/default.yaml)"]
    return []


def _check_arguments(target: str, arguments: list, where: str) -> list:
    options = entry_options(target)
    problems = []
    passthrough = False  # after a bare "--", the words belong to another program
    previous = None
    for word in arguments:
        if word == "--":
            passthrough = True
        elif word.startswith("--") and not passthrough:
            name = word.split("=")[0]
            if options is not None and name not in options:
                problems.append(f"{where}: {target} has no option {name}")
        elif not word.startswith("-"):
            problems += _check_override(word, where)
            if previous == "--config" and not (REPO_ROOT / word).is_file():
                problems.append(f"{where}: no config file {word}")
        previous = word
    return problems


def documentation() -> list:
    """README.md and every page of docs/."""
    pages = [REPO_ROOT / "README.md"]
    docs = REPO_ROOT / "docs"
    if docs.is_dir():
        pages += sorted(docs.rglob("*.md"))
    return pages
