"""``HammingIndex``: exact kNN and range search over binary codes of 8 to 1024 bits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hashlearn._atomic import atomic_write_text
from hashlearn.errors import InputError, NotFoundError

FORMAT_VERSION = 1
METHODS = ("auto", "flat", "mih")
MIN_BITS, MAX_BITS = 8, 1024

# Cost model of ``auto``, in nanoseconds of one core; only ratios matter (both methods run on the
# same threads). A linear scan costs ``SCAN_QUERY_NS`` per query (selection of the k best,
# measured at k = 100) plus ``SCAN_NS_PER_WORD`` per database code and 64-bit word. MIH costs, per
# probed bucket, ``PROBE_NS`` when the table's offsets fit in L2 (substrings of at most
# ``CACHED_SUBSTRING_BITS`` bits: 1 MiB) and ``PROBE_MISS_NS`` when not, plus ``VERIFY_NS`` per
# bucket entry verified (a code is met once per table whose substring is within the probe radius:
# full distance, duplicate test, histogram). Fitted (least squares on relative error, 13 sizes of
# 32-256-bit uniform and clustered codes, k = 100, one thread, a 2-core x86_64 shared with other
# jobs) by ``python bench/search.py --only calibrate``, which prints fresh values (on the loaded
# machine a re-fit moves each value up to 2x; the break-even table of
# docs/results/search-speed.md checks these against measured times). Re-fitted on a quiet machine
# with the vector scan kernels (which cut the scan's cost per word from 0.95 to 0.39 ns) and
# MIH's int32 bucket offsets.
SCAN_QUERY_NS = 45_000.0
SCAN_NS_PER_WORD = 0.39
PROBE_NS = 15.0
PROBE_MISS_NS = 34.0
CACHED_SUBSTRING_BITS = 17
VERIFY_NS = 16.6
MIN_MIH_N = 16384  # below this, the scan takes ~50 us a query and MIH's tables are not worth building
SAMPLE = 16384  # database codes sampled to estimate, per query, the k-th distance and MIH's work
SAMPLE_QUERIES = 8
# ``auto`` in a search decides once per index state (its sampled estimate costs ~1 ms at 10M codes, more
# than an MIH answer): the choice is kept per k (or radius) and made again when the number of codes has
# changed by more than REDECIDE_N_CHANGE since, or when the k-th distances the searches find drift from
# the one the choice assumed (a moving average, weight DRIFT_WEIGHT per search, off by more than
# max(DRIFT_MIN_BITS, DRIFT_FRACTION x assumed)): the query distribution changed.
REDECIDE_N_CHANGE = 0.1
DRIFT_WEIGHT = 0.2
DRIFT_MIN_BITS = 2.0
DRIFT_FRACTION = 0.25


def _binom_cdf(bits: int) -> np.ndarray:
    """``P(d <= t)`` for the distance between two uniform random ``bits``-bit codes."""
    logc = np.array([math.lgamma(bits + 1) - math.lgamma(t + 1) - math.lgamma(bits - t + 1) for t in range(bits + 1)])
    return np.cumsum(np.exp(logc - bits * math.log(2)))


def _probe_radii(tau: int, m: int) -> list[int]:
    """Radius to which each substring is probed to cover distance ``tau`` (TPAMI 2014, Prop. 1)."""
    r, last = divmod(int(tau), m)  # substrings 0..last probe radius r, the others r - 1
    return [r if i <= last else r - 1 for i in range(m)]


def _probes(tau: int, sub: list[int]) -> list[float]:
    """Buckets probed in each substring's table to cover distance ``tau``."""
    radii = _probe_radii(tau, len(sub))
    return [float(sum(math.comb(s, t) for t in range(min(s, r) + 1))) for s, r in zip(sub, radii, strict=True)]


