"""fast-reid's compiled Market-1501 evaluator, built here for ``bench.eval --reference``.

fast-reid's wheel ships the Cython source ``evaluation/rank_cylib/rank_cy.pyx`` and its
users compile it (``make`` in that folder). :func:`load_evaluate_cy` compiles that file as
it is, with Cython and the C compiler Python was built with, and returns its
``evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)``. The build goes to
``$XDG_CACHE_HOME/interactreid/fastreid_rank_cy/<key>/`` (``~/.cache`` by default), never
into the installed package; the key covers the source, numpy's version and the Python ABI,
so it is compiled once (about 10 s). The compiler runs in a child process (this file run
as a script) so that its output never mixes with the benchmark's JSON line.

Every way it can fail (no Cython, no compiler, a failed build, a module that does not
load or run) raises :class:`BuildError` with one line saying why.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

MODULE = "rank_cy"  # the extension's name: PyInit_rank_cy must match it
BUILD_TIMEOUT_S = 600


class BuildError(RuntimeError):
    """The compiled evaluator is unavailable; the message is one line."""


def cache_root() -> Path:
    """Folder that holds one build per key."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interactreid" / "fastreid_rank_cy"


def load_evaluate_cy(pyx: Path, cache_dir: Path | None = None):
    """``evaluate_cy`` compiled from ``pyx`` (built under ``cache_dir`` unless already
    there), or raise :class:`BuildError`.

    It takes distances ``[Q, G]`` (cast to float32), ids and cameras ``[Q]``/``[G]``
    (cast to int64) and ``max_rank``; it returns the CMC curve ``[max_rank]`` (float32
    fractions) and the AP and INP ``[valid queries]`` (float32).
    """
    pyx = Path(pyx)
    if not pyx.is_file():
        raise BuildError(f"fast-reid's Cython source not found: {pyx}")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")  # the one setuptools names it with
    key = hashlib.sha256(pyx.read_bytes()
                         + f"|{_numpy_version()}|{suffix}".encode()).hexdigest()[:16]
    target = Path(cache_dir or cache_root()) / key
    library = target / f"{MODULE}{suffix}"
    if not library.is_file():
        check_tools()
        _build(pyx, target)
        if not library.is_file():
            raise BuildError(f"no {library.name} in {target} (delete that folder to rebuild)")
    return _load(library)


def _numpy_version() -> str:
    try:
        return importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def check_tools() -> None:
    """Raise :class:`BuildError` unless Cython and (on POSIX) a C compiler are found."""
    if importlib.util.find_spec("Cython") is None:
        raise BuildError("Cython not installed (pip install 'cython>=3.0')")
    if os.name == "posix":  # elsewhere setuptools finds the compiler (MSVC) itself
        command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
        compiler = shlex.split(command)[0]
        if shutil.which(compiler) is None:
            raise BuildError(f"C compiler '{compiler}' not found (install one, e.g. "
                             "gcc, or point CC at it)")


def _build(pyx: Path, target: Path) -> None:
    """Compile ``pyx`` in a child process into ``target``, which appears whole or not at
    all (a concurrent build of the same key may win; its result is as good)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as error:
        raise BuildError(f"cannot write the build folder {target.parent}: {error}") from error
    try:
        try:
            child = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), str(pyx), str(work)],
                cwd=work, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise BuildError(f"building {pyx.name} took over {BUILD_TIMEOUT_S} s") from error
        if child.returncode != 0:
            log = target.parent / f"{target.name}.log"
            log.write_text(child.stdout + child.stderr, encoding="utf-8")
            reason = _first_error(child.stderr) or f"exit status {child.returncode}"
            raise BuildError(f"building {pyx.name} with Cython failed: {reason} (log: {log})")
        try:
            (work / "lib").replace(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _first_error(output: str) -> str:
    """The first diagnostic (``file:line:col: message``, not a warning) of Cython or the
    compiler, else the last line (setuptools' ``error: ...``); at most 200 characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if re.match(r"\S+:\d+:\d+: ", line) and "warning" not in line.lower():
            return line[:200]
    return lines[-1][:200] if lines else ""


def _load(library: Path):
    spec = importlib.util.spec_from_file_location(MODULE, library)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as error:
        raise BuildError(f"compiled {library} does not load: {error}") from error
    evaluate = getattr(module, "evaluate_cy", None)
    if evaluate is None:
        raise BuildError(f"compiled {library} has no evaluate_cy")
    _smoke_test(evaluate, library)
    return evaluate


def _smoke_test(evaluate, library: Path) -> None:
    """One tiny call: the source types ids as C ``long``, which is 32-bit on Windows and
    then rejects int64 arrays."""
    import numpy as np

    try:
        cmc, _, _ = evaluate(np.array([[0.0, 1.0]]), np.array([0]), np.array([0, 1]),
                             np.array([0]), np.array([1, 1]), 1)
    except (ValueError, TypeError) as error:
        raise BuildError(f"compiled {library} does not run here: {error}") from error
    if float(cmc[0]) != 1.0:
        raise BuildError(f"compiled {library} gives a wrong answer on a one-query case")


def _compile(pyx: Path, work: Path) -> None:
    """Child process: cythonize a copy of ``pyx`` (the generated C file lands in ``work``,
    not beside the installed source) and build it into ``work/lib``."""
    import numpy as np
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    source = work / "src" / f"{MODULE}.pyx"
    source.parent.mkdir()
    shutil.copyfile(pyx, source)
    extension = Extension(MODULE, [str(source)], include_dirs=[np.get_include()],
                          define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    modules = cythonize([extension], quiet=True, compiler_directives={"language_level": 3})
    command = build_ext(Distribution({"ext_modules": modules}))
    command.build_lib = str(work / "lib")
    command.build_temp = str(work / "temp")
    command.ensure_finalized()
    command.run()


if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0]; drop it so that the benchmarks beside
    # this file (eval.py, common.py, ...) cannot shadow a module setuptools imports.
    del sys.path[0]
    _compile(Path(sys.argv[1]), Path(sys.argv[2]))
