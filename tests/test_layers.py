"""The packages import one way, downward: entry points and bench -> engine -> datasets ->
model -> utils. Every project import of every module is read from its source (ast), so a
new arrow back up fails here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

# Floor of each package; a module may import only from floors at or below its own (within
# its own package, anything).
FLOORS = {"utils": 1, "model": 2, "datasets": 3, "engine": 4}
TOP = 5  # entry points (train_*.py, test.py, search.py, app.py) and bench/
PROJECT = set(FLOORS) | {"bench", "train_adapt", "train_token", "test", "search", "app", "tests"}


def floor_of(path: Path) -> int:
    parts = path.relative_to(REPO_ROOT).parts
    return FLOORS.get(parts[0], TOP) if len(parts) > 1 else TOP


def project_imports(path: Path) -> list:
    """(line, imported top-level name) of every import of a project package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names
                  if name.split(".")[0] in PROJECT]
    return found


def library_files() -> list:
    return sorted(path for package in FLOORS for path in (REPO_ROOT / package).rglob("*.py"))


def upward_imports(path: Path, own: int) -> list:
    return [f"{path.name}:{line} imports {name} (floor {FLOORS.get(name, TOP)} > {own})"
            for line, name in project_imports(path) if FLOORS.get(name, TOP) > own]


def test_imports_run_downward():
    files = library_files()
    assert len(files) > 30
    problems = [f"{path.relative_to(REPO_ROOT)}: {problem}" for path in files
                for problem in upward_imports(path, floor_of(path))]
    assert not problems, "\n".join(problems)


def test_utils_imports_nothing_of_the_project():
    for path in (REPO_ROOT / "utils").rglob("*.py"):
        names = {name for _, name in project_imports(path)}
        assert names <= {"utils"}, (path, names)


@pytest.mark.parametrize("source, expected", [
    ("from engine.stages import TokenStage\n", "imports engine"),
    ("import datasets.pedes\n", "imports datasets"),
])
def test_an_arrow_back_up_is_caught(tmp_path, source, expected):
    """A model module (floor 2) that imported a layer above would be flagged."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    assert any(expected in problem for problem in upward_imports(planted, FLOORS["model"]))
    assert not upward_imports(planted, TOP)
