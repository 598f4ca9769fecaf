"""Logging on the main process only: to the screen and to ``output_dir/log.txt``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(output_dir: str | Path | None, main_process: bool = True) -> logging.Logger:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_interactreid", False):  # only ours; others (e.g. pytest) stay
            root.removeHandler(handler)
            handler.close()
    if not main_process:
        root.setLevel(logging.WARNING)
        return root
    root.setLevel(logging.INFO)
    screen = logging.StreamHandler(sys.stdout)
    screen.setFormatter(logging.Formatter("%(message)s"))
    _add(root, screen)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(Path(output_dir) / "log.txt", encoding="utf-8")
        log_file.setFormatter(logging.Formatter(FORMAT))
        _add(root, log_file)
    return root


def _add(root: logging.Logger, handler: logging.Handler) -> None:
    handler._interactreid = True
    root.addHandler(handler)
