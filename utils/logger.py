"""Logging on the main process only: to the screen and to ``output_dir/log.txt``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(output_dir: str | Path | None, main_process: bool = True) -> logging.Logger:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if not main_process:
        root.setLevel(logging.WARNING)
        root.addHandler(logging.NullHandler())
        return root
    root.setLevel(logging.INFO)
    screen = logging.StreamHandler(sys.stdout)
    screen.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(screen)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(Path(output_dir) / "log.txt", encoding="utf-8")
        log_file.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(log_file)
    return root
