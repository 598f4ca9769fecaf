"""The command line of :mod:`datasets.synthetic`::

    python -m datasets.synthetic --out DIR [--seed] [--scale] [--datasets ...] [--overwrite]
                                 [--workers] [--layout default|manifest]

``--layout manifest`` writes Market-Sketch-1K's people as your own data would come: a row
per photo in ``DIR/Market-Sketch-1K-manifest/manifest.jsonl`` (and ``manifest.csv``), for
``data.dataset=manifest data.manifest=...``.
"""
import sys

from .writer import main

if __name__ == "__main__":
    sys.exit(main())
