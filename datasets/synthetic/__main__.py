"""The command line of :mod:`datasets.synthetic`::

    python -m datasets.synthetic --out DIR [--seed] [--scale] [--datasets ...] [--overwrite]
                                 [--workers]
"""
import sys

from .writer import main

if __name__ == "__main__":
    sys.exit(main())
