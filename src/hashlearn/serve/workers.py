"""One thread per resource, fed by a queue that runs concurrent requests as micro-batches.

The model and the collection are each owned by one thread (:class:`BatchWorker`): the model because
encoding 32 images at once costs little more than encoding one, the collection because its SQLite
connection belongs to the thread that opened it and because a search over many queries is one pass
over the codes. Requests submit jobs and wait on a ``concurrent.futures.Future``.

Batching: a job with a batch key (e.g. ``("search", k)``) is run together with the jobs of the same
key that are waiting, up to ``max_batch``. The worker waits up to ``max_wait_s`` for more only while
requests have announced themselves (:meth:`BatchWorker.expect`, around the decoding that precedes a
submission): a lone request never waits, and under load each batch holds what arrived while the
previous one ran, so throughput grows with the number of concurrent clients.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    key: Any  # None: run alone; otherwise (batch function, key)
    payload: Any
    future: Future = field(default_factory=Future)


class BatchWorker:
    """A thread that runs submitted jobs in order, batching jobs of the same key."""

    def __init__(self, name: str, max_batch: int = 32, max_wait_s: float = 0.003, on_batch=None):
        self.name = name
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.on_batch = on_batch  # called with the size of every batch run (metrics)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._set_aside: collections.deque = collections.deque()
        self._incoming = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"hashlearn-{name}", daemon=True)
        self._thread.start()

    # -- submitting ---------------------------------------------------------------------------
    def call(self, fn: Callable, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the worker's thread, alone."""
        job = _Job(None, (fn, args, kwargs))
        self._queue.put(job)
        return job.future

    def batch(self, fn: Callable[[Any, list], list], key, item) -> Future:
        """Run ``fn(key, [item, ...])`` (which returns one result per item) on the worker's thread,
        with the other waiting items of the same ``(fn, key)``; this future gets ``item``'s result."""
        job = _Job((fn, key), item)
        self._queue.put(job)
        return job.future

    @contextlib.contextmanager
    def expect(self):
        """Announce a submission that is being prepared (an image decoding), so that a batch being
        formed waits for it a little (at most ``max_wait_s``)."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------------------
    def _next(self, timeout: float | None = None):
        if self._set_aside:
            return self._set_aside.popleft()
        if timeout is None:
            return self._queue.get()
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return queue.Empty

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                break
            if job.key is None:
                fn, args, kwargs = job.payload
                _settle([job], lambda fn=fn, args=args, kwargs=kwargs: [fn(*args, **kwargs)])
                continue
            batch, stop = self._collect(job)
            fn, key = job.key
            _settle(batch, lambda fn=fn, key=key, batch=batch: fn(key, [j.payload for j in batch]))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            if stop:
                break
        for job in list(self._set_aside):
            if job is not None:
                job.future.set_exception(RuntimeError("the service is shutting down"))

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        batch = [first]
        # jobs set aside earlier that match go first (they waited longest)
        for job in [j for j in self._set_aside if j is not None and j.key == first.key]:
            if len(batch) >= self.max_batch:
                break
            self._set_aside.remove(job)
            batch.append(job)
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                with self._lock:
                    waiting = self._incoming > 0
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(left, 0.0005))
                except queue.Empty:
                    continue
            if job is None:
                self._set_aside.append(None)
                return batch, False
            if job.key == first.key:
                batch.append(job)
            else:
                self._set_aside.append(job)
        return batch, False


def _settle(jobs: list[_Job], run: Callable[[], list]) -> None:
    """Run ``run()`` and hand its results (one per job) or its exception to the jobs' futures."""
    try:
        results = run()
    except BaseException as exc:  # noqa: BLE001 - the caller's future carries it to the request
        for job in jobs:
            job.future.set_exception(exc)
        return
    for job, result in zip(jobs, results, strict=True):
        job.future.set_result(result)
