"""Linear-scan kernels: exact kNN and range search over packed codes viewed as ``uint64`` words.

Layout and conventions shared by every kernel here:

* the database is ``(n, nw)`` ``uint64`` words, stored in **increasing id order**, so a tie in
  distance broken by position is broken by id;
* queries come in a multiple of 4 (padded here): at 64 bits four queries share each load of a
  database word (register blocking); kernels for 1-4 words are unrolled (``_gen_scan.py``
  writes them: a runtime loop over words measured 2x slower). The distance test is fused with
  the popcount, a branch almost never taken once the threshold has settled. (LLVM's vectorised popcount on AVX2 was 3x
  slower than scalar ``popcnt`` here, so the kernels stay scalar.)
* queries are processed in blocks of ``QUERY_BLOCK``; inside a block the database is walked in
  blocks of about 32 KiB, so each database block is read from memory once per query block and
  then served from L1/L2 to every query of the block. Query blocks are spread over the threads
  (``numba.prange``).
* distances are small integers (``0..bits``), so selection is a counting sort: each query keeps a
  histogram of its candidates' distances and a threshold ``tau`` (accept ``d < tau``) that only
  shrinks; when its buffer fills, it is compacted to the ``k`` best in (distance, position) order.
"""

from __future__ import annotations

import numba
import numpy as np

from hashlearn.codes._kernels import popcount64

QUERY_BLOCK = 64
DB_BLOCK_BYTES = 32 * 1024


def db_block(nw: int) -> int:
    return max(64, DB_BLOCK_BYTES // (8 * nw))


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


def _pad_queries(qw: np.ndarray) -> np.ndarray:
    nq = qw.shape[0]
    pad = (-nq) % 4
    if pad == 0:
        return np.ascontiguousarray(qw)
    return np.concatenate([qw, np.zeros((pad, qw.shape[1]), dtype=np.uint64)])


def knn_scan(qw: np.ndarray, dw: np.ndarray, k: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN by linear scan: ``(dist int32 (nq, k), positions int64 (nq, k))``.

    Rows are in (distance, position) order; missing results (``k > n``) are ``-1``.
    """
    from hashlearn.index._scan_kernels import KNN, knn_scan_n

    nq = qw.shape[0]
    kernel = KNN.get(dw.shape[1], knn_scan_n)
    dist, pos = kernel(_pad_queries(qw), dw, int(k), int(bits), db_block(dw.shape[1]))
    return dist[:nq], pos[:nq]


def range_scan(qw: np.ndarray, dw: np.ndarray, radius: int, bits: int):
    """Range search by linear scan: ``(lims, dist int32, positions int64)`` as FAISS.

    Each query's run is in (distance, position) order.
    """
    from hashlearn.index._scan_kernels import RANGE, range_scan_n

    nq = qw.shape[0]
    kernel = RANGE.get(dw.shape[1], range_scan_n)
    q = _pad_queries(qw)
    block = db_block(dw.shape[1])
    zeros_lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    empty_d = np.empty(0, dtype=np.int32)
    empty_p = np.empty(0, dtype=np.int64)
    counts = kernel(q, dw, int(radius), int(bits), block, zeros_lims, empty_d, empty_p)
    lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=lims[1:])
    out_d = np.empty(lims[-1], dtype=np.int32)
    out_p = np.empty(lims[-1], dtype=np.int64)
    if lims[-1]:
        kernel(q, dw, int(radius), int(bits), block, lims, out_d, out_p)
    return lims[: nq + 1], out_d[: lims[nq]], out_p[: lims[nq]]