def estimate_costs(
    n: int,
    bits: int,
    k: int,
    m: int | None = None,
    kth_distance: int | None = None,
    candidates: float | None = None,
) -> dict:
    """Estimated nanoseconds per query of a linear scan and of MIH.

    ``kth_distance`` (the distance of the ``k``-th neighbour) decides how far MIH must probe;
    without it, uniform random codes are assumed, the worst case for MIH (learned or clustered
    codes put the ``k``-th neighbour nearer). ``candidates`` is the number of bucket entries MIH
    verifies; without it, codes are assumed spread evenly over the buckets (clustered codes crowd
    the buckets near a query, so this underestimates them). :meth:`HammingIndex.choose_method`
    measures both on a sample of the database.
    """
    from hashlearn.index.mih import default_m

    nw = (bits + 63) // 64
    linear = SCAN_QUERY_NS + n * nw * SCAN_NS_PER_WORD
    m = m or default_m(bits, n)
    cdf = _binom_cdf(bits)
    tau = int(np.searchsorted(cdf * n, min(k, n))) if kth_distance is None else int(kth_distance)
    sub = [len(a) for a in np.array_split(np.arange(bits), m)]
    per_table = _probes(tau, sub)
    probes = sum(per_table)
    cached = sum(p for p, s in zip(per_table, sub, strict=True) if s <= CACHED_SUBSTRING_BITS)
    if candidates is None:
        candidates = sum(p * n / 2**s for p, s in zip(per_table, sub, strict=True))
    probe_ns = cached * PROBE_NS + (probes - cached) * PROBE_MISS_NS
    mih = probe_ns + min(float(candidates), n * m) * VERIFY_NS
    return {
        "linear_ns": linear,
        "mih_ns": mih,
        "m": m,
        "expected_kth_distance": tau,
        "probes": probes,
        "probes_cached": cached,
        "candidates": float(candidates),
    }


def pick_method(costs: dict) -> str:
    """``"mih"`` when its estimated cost is below the scan's, else ``"flat"``."""
    return "mih" if costs["mih_ns"] < costs["linear_ns"] else "flat"


