"""Exact Hamming search, collections on disk, and FAISS / Milvus adapters.

``HammingIndex`` answers exact kNN and range queries over binary codes of 8 to 1024 bits with a
blocked linear scan (``flat``) or multi-index hashing (``mih``), choosing by itself (``auto``).
Results are ordered by (distance, id); ``k`` past the number of codes pads with ``-1``.
``Collection`` keeps codes on disk (append-only segments + SQLite metadata), crash-safe.
"""

from hashlearn._lazy import lazy_exports

# lazy, so that ``hashlearn.index.commands`` (and ``hashlearn --help``) import no numpy
__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Collection": "hashlearn.index.collection",
        "HammingIndex": "hashlearn.index.hamming",
        "estimate_costs": "hashlearn.index.hamming",
        "index_factory": "hashlearn.index.hamming",
    },
)
