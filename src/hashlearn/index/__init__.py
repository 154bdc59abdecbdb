"""Exact Hamming search, collections on disk, and FAISS / Milvus adapters.

``HammingIndex`` answers exact kNN and range queries over binary codes of 8 to 1024 bits with a
blocked linear scan (``flat``) or multi-index hashing (``mih``), choosing by itself (``auto``).
Results are ordered by (distance, id); ``k`` past the number of codes pads with ``-1``.
``Collection`` keeps codes on disk (append-only segments + SQLite metadata), crash-safe.
"""

__all__ = ["Collection", "HammingIndex", "estimate_costs", "index_factory"]


def __getattr__(name):
    # lazy, so that ``hashlearn.index.commands`` (and ``hashlearn --help``) import no numpy
    if name == "Collection":
        from hashlearn.index.collection import Collection

        return Collection
    if name in ("HammingIndex", "estimate_costs", "index_factory"):
        from hashlearn.index import hamming

        return getattr(hamming, name)
    raise AttributeError(f"module 'hashlearn.index' has no attribute {name!r}")