def _check_bits(bits) -> int:
    try:
        bits = int(bits)
    except (TypeError, ValueError):
        raise InputError(f"bits must be an integer, got {bits!r}") from None
    if not MIN_BITS <= bits <= MAX_BITS:
        raise InputError(f"bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


class HammingIndex:
    """Exact Hamming-space index over binary codes (8 to 1024 bits).

    ``method``: ``"flat"`` (blocked linear scan), ``"mih"`` (multi-index hashing, ``m``
    substrings, ``reorder`` to decorrelate them) or ``"auto"`` (picks from ``n``, ``bits``, ``k`` and a
    sample of the queries with :func:`estimate_costs`, once per ``k`` or radius: the choice is kept
    until the number of codes changes by more than 10 % or the k-th distances that searches find
    drift from the estimate; :attr:`auto_decisions` counts the estimates). Every method returns the
    same results.

    Results are exact and deterministic: each row is ordered by (distance, id). When ``k``
    exceeds the number of codes, rows are padded with distance ``-1`` and id ``-1`` (as FAISS).
    """

    def __init__(self, bits: int, method: str = "auto", m: int | None = None, reorder: bool = False):
        self.bits = _check_bits(bits)
        if method not in METHODS:
            raise InputError(f"unknown index method {method!r}; expected one of {', '.join(METHODS)}")
        self.method = method
        self.m = m
        self.reorder = bool(reorder)
        self.nwords = (self.bits + 63) // 64
        self._words = np.zeros((0, self.nwords), dtype=np.uint64)  # sorted by id
        self._ids = np.zeros(0, dtype=np.int64)
        self._mih = None
        self.last_method: str | None = None
        self._decisions: dict = {}  # ("knn", k) or ("range", radius) -> what auto decided, and when
        self.auto_decisions = 0  # how many times a search's auto choice was (re)estimated

    # -- contents -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """Ids in increasing order (the storage order)."""
        return self._ids

    def codes(self) -> np.ndarray:
        """Packed ``uint8`` codes in id order."""
        nbytes = (self.bits + 7) // 8
        return np.ascontiguousarray(np.ascontiguousarray(self._words).view(np.uint8)[:, :nbytes])

    def codes_of(self, ids) -> np.ndarray:
        """Packed ``uint8`` codes of the given ids, in their order (:class:`NotFoundError` naming the
        first id that is not in the index); costs O(len(ids) log n), not a copy of the index."""
        ids = check_ids(ids if isinstance(ids, (list, tuple)) else np.asarray(ids).ravel(), unique=False)
        pos = np.searchsorted(self._ids, ids)
        found = (pos < len(self._ids)) & (self._ids[np.minimum(pos, max(len(self._ids) - 1, 0))] == ids) \
            if len(self._ids) else np.zeros(len(ids), dtype=bool)
        if not found.all():
            raise NotFoundError(f"id {int(ids[~found][0])} is not in the index")
        nbytes = (self.bits + 7) // 8
        return np.ascontiguousarray(np.ascontiguousarray(self._words[pos]).view(np.uint8)[:, :nbytes])

    def _to_words(self, codes, name: str) -> np.ndarray:
        from hashlearn.codes import as_packed
        from hashlearn.codes._kernels import to_words

        arr = np.asarray(codes)
        if arr.ndim == 1 and arr.size:
            arr = arr[None, :]
        if arr.ndim == 2 and arr.shape[0] == 0:
            return np.zeros((0, self.nwords), dtype=np.uint64)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{name}: expected numeric binary codes, got dtype {arr.dtype}")
        packed, _ = as_packed(arr, self.bits, name=name)
        return to_words(packed)

    def add(self, codes, ids=None) -> None:
        """Add codes (packed ``uint8`` ``(n, ceil(bits/8))`` or ``0/1``/``±1`` ``(n, bits)``).

        ``ids`` default to ``ntotal, ntotal+1, ...``; they must be unique integers not already
        in the index. Nothing is added when anything is wrong.
        """
        words = self._to_words(codes, "codes")
        n = len(words)
        if ids is None:
            start = int(self._ids[-1]) + 1 if len(self._ids) else 0
            if start + n - 1 > MAX_ID:
                raise InputError(f"ids: no {n} free ids after the largest id {start - 1} (ids end at 2**63-1)")
            ids = np.arange(start, start + n, dtype=np.int64)
        else:
            ids = check_ids(ids, n)
            if len(self._ids) and np.isin(ids, self._ids).any():
                dup = ids[np.isin(ids, self._ids)][:5].tolist()
                raise InputError(f"ids already in the index: {dup}")
        if n == 0:
            return
        if (len(self._ids) == 0 or ids[0] > self._ids[-1]) and (np.diff(ids) > 0).all():
            self._words = np.concatenate([self._words, words])
            self._ids = np.concatenate([self._ids, ids])
        else:
            all_ids = np.concatenate([self._ids, ids])
            order = np.argsort(all_ids, kind="stable")
            self._words = np.concatenate([self._words, words])[order]
            self._ids = all_ids[order]
        self._mih = None

    def remove(self, ids) -> int:
        """Remove codes by id; returns how many were removed (unknown ids are ignored; ids outside
        ``[0, 2**63-1]`` are refused, as :meth:`add` refuses them)."""
        ids = check_ids(ids if isinstance(ids, (list, tuple)) else np.asarray(ids).ravel(), unique=False)
        keep = ~np.isin(self._ids, ids)
        removed = int((~keep).sum())
        if removed:
            self._words = self._words[keep]
            self._ids = self._ids[keep]
            self._mih = None
        return removed

    def reset(self) -> None:
        self._words = np.zeros((0, self.nwords), dtype=np.uint64)
        self._ids = np.zeros(0, dtype=np.int64)
        self._mih = None
        self._decisions = {}

    # -- search -------------------------------------------------------------------------------
    def choose_method(self, k: int | None = None, radius: int | None = None, queries=None) -> str:
        """The method a search will use (``flat`` or ``mih``); :meth:`search` calls it with its
        queries and records the answer in :attr:`last_method`.

        ``queries`` (codes in any form :meth:`search` takes) let it measure, for up to 8 of them
        against a sample of 16,384 database codes, the ``k``-th neighbour's distance and how many
        bucket entries MIH would verify; without queries, uniform codes are assumed.
        """
        if self.method != "auto":
            return self.method
        return pick_method(self.estimate_costs(k=k, radius=radius, queries=queries))

    def estimate_costs(self, k: int | None = None, radius: int | None = None, queries=None) -> dict:
        """:func:`estimate_costs` for this index (see :meth:`choose_method`); ``flat`` below
        ``MIN_MIH_N`` codes."""
        n = len(self)
        if n < MIN_MIH_N:
            return {"linear_ns": 0.0, "mih_ns": math.inf}
        if queries is not None and not (isinstance(queries, np.ndarray) and queries.dtype == np.uint64):
            queries = self._to_words(queries, "queries")
        if queries is None or len(queries) == 0:
            tau = None if radius is None else min(int(radius), self.bits)
            return estimate_costs(n, self.bits, k or 1, self.m, kth_distance=tau)
        return self._sampled_costs(queries, k or 1, radius)

    def _sampled_costs(self, qw: np.ndarray, k: int, radius: int | None) -> dict:
        """Mean of :func:`estimate_costs` over up to 8 queries, each with its ``k``-th distance and
        MIH's candidate count measured on a sample of the database."""
        from hashlearn.codes._kernels import hamming_matrix
        from hashlearn.index._mih import substring_keys
        from hashlearn.index.mih import default_m, segments, split_positions

        n = len(self)
        rng = np.random.default_rng(0)
        take = np.sort(rng.choice(n, size=min(n, SAMPLE), replace=False)) if n > SAMPLE else np.arange(n)
        sw = np.ascontiguousarray(self._words[take])
        qs = np.ascontiguousarray(qw[:SAMPLE_QUERIES])
        if self._mih is not None:
            m, seg = self._mih.m, self._mih.seg
        else:
            m = self.m or default_m(self.bits, n)
            seg = segments(split_positions(self.bits, m))
        skeys = substring_keys(sw, *seg)  # (m, s)
        qkeys = substring_keys(qs, *seg)  # (m, q)
        subd = np.bitwise_count((qkeys[:, :, None] ^ skeys[:, None, :]).view(np.uint64))  # (m, q, s)
        if radius is None:
            dist = hamming_matrix(qs, sw)
            rank = max(0, min(len(take) - 1, int(np.ceil(k * len(take) / n)) - 1))
            taus = np.partition(dist, rank, axis=1)[:, rank]
        else:
            taus = np.full(len(qs), min(int(radius), self.bits))
        scale = n / len(take)
        linear = mih = probes = cached = cands = 0.0
        for qi, tau in enumerate(taus):
            radii = np.array(_probe_radii(int(tau), m))[:, None]
            cand = float((subd[:, qi, :] <= radii).sum()) * scale
            c = estimate_costs(n, self.bits, k, m, kth_distance=int(tau), candidates=cand)
            linear += c["linear_ns"] / len(taus)
            mih += c["mih_ns"] / len(taus)
            probes += c["probes"] / len(taus)
            cached += c["probes_cached"] / len(taus)
            cands += cand / len(taus)
        return {
            "linear_ns": linear,
            "mih_ns": mih,
            "m": m,
            "expected_kth_distance": int(np.median(taus)),
            "probes": probes,
            "probes_cached": cached,
            "candidates": cands,
        }

    def _auto(self, key: tuple, qw: np.ndarray, k: int | None = None, radius: int | None = None) -> str:
        """The method a search uses: the index's own method, or ``auto``'s choice for ``key``, estimated
        from these queries only when there is no valid earlier choice (see ``REDECIDE_N_CHANGE``)."""
        if self.method != "auto":
            return self.method
        n = len(self)
        if n < MIN_MIH_N:
            return "flat"
        kept = self._decisions.get(key)
        if kept is not None and abs(n - kept["n"]) <= REDECIDE_N_CHANGE * kept["n"]:
            return kept["method"]
        costs = self.estimate_costs(k=k, radius=radius, queries=qw)
        self.auto_decisions += 1
        tau = float(costs.get("expected_kth_distance", -1))
        self._decisions[key] = {"method": pick_method(costs), "n": n, "tau": tau, "seen": tau}
        return self._decisions[key]["method"]

    def _observe_kth(self, key: tuple, dist: np.ndarray) -> None:
        """After a kNN search: fold its k-th distances into the moving average; forget the choice for
        ``key`` when that average has drifted from the distance the choice assumed."""
        kept = self._decisions.get(key)
        if kept is None or dist.size == 0 or kept["tau"] < 0:
            return
        last = dist[:, -1]
        last = last[last >= 0]
        if last.size == 0:
            return
        kept["seen"] += DRIFT_WEIGHT * (float(np.median(last)) - kept["seen"])
        if abs(kept["seen"] - kept["tau"]) > max(DRIFT_MIN_BITS, DRIFT_FRACTION * kept["tau"]):
            del self._decisions[key]

    def mih_tables(self):
        from hashlearn.index.mih import MIHTables

        if self._mih is None:
            self._mih = MIHTables(np.ascontiguousarray(self._words), self.bits, m=self.m, reorder=self.reorder)
        return self._mih

    def search(self, queries, k: int):
        """Exact kNN: ``(distances int32 (nq, k), ids int64 (nq, k))``, rows by (distance, id)."""
        k = int(k)
        if k < 0:
            raise InputError(f"k must be >= 0, got {k}")
        return self._knn(self._to_words(queries, "queries"), k)

    def _knn(self, qw: np.ndarray, k: int):
        from hashlearn.index._scan import knn_scan

        nq = len(qw)
        if k == 0 or nq == 0 or len(self) == 0:
            self.last_method = self.choose_method(k=k)
            return np.full((nq, k), -1, dtype=np.int32), np.full((nq, k), -1, dtype=np.int64)
        method = self._auto(("knn", k), qw, k=k)
        self.last_method = method
        words = np.ascontiguousarray(self._words)
        if method == "mih":
            dist, pos = self.mih_tables().knn(qw, words, k)
        else:
            dist, pos = knn_scan(qw, words, k, self.bits)
        self._observe_kth(("knn", k), dist)
        ids = np.where(pos >= 0, self._ids[np.maximum(pos, 0)], -1)
        return dist, ids

    def range_search(self, queries, radius: int):
        """All codes within ``radius``: ``(lims, distances, ids)`` as FAISS; query ``i``'s results are
        ``distances[lims[i]:lims[i+1]]``, ordered by (distance, id)."""
        radius = int(radius)
        if radius < 0:
            raise InputError(f"radius must be >= 0, got {radius}")
        return self._range(self._to_words(queries, "queries"), radius)

    def _range(self, qw: np.ndarray, radius: int):
        from hashlearn.index._scan import range_scan

        nq = len(qw)
        if nq == 0 or len(self) == 0:
            return np.zeros(nq + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        method = self._auto(("range", min(radius, self.bits)), qw, radius=radius)
        self.last_method = method
        words = np.ascontiguousarray(self._words)
        if method == "mih":
            lims, dist, pos = self.mih_tables().range(qw, words, min(radius, self.bits))
        else:
            lims, dist, pos = range_scan(qw, words, min(radius, self.bits), self.bits)
        return lims, dist, self._ids[pos]

    def count_within(self, queries, radius) -> np.ndarray:
        """How many codes lie within distance ``radius`` of each query: ``int64 (nq,)``.

        ``radius`` is one integer or one per query; a negative radius counts nothing. Exact, and
        as cheap as a range search that writes no results (the scan's or MIH's counting pass, per
        distinct radius). The number of codes at distance exactly ``d`` is
        ``count_within(q, d) - count_within(q, d - 1)``.
        """
        return self._count(self._to_words(queries, "queries"), radius)

    def _count(self, qw: np.ndarray, radius) -> np.ndarray:
        from hashlearn.index._scan import range_count

        nq = len(qw)
        radii = _per_query(radius, nq, "radius")
        counts = np.zeros(nq, dtype=np.int64)
        if nq == 0 or len(self) == 0:
            return counts
        counts[radii >= self.bits] = len(self)
        words = np.ascontiguousarray(self._words)
        for r in np.unique(radii[(radii >= 0) & (radii < self.bits)]):
            sel = np.flatnonzero(radii == r)
            q = np.ascontiguousarray(qw[sel])
            method = self._auto(("range", int(r)), q, radius=int(r))
            self.last_method = method
            if method == "mih":
                counts[sel] = self.mih_tables().count(q, words, int(r))
            else:
                counts[sel] = range_count(q, words, int(r), self.bits)
        return counts

    def search_ties(self, queries, k: int, ties: str = "index", seed: int = 0):
        """Exact kNN that says how the ``k``-th distance's tie group was cut.

        Returns ``(distances, ids, info)``: ``distances``/``ids`` as :meth:`search` (``-1`` pads
        past the number of codes) and ``info``, a dict of ``(nq,)`` arrays: ``kth_distance`` (the
        distance of a query's last result; ``-1`` when it has none), ``tied_at_kth`` (how many
        codes of the whole index lie at that distance) and ``tied_in_results`` (how many of them
        made it into the results).

        ``ties``: ``"index"`` orders each row by (distance, id), as :meth:`search`; ``"random"``
        orders each distance's codes at random, drawing the codes at the ``k``-th distance from
        that distance's whole tie group (every member equally likely to be shown), not from its
        lowest ids. The draw of query ``i`` depends only on ``(seed, i)``.
        """
        if ties not in TIE_RULES:
            raise InputError(f"ties: expected one of {', '.join(TIE_RULES)}, got {ties!r}")
        seed = _check_seed(seed)
        qw = self._to_words(queries, "queries")
        k = int(k)
        if k < 0:
            raise InputError(f"k must be >= 0, got {k}")
        dist, ids = self._knn(qw, k)
        used = self.last_method
        valid = ids >= 0
        shown = valid.sum(axis=1)
        has = shown > 0
        kth = np.full(len(qw), -1, dtype=np.int32)
        kth[has] = dist[has, shown[has] - 1]
        closer = ((dist < kth[:, None]) & valid).sum(axis=1)
        within = self._count(qw, kth)  # kth = -1 counts nothing
        info = {
            "kth_distance": kth,
            "tied_at_kth": np.where(has, within - closer, 0).astype(np.int64),
            "tied_in_results": (shown - closer).astype(np.int64),
        }
        if ties == "random":
            self._draw_ties(qw, dist, ids, kth, within, seed)
        self.last_method = used  # the kNN's method (the counts and draws chose their own)
        return dist, ids, info

    def _draw_ties(self, qw, dist, ids, kth, within, seed: int) -> None:
        """Rewrite each row of ``dist``/``ids`` in a seeded random order within each distance, its
        codes at the ``k``-th distance drawn from the whole tie group (range search to that distance)."""
        shown = (ids >= 0).sum(axis=1)
        todo = np.flatnonzero(shown > 0)
        for r in np.unique(kth[todo]):
            sel = todo[kth[todo] == r]
            # chunks of queries whose range results (within[q] each) stay under RANGE_CHUNK rows
            start = 0
            while start < len(sel):
                stop, total = start, 0
                while stop < len(sel) and (stop == start or total + within[sel[stop]] <= RANGE_CHUNK):
                    total += within[sel[stop]]
                    stop += 1
                part = sel[start:stop]
                lims, rd, rid = self._range(np.ascontiguousarray(qw[part]), int(r))
                for j, qi in enumerate(part):
                    d, i = rd[lims[j] : lims[j + 1]], rid[lims[j] : lims[j + 1]]
                    order = random_tie_order(d, np.random.default_rng([seed, int(qi)]))[: shown[qi]]
                    dist[qi, : shown[qi]] = d[order]
                    ids[qi, : shown[qi]] = i[order]
                start = stop

    # -- persistence --------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the index to directory ``path`` (``meta.json``, ``words.npy``, ``ids.npy``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "words.npy", np.ascontiguousarray(self._words))
        np.save(path / "ids.npy", self._ids)
        meta = {
            "format": "hashlearn-hamming-index",
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "method": self.method,
            "m": self.m,
            "reorder": self.reorder,
            "ntotal": len(self),
        }
        atomic_write_text(path / "meta.json", json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path, mmap: bool = True) -> HammingIndex:
        """Read an index written by :meth:`save`; with ``mmap`` the codes are memory-mapped."""
        path = Path(path)
        if not (path / "meta.json").exists():
            raise NotFoundError(f"no hashlearn index at {path} (missing meta.json)")
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != "hashlearn-hamming-index":
            raise InputError(f"{path}: not a hashlearn index")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(f"{path}: index format {meta['format_version']} is newer than this hashlearn reads")
        index = cls(
            meta["bits"], method=meta.get("method", "auto"), m=meta.get("m"), reorder=meta.get("reorder", False)
        )
        mode = "r" if mmap else None
        index._words = np.load(path / "words.npy", mmap_mode=mode)
        index._ids = np.asarray(np.load(path / "ids.npy"))
        if index._words.shape != (len(index._ids), index.nwords):
            raise InputError(f"{path}: words and ids disagree ({index._words.shape} vs {len(index._ids)} ids)")
        return index

    def __repr__(self) -> str:
        return f"HammingIndex(bits={self.bits}, method={self.method!r}, ntotal={len(self)})"


TIE_RULES = ("index", "random")
RANGE_CHUNK = 1 << 24  # range-search rows held at once while drawing ties at random


def random_tie_order(distances, rng) -> np.ndarray:
    """Positions of a run sorted by distance, in a random order (from ``rng``) within each distance:
    every order of each group of equal distances is equally likely."""
    d = np.asarray(distances)
    return np.lexsort((rng.permutation(len(d)), d))


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _per_query(value, nq: int, name: str) -> np.ndarray:
    """An integer, or one integer per query, as ``int64 (nq,)``."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise InputError(f"{name}: must be an integer or one integer per query, got {value!r}")
    if arr.ndim == 0:
        return np.full(nq, int(arr), dtype=np.int64)
    if arr.shape != (nq,):
        raise InputError(f"{name}: {arr.size} values for {nq} queries")
    return arr.astype(np.int64)


MAX_ID = 2**63 - 1  # ids are int64 (SQLite INTEGER); -1 marks a missing result, so ids are >= 0


def check_ids(ids, n: int | None = None, *, unique: bool = True, name: str = "ids") -> np.ndarray:
    """Validate ids: 1-D integers (or integral floats) in ``[0, 2**63 - 1]``, unique unless
    ``unique=False``, ``n`` of them when ``n`` is given. Returns ``int64``.

    That range is exactly what a search can return: results are ``int64`` and ``-1`` pads a row
    with fewer than ``k`` results, so negative ids (and ``uint64`` ids past ``2**63 - 1``, which
    would wrap to negative) are refused here rather than silently never found.
    """
    if isinstance(ids, (list, tuple)):
        values = []
        for value in ids:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
                raise InputError(f"{name}: must be integers, got {value!r}")
            if isinstance(value, (float, np.floating)):
                if not math.isfinite(value) or value != math.floor(value):
                    raise InputError(f"{name}: must be integers (found {value!r})")
            if not 0 <= value <= MAX_ID:
                raise InputError(f"{name}: {int(value)} is out of range (ids go from 0 to 2**63-1 = {MAX_ID})")
            values.append(int(value))
        arr = np.array(values, dtype=np.int64)
    else:
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise InputError(f"{name}: expected a 1-D array, got shape {arr.shape}")
        if arr.size and arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
                raise InputError(f"{name}: must be integers (found NaN or fractional values)")
            bad = arr[(arr < 0) | (arr >= 2.0**63)]
        elif arr.size and arr.dtype.kind == "u":
            bad = arr[arr > MAX_ID]
        elif arr.size and arr.dtype.kind == "i":
            bad = arr[arr < 0]
        elif arr.size:
            raise InputError(f"{name}: must be integers, got dtype {arr.dtype}")
        else:
            bad = arr[:0]
        if bad.size:
            raise InputError(
                f"{name}: {bad.ravel()[0]} is out of range (ids go from 0 to 2**63-1 = {MAX_ID}); {bad.size} such ids"
            )
        arr = arr.astype(np.int64)
    if n is not None and len(arr) != n:
        raise InputError(f"{name}: {len(arr)} ids for {n} codes")
    if unique:
        uniq, counts = np.unique(arr, return_counts=True)
        if len(uniq) != len(arr):
            raise InputError(f"{name}: duplicate ids {uniq[counts > 1][:5].tolist()}")
    return arr


def index_factory(bits: int, spec: str = "auto") -> HammingIndex:
    """Build an index from a spec string, FAISS style: ``"auto"``, ``"flat"``, ``"mih"``,
    ``"mih:m=4"``, ``"mih:m=4,reorder"``."""
    name, _, opts = spec.strip().partition(":")
    name = name.strip().lower()
    kwargs: dict = {}
    for opt in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = opt.partition("=")
        if key == "m" and eq:
            try:
                kwargs["m"] = int(value)
            except ValueError:
                raise InputError(f"index spec {spec!r}: m must be an integer") from None
        elif key == "reorder" and not eq:
            kwargs["reorder"] = True
        else:
            raise InputError(f"index spec {spec!r}: unknown option {opt!r} (expected m=INT or reorder)")
    if name not in METHODS:
        raise InputError(f"index spec {spec!r}: unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return HammingIndex(bits, method=name, **kwargs)
