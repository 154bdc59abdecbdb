"""Counters and histograms in the Prometheus text format (version 0.0.4), without a client library.

Each worker process keeps its own figures (with ``--workers N`` a scrape sees the worker that
answered it, as with any multi-process server that has no shared registry).
"""

from __future__ import annotations

import bisect
import threading

#: upper bounds (seconds) of the request-latency histogram's buckets
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: upper bounds of the micro-batch size histograms
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative-bucket histogram of one labelled series."""

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: tuple) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(f"{name}_bucket{_labels((*labels, ('le', _num(bound))))} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.total)}")
        out.append(f"{name}_count{_labels(labels)} {self.n}")
        return out


class Metrics:
    """What ``GET /metrics`` reports: requests by route and status, latency by route, micro-batch
    sizes, and the collection's size (a gauge read when scraped)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple, int] = {}
        self.latency: dict[tuple, Histogram] = {}
        self.batches: dict[str, Histogram] = {}
        self.items = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (("method", method), ("route", route), ("status", str(status)))
            self.requests[key] = self.requests.get(key, 0) + 1
            lkey = (("method", method), ("route", route))
            if lkey not in self.latency:
                self.latency[lkey] = Histogram(LATENCY_BUCKETS)
            self.latency[lkey].observe(seconds)

    def observe_batch(self, worker: str, size: int) -> None:
        with self._lock:
            if worker not in self.batches:
                self.batches[worker] = Histogram(BATCH_BUCKETS)
            self.batches[worker].observe(size)

    def render(self, items: int) -> str:
        with self._lock:
            lines = [
                "# HELP hashlearn_http_requests_total HTTP requests answered, by method, route and status.",
                "# TYPE hashlearn_http_requests_total counter",
            ]
            lines += [f"hashlearn_http_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
            lines += [
                "# HELP hashlearn_http_request_duration_seconds Time from request to response, by method and route.",
                "# TYPE hashlearn_http_request_duration_seconds histogram",
            ]
            for key, hist in sorted(self.latency.items()):
                lines += hist.lines("hashlearn_http_request_duration_seconds", key)
            lines += [
                "# HELP hashlearn_batch_size Jobs run together by one micro-batch, by worker (encode, search).",
                "# TYPE hashlearn_batch_size histogram",
            ]
            for worker, hist in sorted(self.batches.items()):
                lines += hist.lines("hashlearn_batch_size", (("worker", worker),))
        lines += [
            "# HELP hashlearn_collection_items Codes in the collection being served.",
            "# TYPE hashlearn_collection_items gauge",
            f"hashlearn_collection_items {int(items)}",
        ]
        return "\n".join(lines) + "\n"
