"""Load reference implementations installed from PyPI (test-only), by file path.

Importing the packages themselves is avoided: openai-clip's ``__init__`` needs
pkg_resources and fastreid's needs its own pinned torch.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_peer_file(package: str, relative_path: str):
    """The module at ``<site-packages>/<package>/<relative_path>``, or skip the test."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"peer package '{package}' is not installed (pip install -r requirements-dev.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative_path
    if not path.is_file():
        pytest.skip(f"peer file {path} not found")
    module_name = f"peer_{package}_{relative_path.replace('/', '_').removesuffix('.py')}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
