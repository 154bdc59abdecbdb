"""numba kernels of the evaluator: one pass over the database per query.

For each query the database is reduced to per-Hamming-distance buckets (a counting sort
over the small integer distances): items, relevant items, the sum of graded relevance
``r`` and the sum of gains ``2^r - 1``. Every metric with the ``expected`` tie rule follows
from those buckets in O(bits) (plus a short hypergeometric sum at a cutoff that splits a
tie group). The ``index`` tie rule needs the order inside each bucket, so it also builds the
the metrics in a second pass over the database in index order (O(N) per query, no sort).

Formulas (McSherry & Najork, ECIR 2008, "Computing information retrieval performance
measures efficiently in the presence of ties"): a tie group holding positions
``s+1 .. s+n`` with ``m`` relevant items, preceded by ``c0`` relevant items, is in a
uniformly random order. Position ``s+i`` is relevant with probability ``m/n``, and given
that, the expected number of relevant items among the ``i-1`` group positions before it is
``(i-1)(m-1)/(n-1)``. So the expected contribution of the group to ``Σ P@n·rel(n)`` is
``Σ_i (m/n)(c0 + 1 + (i-1)(m-1)/(n-1)) / (s+i)``, a sum of ``(a + b·i)/(s+i)`` that
harmonic numbers give in O(1). When a cutoff ``R`` splits the group (``t = R - s`` group
positions inside), the number ``X`` of relevant items inside is hypergeometric and divides
the sum, so the expectation is taken exactly term by term over ``X = x``; given ``X = x``
the ``x`` relevant items are uniformly placed among the ``t`` positions, which is the
same formula with ``n → t, m → x``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from hashlearn.codes._kernels import popcount64

# below this group size the harmonic-number shortcut is replaced by a direct sum (exactness
# on small groups, no cancellation when s is large and n small)
_DIRECT_SUM_MAX = 64


@numba.njit(cache=True, nogil=True, inline="always")
def _lin_harm(a, b, s, n, harmonic):
    """``Σ_{i=1..n} (a + b·i) / (s + i)``."""
    if n <= _DIRECT_SUM_MAX:
        acc = 0.0
        for i in range(1, n + 1):
            acc += (a + b * i) / (s + i)
        return acc
    return b * n + (a - b * s) * (harmonic[s + n] - harmonic[s])


@numba.njit(cache=True, nogil=True)
def _group_sum(s, n, m, base, graded_sum, harmonic):
    """Expected ``Σ_{relevant pos p in group} (base + Σ_{q≤p in group} r_q) / p``.

    ``base`` is the (graded) relevance accumulated before the group; ``graded_sum`` the sum of
    ``r`` over the group (``= m`` for binary relevance, which gives AP's numerator; with
    ``base = c0``). Non-relevant items have ``r = 0``.
    """
    if m == 0 or n == 0:
        return 0.0
    if n == 1:
        return (m * base + graded_sum) / (s + 1.0)
    b = (m - 1.0) * graded_sum / (n * (n - 1.0))
    a = m * base / n + graded_sum / n - b
    return _lin_harm(a, b, s, n, harmonic)


@numba.njit(cache=True, nogil=True)
def _log_comb(a, b):
    return math.lgamma(a + 1.0) - math.lgamma(b + 1.0) - math.lgamma(a - b + 1.0)


@numba.njit(cache=True, nogil=True)
def _finish_bucketed(
    cnt,
    rel,
    rsum,
    gsum,
    hist_r,
    gain,
    cutoffs,
    grid,
    harmonic,
    discount,
    ap_out,
    wap_out,
    ndcg_out,
    acg_out,
    has_out,
    relat_out,
):
    """All metrics of one query from its buckets, expected over the orders of ties."""
    nb = cnt.shape[0]
    nc = cutoffs.shape[0]
    ng = grid.shape[0]
    # ideal DCG at each cutoff, from the histogram of graded relevance (divided below)
    for k in range(nc):
        ndcg_out[k] = _ideal_dcg(hist_r, gain, discount, cutoffs[k])

    s = 0  # positions before the current bucket
    c0 = 0  # relevant items before
    g0 = 0.0  # graded relevance before
    sap = 0.0  # expected Σ P@n rel(n) over the full buckets so far
    swap = 0.0  # same with ACG@n (weighted mAP)
    dcg = 0.0
    acg = 0.0
    k = 0
    j = 0
    for d in range(nb):
        n = cnt[d]
        if n == 0:
            continue
        m = rel[d]
        # precision@N grid points that fall in this bucket (expected relevant count is linear)
        while j < ng and grid[j] <= s + n:
            relat_out[j] = c0 + m * (grid[j] - s) / n
            j += 1
        # cutoffs inside this bucket (strictly before its end): hypergeometric over X
        while k < nc and cutoffs[k] < s + n:
            t = cutoffs[k] - s
            mean_gain = gsum[d] / n
            ndcg_out[k] = (dcg + mean_gain * (discount[s + t] - discount[s])) / ndcg_out[k] if ndcg_out[k] > 0 else 0.0
            acg_out[k] = (acg + rsum[d] * t / n) / cutoffs[k]
            has_out[k] = 1.0 if c0 + min(m, t) > 0 else 0.0
            ap = 0.0
            wap = 0.0
            xlo = max(0, t - (n - m))
            xhi = min(m, t)
            logp = _log_comb(m, xlo) + _log_comb(n - m, t - xlo) - _log_comb(n, t)
            for x in range(xlo, xhi + 1):
                if x > xlo:
                    xm = x - 1  # ratio p(x)/p(x-1)
                    logp += math.log((m - xm) * (t - xm)) - math.log(x * (n - m - t + x))
                kk = c0 + x
                if kk == 0:
                    continue
                p = math.exp(logp)
                ap += p * (sap + _group_sum(s, t, x, c0, x, harmonic)) / kk
                rs = rsum[d] * x / m if m > 0 else 0.0
                wap += p * (swap + _group_sum(s, t, x, g0, rs, harmonic)) / kk
            ap_out[k] = ap
            wap_out[k] = wap
            k += 1
        # the whole bucket is inside every remaining cutoff
        sap += _group_sum(s, n, m, c0, m, harmonic)
        swap += _group_sum(s, n, m, g0, rsum[d], harmonic)
        dcg += gsum[d] / n * (discount[s + n] - discount[s])
        acg += rsum[d]
        s += n
        c0 += m
        g0 += rsum[d]
        while k < nc and cutoffs[k] == s:
            ndcg_out[k] = dcg / ndcg_out[k] if ndcg_out[k] > 0 else 0.0
            acg_out[k] = acg / s
            has_out[k] = 1.0 if c0 > 0 else 0.0
            ap_out[k] = sap / c0 if c0 > 0 else 0.0
            wap_out[k] = swap / c0 if c0 > 0 else 0.0
            k += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _first_at_least(sorted_values, v):
    """Index of the first entry ``>= v`` (``len`` when none)."""
    lo, hi = 0, sorted_values.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_values[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _ideal_dcg(hist_r, gain, discount, p):
    pos = 0
    idcg = 0.0
    for v in range(hist_r.shape[0] - 1, 0, -1):
        c = hist_r[v]
        if c == 0:
            continue
        end = min(pos + c, p)
        idcg += gain[v] * (discount[end] - discount[pos])
        pos = end
        if pos >= p:
            break
    return idcg


@numba.njit(cache=True, nogil=True)
def _index_pass(
    qi,
    q_words,
    d_words,
    q_labels,
    d_labels,
    single_label,
    cnt,
    rel,
    rsum,
    hist_r,
    gain,
    cutoffs,
    grid,
    discount,
    ap_out,
    wap_out,
    ndcg_out,
    acg_out,
    has_out,
    relat_out,
):
    """All metrics of one query with ties broken by database index (a stable sort).

    A second pass over the database in index order: an item at distance ``h`` is the next
    one of its bucket, so its rank is the bucket's start plus the items of the bucket seen
    so far, and likewise the relevant items and graded relevance before it. Each relevant
    item adds its terms to the first cutoff (and precision@N point) that includes it;
    prefix sums over the cutoffs finish the job. No ranked list is materialised.
    """
    nw = q_words.shape[1]
    nd = d_words.shape[0]
    nlw = q_labels.shape[1]
    nb = cnt.shape[0]
    nc = cutoffs.shape[0]
    ng = grid.shape[0]
    next_pos = np.empty(nb, dtype=np.int64)  # 1-based rank of the next item of each bucket
    rel_before = np.empty(nb, dtype=np.int64)
    graded_before = np.empty(nb, dtype=np.float64)
    acc = 1
    racc = 0
    gacc = 0.0
    for h in range(nb):
        next_pos[h] = acc
        rel_before[h] = racc
        graded_before[h] = gacc
        acc += cnt[h]
        racc += rel[h]
        gacc += rsum[h]
    k_hits = np.zeros(nc + 1, dtype=np.int64)
    k_ap = np.zeros(nc + 1)
    k_wap = np.zeros(nc + 1)
    k_dcg = np.zeros(nc + 1)
    k_graded = np.zeros(nc + 1)
    g_hits = np.zeros(ng + 1, dtype=np.int64)
    qlab = q_labels[qi, 0]
    for j in range(nd):
        h = 0
        for w in range(nw):
            h += popcount64(q_words[qi, w] ^ d_words[j, w])
        if single_label:
            r = 1 if d_labels[j, 0] == qlab else 0
        else:
            r = 0
            for w in range(nlw):
                r += popcount64(q_labels[qi, w] & d_labels[j, w])
        pos = next_pos[h]
        next_pos[h] = pos + 1
        if r > 0:
            rel_before[h] += 1
            graded_before[h] += r
            k = _first_at_least(cutoffs, pos)
            k_hits[k] += 1
            k_ap[k] += rel_before[h] / pos
            k_wap[k] += graded_before[h] / pos
            k_dcg[k] += gain[r] * (discount[pos] - discount[pos - 1])
            k_graded[k] += r
            g_hits[_first_at_least(grid, pos)] += 1
    c = 0
    for i in range(ng):
        c += g_hits[i]
        relat_out[i] = c
    c = 0
    sap = 0.0
    swap = 0.0
    dcg = 0.0
    g = 0.0
    for k in range(nc):
        c += k_hits[k]
        sap += k_ap[k]
        swap += k_wap[k]
        dcg += k_dcg[k]
        g += k_graded[k]
        idcg = _ideal_dcg(hist_r, gain, discount, cutoffs[k])
        ndcg_out[k] = dcg / idcg if idcg > 0 else 0.0
        acg_out[k] = g / cutoffs[k]
        has_out[k] = 1.0 if c > 0 else 0.0
        ap_out[k] = sap / c if c > 0 else 0.0
        wap_out[k] = swap / c if c > 0 else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def evaluate_chunk(
    q_words,
    d_words,
    q_labels,
    d_labels,
    single_label,
    expected_ties,
    gain,
    cutoffs,
    grid,
    harmonic,
    discount,
    ap_out,
    wap_out,
    ndcg_out,
    acg_out,
    has_out,
    relat_out,
    bucket_cnt,
    bucket_rel,
    n_threads,
):
    """Evaluate a chunk of queries against the whole database.

    ``q_labels``/``d_labels``: ``uint64`` words; for single-label data word 0 is the class
    index, otherwise the multi-hot labels as a bitmask. ``cutoffs`` and ``grid`` are sorted
    positions in ``1..N``. Outputs are per query (rows of the ``*_out`` arrays); the
    per-distance counts go to ``bucket_cnt``/``bucket_rel`` (rows of ``bits + 1``).
    """
    nq, nw = q_words.shape
    nd = d_words.shape[0]
    nlw = q_labels.shape[1]
    nb = bucket_cnt.shape[1]
    max_r = gain.shape[0] - 1
    nblocks = min(nq, 8 * n_threads)
    for blk in numba.prange(nblocks):
        q_start = blk * nq // nblocks
        q_stop = (blk + 1) * nq // nblocks
        cnt = np.zeros(nb, dtype=np.int64)
        rel = np.zeros(nb, dtype=np.int64)
        rsum = np.zeros(nb, dtype=np.float64)
        gsum = np.zeros(nb, dtype=np.float64)
        hist_r = np.zeros(max_r + 1, dtype=np.int64)
        for qi in range(q_start, q_stop):
            cnt[:] = 0
            rel[:] = 0
            rsum[:] = 0.0
            gsum[:] = 0.0
            hist_r[:] = 0
            qlab = q_labels[qi, 0]
            # ---- the one pass over the database ----
            if nw == 1 and single_label:
                qw = q_words[qi, 0]
                for j in range(nd):
                    h = popcount64(qw ^ d_words[j, 0])
                    r = 1 if d_labels[j, 0] == qlab else 0
                    cnt[h] += 1
                    rel[h] += r
            else:
                for j in range(nd):
                    h = 0
                    for w in range(nw):
                        h += popcount64(q_words[qi, w] ^ d_words[j, w])
                    if single_label:
                        r = 1 if d_labels[j, 0] == qlab else 0
                    else:
                        r = 0
                        for w in range(nlw):
                            r += popcount64(q_labels[qi, w] & d_labels[j, w])
                    cnt[h] += 1
                    if r > 0:
                        rel[h] += 1
                        if not single_label:
                            rsum[h] += r
                            gsum[h] += gain[r]
                            hist_r[r] += 1
            total_rel = 0
            for h in range(nb):
                total_rel += rel[h]
                bucket_cnt[qi, h] = cnt[h]
                bucket_rel[qi, h] = rel[h]
            if single_label:
                for h in range(nb):
                    rsum[h] = rel[h]
                    gsum[h] = rel[h]
                hist_r[1] = total_rel
            hist_r[0] = nd - total_rel
            if expected_ties:
                _finish_bucketed(
                    cnt,
                    rel,
                    rsum,
                    gsum,
                    hist_r,
                    gain,
                    cutoffs,
                    grid,
                    harmonic,
                    discount,
                    ap_out[qi],
                    wap_out[qi],
                    ndcg_out[qi],
                    acg_out[qi],
                    has_out[qi],
                    relat_out[qi],
                )
            else:
                _index_pass(
                    qi,
                    q_words,
                    d_words,
                    q_labels,
                    d_labels,
                    single_label,
                    cnt,
                    rel,
                    rsum,
                    hist_r,
                    gain,
                    cutoffs,
                    grid,
                    discount,
                    ap_out[qi],
                    wap_out[qi],
                    ndcg_out[qi],
                    acg_out[qi],
                    has_out[qi],
                    relat_out[qi],
                )
