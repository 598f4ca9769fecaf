"""Errors caused by what a person gave us (a path, a key, a value, a file).

Entry points print these as one line and exit non-zero; anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import functools
import logging
import os
import pickle
import sys
import zipfile

# What torch.load / torch.jit.load raise on a truncated, foreign or garbage file.
UNREADABLE_FILE_ERRORS = (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError,
                          TypeError, pickle.UnpicklingError, zipfile.BadZipFile)


class UserError(Exception):
    """Bad input: the message names the path, key or value and what was expected."""


class ConfigError(UserError):
    """A config file, key or value that cannot be used."""


class DatasetError(UserError):
    """A dataset folder, annotation or image that is missing or unreadable."""


def debug_requested(argv=None) -> bool:
    """True with ``--debug`` on the command line or ``DEBUG=1`` in the environment."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("DEBUG", "") not in ("", "0")


def one_line(error: Exception) -> str:
    """The message of ``error``; for an error re-raised from a DataLoader worker (whose
    message carries the worker's traceback) the original message alone."""
    message = str(error)
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return message


def exit_on_user_error(main):
    """Run ``main(argv)``; a ``UserError`` becomes ``error: <message>`` and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as error:
            if debug_requested(argv):
                raise
            logging.getLogger(__name__).debug("user error", exc_info=True)
            print(f"error: {one_line(error)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
