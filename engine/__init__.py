"""The orchestration layer: the training loop (``trainer``), what differs per stage
(``stages``), evaluation, search (``api``: the Retriever; ``gallery``: the index), pictures
and reports. It imports ``model``, ``datasets`` and ``utils``; only the entry points import
it."""
