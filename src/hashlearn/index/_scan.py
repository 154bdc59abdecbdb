"""Linear-scan kernels: exact kNN and range search over packed codes viewed as ``uint64`` words.

Layout and conventions shared by every kernel here:

* the database is ``(n, nw)`` ``uint64`` words, stored in **increasing id order**, so a tie in
  distance broken by position is broken by id;
* codes of 1-4 words are compared 32 at a time with vector instructions (``_simd.py``): each
  database block is byte-transposed once per query block, then every query of the block gets a
  32-bit mask per 32 codes of which may beat its threshold; only those are re-measured exactly
  (scalar ``popcnt``) and offered to the selection, so after the first blocks almost no code
  leaves the vector loop. ``_gen_scan.py`` writes one kernel per width (the query's bytes must be
  a compile-time count to stay in registers); wider codes use a scalar kernel.
* queries are processed in blocks of ``QUERY_BLOCK``; inside a block the database is walked in
  blocks of about ``DB_BLOCK_BYTES``, so each database block is read from memory (and
  transposed) once per query block and then served from L1 to every query of the block.
  Query blocks are spread over the threads (``numba.prange``).
* calls of fewer queries than threads, or of 1-2 queries (what a service sees), neither block
  queries nor transpose: :func:`knn_scan_split` splits the database into one slice per thread,
  scans each with a scalar loop unrolled for 1-2 words, and merges the slices' ``k`` best by
  (distance, position) (:func:`count_split` likewise counts for range counts).
* distances are small integers (``0..bits``), so selection is a counting sort: each query keeps a
  histogram of its candidates' distances and a threshold ``tau`` (accept ``d < tau``) that only
  shrinks; when its buffer fills, it is compacted to the ``k`` best in (distance, position) order.
"""

from __future__ import annotations

import numba
import numpy as np

from hashlearn.codes._kernels import popcount64

QUERY_BLOCK = 256
MIN_VECTOR_QUERIES = 3
DB_BLOCK_BYTES = 8 * 1024


