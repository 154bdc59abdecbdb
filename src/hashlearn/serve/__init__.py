"""The retrieval service: ``hashlearn serve`` (HTTP API + web page) over a run and a collection.

* :func:`create_app` — the FastAPI application (:mod:`hashlearn.serve.app`);
* :class:`Service` / :class:`ServeSettings` — the run, the collection, the in-memory index and the
  micro-batching worker threads behind it (:mod:`hashlearn.serve.service`).

FastAPI and uvicorn are imported on first use, so ``hashlearn --help`` stays light.
"""

from __future__ import annotations

from hashlearn._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "create_app": "hashlearn.serve.app",
        "Service": "hashlearn.serve.service",
        "ServeSettings": "hashlearn.serve.service",
    },
)
