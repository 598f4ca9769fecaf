"""Reference implementations installed from PyPI (test-only), located through the installed
package and loaded by file path.

Importing the packages themselves is avoided: openai-clip's ``__init__`` needs
pkg_resources and fastreid's needs its own pinned torch. ``importlib.util.find_spec`` on a
top-level name finds the package folder without running its ``__init__``.

A missing peer skips its parity test with the reason on a workstation, and fails it under CI
(the environment variable ``CI`` set, as GitHub Actions does), where a skipped comparison
would pass unnoticed.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pytest

# Import name -> (distribution on PyPI, how to install it).
PEERS = {"clip": ("openai-clip", "pip install -r requirements-dev.txt"),
         "fastreid": ("fastreid", "pip install --no-deps fastreid==1.4.0")}


def under_ci() -> bool:
    """True where the environment variable ``CI`` is set (GitHub Actions sets it)."""
    return bool(os.environ.get("CI"))


def missing_peer(reason: str):
    """Fail the test under CI, otherwise skip it; ``reason`` is one line."""
    if under_ci():
        pytest.fail(f"{reason} (CI is set, so a missing peer fails)", pytrace=False)
    pytest.skip(reason)


def peer_file(package: str, relative_path: str) -> Path:
    """``<package folder>/<relative_path>`` of an installed peer, or skip/fail the test."""
    distribution, install = PEERS.get(package, (package, f"pip install {package}"))
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        missing_peer(f"peer package '{package}' ({distribution}) is not installed: {install}")
    # An unrelated distribution can install the same import name: where the installed
    # distributions say who provides it, it must be the peer. (An editable install or a
    # folder on sys.path is listed by none, and is taken as it is.)
    providers = _providers().get(package, [])
    if providers and _normalized(distribution) not in {_normalized(name) for name in providers}:
        missing_peer(f"'{package}' is installed by {providers}, not by the peer "
                     f"{distribution}: {install}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative_path
        if path.is_file():
            return path
    missing_peer(f"peer file {relative_path} not found in {distribution}'s "
                 f"{list(spec.submodule_search_locations)}")


@functools.cache
def _providers() -> dict:
    return importlib.metadata.packages_distributions()


def _normalized(distribution: str) -> str:
    return distribution.lower().replace("-", "_")


def load_peer_file(package: str, relative_path: str):
    """The module at ``<package folder>/<relative_path>``, loaded on its own (no parent
    package, so relative imports inside it fail), or skip/fail the test."""
    path = peer_file(package, relative_path)
    module_name = f"peer_{package}_{relative_path.replace('/', '_').removesuffix('.py')}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