def db_block(nw: int) -> int:
    """Codes per database block: about ``DB_BLOCK_BYTES``, a multiple of 32 (one vector step)."""
    return max(64, DB_BLOCK_BYTES // (8 * nw)) // 32 * 32


def query_block(nq: int, k: int) -> int:
    """Queries per block: up to ``QUERY_BLOCK`` (each database block is transposed once per query
    block, so larger blocks amortise it), with a number of blocks that is a multiple of the
    threads (equal shares), and candidate buffers of at most ~64 MiB per block."""
    threads = max(1, numba.get_num_threads())
    cap = max(1, min(QUERY_BLOCK, (64 << 20) // (12 * (2 * k + 257))))
    blocks = threads * -(-nq // (threads * cap))
    return int(max(1, -(-nq // max(1, blocks))))


@numba.njit(cache=True, nogil=True)
def _transpose(d8, j0, nv, tr):
    """``tr[b, i] = d8[j0 + i, b]`` for ``i < nv``: byte ``b`` of consecutive codes side by side."""
    nb = d8.shape[1]
    for i in range(nv):
        for b in range(nb):
            tr[b, i] = d8[j0 + i, b]


@numba.njit(cache=True, nogil=True)
def _select(buf_d, buf_p, count, hist, k, out_d, out_p):
    """Write the ``k`` best of one query's buffer to ``out_d``/``out_p`` in (distance, position)
    order: compaction to at most ``k``, then :func:`sort_run` (the buffer is in position order)."""
    c, _ = _compact(buf_d, buf_p, count, hist, k)
    sort_run(buf_d, buf_p, 0, c, hist.shape[0] - 1)
    out_d[:c] = buf_d[:c]
    out_p[:c] = buf_p[:c]


@numba.njit(cache=True, nogil=True)
def _compact(buf_d, buf_p, count, hist, k):
    """Keep the ``k`` best of a buffer (held in position order) by (distance, position).

    Returns ``(new_count, new_tau)``: every later candidate needs ``d < new_tau``.
    """
    nd = hist.shape[0]
    cum = 0
    tau = nd
    for t in range(nd):
        if cum + hist[t] >= k:
            tau = t
            break
        cum += hist[t]
    if tau == nd:  # fewer than k candidates so far
        return count, nd
    keep_at_tau = k - cum
    out = 0
    for i in range(count):
        d = buf_d[i]
        if d < tau or (d == tau and keep_at_tau > 0):
            if d == tau:
                keep_at_tau -= 1
            buf_d[out] = d
            buf_p[out] = buf_p[i]
            out += 1
    hist[tau] = k - cum
    for t in range(tau + 1, nd):
        hist[t] = 0
    return out, tau


@numba.njit(cache=True, nogil=True)
def _push(buf_d, buf_p, count, hist, tau, qi, d, pos, k, limit):
    """Append a candidate for local query ``qi``; compact when the buffer passes ``limit``.

    Returns the query's threshold afterwards.
    """
    c = count[qi]
    buf_d[qi, c] = d
    buf_p[qi, c] = pos
    hist[qi, d] += 1
    c += 1
    t = tau[qi]
    if c > limit:
        c, t = _compact(buf_d[qi], buf_p[qi], c, hist[qi], k)
        tau[qi] = t
    count[qi] = c
    return t


@numba.njit(cache=True, nogil=True)
def _dist(qw, qi, dw, j):
    acc = 0
    for w in range(qw.shape[1]):
        acc += popcount64(qw[qi, w] ^ dw[j, w])
    return np.int64(acc)


@numba.njit(cache=True, nogil=True)
def sort_run(out_d, out_p, a, b, bits):
    """Sort ``out_d[a:b]`` (with ``out_p``) by (distance, position), ``out_p`` ascending in a tie.

    A stable counting sort by distance: the run must arrive in increasing position order.
    """
    m = b - a
    if m <= 1:
        return
    start = np.zeros(bits + 2, dtype=np.int64)
    for i in range(a, b):
        start[out_d[i] + 1] += 1
    for d in range(bits + 1):
        start[d + 1] += start[d]
    tmp_d = out_d[a:b].copy()
    tmp_p = out_p[a:b].copy()
    for i in range(m):
        d = tmp_d[i]
        r = start[d]
        start[d] += 1
        out_d[a + r] = d
        out_p[a + r] = tmp_p[i]


MIN_SPLIT_CODES = 1 << 16  # a database split between threads for fewer queries than threads


def split_parts(nq: int, n: int) -> int:
    """Slices to split the database into (0: don't), for ``nq`` queries over ``n`` codes: one per thread
    when there are fewer queries than threads (query blocks would leave threads idle: a single query
    runs on one), else one for fewer than ``MIN_VECTOR_QUERIES`` queries (the split kernel's scalar loop
    is specialised for 1-2 words, which the general scalar kernel is not)."""
    threads = max(1, numba.get_num_threads())
    if nq <= 0:
        return 0
    if nq < threads and n >= MIN_SPLIT_CODES:
        return threads
    return 1 if nq < MIN_VECTOR_QUERIES else 0


@numba.njit(cache=True, nogil=True, inline="always")
def _dist_fixed(qw, qi, dw, j, nw):
    """``_dist`` with the word count known to the caller's loop (1 and 2 words unrolled)."""
    if nw == 1:
        return np.int64(popcount64(qw[qi, 0] ^ dw[j, 0]))
    if nw == 2:
        return np.int64(popcount64(qw[qi, 0] ^ dw[j, 0]) + popcount64(qw[qi, 1] ^ dw[j, 1]))
    return _dist(qw, qi, dw, j)


@numba.njit(parallel=True, cache=True, nogil=True)
def knn_scan_split(qw, dw, k, bits, parts):
    """Exact kNN of a few queries with the database split into ``parts`` slices scanned in parallel
    (scalar kernel); each slice's ``k`` best are merged by (distance, position)."""
    nq = qw.shape[0]
    n = dw.shape[0]
    nd = bits + 1
    limit = k + max(k, 256)
    cap = limit + 1
    part_d = np.full((parts, nq, k), -1, dtype=np.int32)
    part_p = np.full((parts, nq, k), -1, dtype=np.int64)
    for p in numba.prange(parts):
        j0 = p * n // parts
        j1 = (p + 1) * n // parts
        buf_d = np.empty((nq, cap), dtype=np.int32)
        buf_p = np.empty((nq, cap), dtype=np.int64)
        count = np.zeros(nq, dtype=np.int64)
        tau = np.full(nq, nd, dtype=np.int64)
        hist = np.zeros((nq, nd), dtype=np.int64)
        nw = dw.shape[1]
        for qi in range(nq):
            t = tau[qi]
            if nw == 1:
                q0 = qw[qi, 0]
                for j in range(j0, j1):
                    d = np.int64(popcount64(q0 ^ dw[j, 0]))
                    if d < t:
                        t = _push(buf_d, buf_p, count, hist, tau, qi, d, j, k, limit)
            else:
                for j in range(j0, j1):
                    d = _dist_fixed(qw, qi, dw, j, nw)
                    if d < t:
                        t = _push(buf_d, buf_p, count, hist, tau, qi, d, j, k, limit)
            _select(buf_d[qi], buf_p[qi], count[qi], hist[qi], k, part_d[p, qi], part_p[p, qi])
    out_d = np.full((nq, k), -1, dtype=np.int32)
    out_p = np.full((nq, k), -1, dtype=np.int64)
    keys = np.empty(parts * k, dtype=np.int64)
    for qi in range(nq):
        m = 0
        for p in range(parts):
            for i in range(k):
                if part_p[p, qi, i] >= 0:
                    keys[m] = np.int64(part_d[p, qi, i]) * n + part_p[p, qi, i]
                    m += 1
        order = np.argsort(keys[:m])
        for i in range(min(k, m)):
            key = keys[order[i]]
            out_d[qi, i] = key // n
            out_p[qi, i] = key % n
    return out_d, out_p


@numba.njit(parallel=True, cache=True, nogil=True)
def count_split(qw, dw, radius, parts):
    """How many codes lie within ``radius`` of each of a few queries, the database split into ``parts``
    slices counted in parallel."""
    nq = qw.shape[0]
    n = dw.shape[0]
    counts = np.zeros((parts, nq), dtype=np.int64)
    for p in numba.prange(parts):
        j0 = p * n // parts
        j1 = (p + 1) * n // parts
        nw = dw.shape[1]
        for qi in range(nq):
            c = 0
            for j in range(j0, j1):
                if _dist_fixed(qw, qi, dw, j, nw) <= radius:
                    c += 1
            counts[p, qi] = c
    return counts.sum(axis=0)


def knn_scan(qw: np.ndarray, dw: np.ndarray, k: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN by linear scan: ``(dist int32 (nq, k), positions int64 (nq, k))``.

    Rows are in (distance, position) order; missing results (``k > n``) are ``-1``.
    """
    from hashlearn.index._scan_kernels import KNN, knn_scan_n

    parts = split_parts(qw.shape[0], dw.shape[0])
    if parts and 0 < k <= dw.shape[0]:
        return knn_scan_split(np.ascontiguousarray(qw), np.ascontiguousarray(dw), int(k), int(bits), parts)
    qb = query_block(qw.shape[0], int(k))
    # the vector kernels transpose each database block once per query block: worth it from
    # ~3 queries per block (measured); fewer (single queries) scan the rows directly
    kernel = KNN.get(dw.shape[1], knn_scan_n) if qb >= MIN_VECTOR_QUERIES else knn_scan_n
    return kernel(np.ascontiguousarray(qw), np.ascontiguousarray(dw), int(k), int(bits), qb, db_block(dw.shape[1]))


def range_count(qw: np.ndarray, dw: np.ndarray, radius: int, bits: int) -> np.ndarray:
    """Number of codes within ``radius`` of each query (``int64 (nq,)``): the counting pass of
    :func:`range_scan`, which writes no results."""
    from hashlearn.index._scan_kernels import RANGE, range_scan_n

    q = np.ascontiguousarray(qw)
    dw = np.ascontiguousarray(dw)
    parts = split_parts(q.shape[0], dw.shape[0])
    if parts:
        return np.asarray(count_split(q, dw, int(radius), parts), dtype=np.int64)
    qb = query_block(q.shape[0], 0)
    kernel = RANGE.get(dw.shape[1], range_scan_n) if qb >= MIN_VECTOR_QUERIES else range_scan_n
    lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    empty_d, empty_p = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
    return np.asarray(kernel(q, dw, int(radius), int(bits), qb, db_block(dw.shape[1]), lims, empty_d, empty_p),
                      dtype=np.int64)


def range_scan(qw: np.ndarray, dw: np.ndarray, radius: int, bits: int):
    """Range search by linear scan: ``(lims, dist int32, positions int64)`` as FAISS.

    Each query's run is in (distance, position) order.
    """
    from hashlearn.index._scan_kernels import RANGE, range_scan_n

    q = np.ascontiguousarray(qw)
    dw = np.ascontiguousarray(dw)
    block = db_block(dw.shape[1])
    qb = query_block(q.shape[0], 0)
    kernel = RANGE.get(dw.shape[1], range_scan_n) if qb >= MIN_VECTOR_QUERIES else range_scan_n
    zeros_lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    empty_d = np.empty(0, dtype=np.int32)
    empty_p = np.empty(0, dtype=np.int64)
    counts = kernel(q, dw, int(radius), int(bits), qb, block, zeros_lims, empty_d, empty_p)
    lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=lims[1:])
    out_d = np.empty(lims[-1], dtype=np.int32)
    out_p = np.empty(lims[-1], dtype=np.int64)
    if lims[-1]:
        kernel(q, dw, int(radius), int(bits), qb, block, lims, out_d, out_p)
    return lims, out_d, out_p
