"""The orchestration layer: the training loop (``trainer``), what differs per stage
(``stages``), evaluation, the search engine (``gallery``), pictures and reports. It imports
``model``, ``datasets`` and ``utils``; only the entry points import it."""
