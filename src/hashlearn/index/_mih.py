"""Multi-index hashing kernels (Norouzi, Punjani & Fleet, "Fast search in Hamming space with
multi-index hashing", CVPR 2012; "Fast exact search in Hamming space with multi-index hashing",
TPAMI 2014).

A code is cut into ``m`` disjoint substrings; substring ``i`` indexes every code in a direct-address
table (CSR: ``offsets`` of length ``2**s_i + 1`` into a permutation of positions, each bucket in
increasing position order). By pigeonhole, a code at distance ``d <= m*r + i`` from the query has
substring ``j <= i`` within ``r`` or substring ``j > i`` within ``r - 1`` of the query's
(TPAMI 2014, Prop. 1). kNN therefore probes radius ``r = 0, 1, ...`` substring by substring,
verifies every new candidate with its full distance, and stops once ``k`` verified candidates lie
within the radius already covered, ``m*r + i``: the result is exact, identical to a linear scan.

Substrings are lists of bit positions in the ``uint64`` word layout (bit ``p`` of word ``w`` is
position ``64*w + p``); a key is gathered from runs of consecutive positions ("segments").
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from hashlearn.codes._kernels import popcount64
from hashlearn.index._scan import _dist


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Hint the CPU to fetch ``arr[i, j]`` (2-D) into cache (LLVM ``prefetch``; no effect on results)."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], signature.args[1:], strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, idx)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        zero, three, one = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
        builder.call(fn, [builder.bitcast(ptr, i8p), zero, three, one])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _next_combination(v, limit):
    """Next integer after ``v`` with as many set bits (Gosper's hack), or ``limit`` after the last."""
    if v == 0:
        return limit
    c = v & -v
    rr = v + c
    nxt = (((rr ^ v) >> 2) // c) | rr
    return nxt if nxt < limit else limit


@numba.njit(cache=True, nogil=True, inline="always")
def _key(words, row, seg_start, seg_word, seg_shift, seg_width, seg_out, i):
    key = np.uint64(0)
    for s in range(seg_start[i], seg_start[i + 1]):
        mask = (np.uint64(1) << np.uint64(seg_width[s])) - np.uint64(1)
        key |= ((words[row, seg_word[s]] >> np.uint64(seg_shift[s])) & mask) << np.uint64(seg_out[s])
    return np.int64(key)


@numba.njit(parallel=True, cache=True, nogil=True)
def substring_keys(words, seg_start, seg_word, seg_shift, seg_width, seg_out):
    """Keys ``(m, n)`` int64 of every substring of every code."""
    n = words.shape[0]
    m = seg_start.shape[0] - 1
    keys = np.empty((m, n), dtype=np.int64)
    for j in numba.prange(n):
        for i in range(m):
            keys[i, j] = _key(words, j, seg_start, seg_word, seg_shift, seg_width, seg_out, i)
    return keys


@numba.njit(cache=True, nogil=True)
def build_table(keys, nbuckets):
    """Counting sort of positions by key: ``(offsets int64 (nbuckets+1), positions int32)``."""
    n = keys.shape[0]
    offsets = np.zeros(nbuckets + 1, dtype=np.int64)
    for j in range(n):
        offsets[keys[j] + 1] += 1
    for b in range(nbuckets):
        offsets[b + 1] += offsets[b]
    fill = offsets[:-1].copy()
    positions = np.empty(n, dtype=np.int32)
    for j in range(n):
        b = keys[j]
        positions[fill[b]] = j
        fill[b] += 1
    return offsets, positions


@numba.njit(cache=True, nogil=True)
def _probe_radius(
    qw, qi, qkeys, inline, sub_len, r, table_base, offsets, positions, i, seg, state, cand_d, cand_p, hist
):
    """Verify every code whose substring ``i`` is exactly ``r`` bits from the query's.

    ``inline[i]`` holds the codes in table ``i``'s bucket order, so verification reads memory
    sequentially. A candidate is counted once: it is skipped when its distance is above the
    current bound ``state[1]`` (the k-th best so far, or the range radius), and when an earlier
    probe already met it (TPAMI 2014, Sec. 4.1: some substring ``j < i`` within ``r``, or ``j > i``
    within ``r - 1``), which needs no memory of what was seen.
    ``state`` = ``[count, bound, k]``; returns the (possibly grown) candidate buffers.
    """
    seg_start, seg_word, seg_shift, seg_width, seg_out = seg
    s = sub_len[i]
    if r > s:
        return cand_d, cand_p
    m = sub_len.shape[0]
    codes = inline[i]
    limit = np.int64(1) << s
    base = table_base[i]
    qkey = qkeys[i]
    offs = offsets.reshape(1, offsets.shape[0])  # 2-D view for _prefetch
    # buckets are visited in a software pipeline: the offsets of the bucket after next and the
    # first codes of the next bucket are prefetched, so their cache misses overlap this bucket's work
    v = (np.int64(1) << r) - 1
    v1 = _next_combination(v, limit)
    if v1 < limit:
        _prefetch(offs, 0, base + (qkey ^ v1))
    while v < limit:
        b = qkey ^ v
        v2 = _next_combination(v1, limit) if v1 < limit else limit
        if v2 < limit:
            _prefetch(offs, 0, base + (qkey ^ v2))
        if v1 < limit:
            o1 = offsets[base + (qkey ^ v1)]
            if o1 < codes.shape[0]:
                _prefetch(codes, o1, 0)
        for t in range(offsets[base + b], offsets[base + b + 1]):
            d = _dist(qw, qi, codes, t)
            if d > state[1]:
                continue
            dup = False
            for j in range(m):
                if j == i:
                    continue
                sd = popcount64(
                    np.uint64(_key(codes, t, seg_start, seg_word, seg_shift, seg_width, seg_out, j) ^ qkeys[j])
                )
                if sd <= r - (j > i):
                    dup = True
                    break
            if dup:
                continue
            nc = state[0]
            if nc == cand_d.shape[0]:
                grown_d = np.empty(2 * nc, dtype=np.int32)
                grown_p = np.empty(2 * nc, dtype=np.int64)
                grown_d[:nc] = cand_d
                grown_p[:nc] = cand_p
                cand_d = grown_d
                cand_p = grown_p
            cand_d[nc] = d
            cand_p[nc] = positions[i, t]
            state[0] = nc + 1
            hist[d] += 1
            if state[2] > 0 and nc + 1 >= state[2]:  # kNN: tighten the bound to the k-th best
                cum = 0
                for tt in range(state[1] + 1):
                    cum += hist[tt]
                    if cum >= state[2]:
                        state[1] = tt
                        break
        v = v1
        v1 = v2
    return cand_d, cand_p


@numba.njit(parallel=True, cache=True, nogil=True)
def mih_search(
    qw,
    dw,
    k,
    radius,
    bits,
    seg_start,
    seg_word,
    seg_shift,
    seg_width,
    seg_out,
    sub_len,
    table_base,
    offsets,
    positions,
    inline,
    lims,
    all_d,
    all_p,
    nthreads,
):
    """kNN (``radius < 0``) or range search (``radius >= 0``) with multi-index hashing.

    Returns ``counts`` (int64, per query: ``min(k, n)`` for kNN); when ``all_d`` is not empty,
    also writes query ``q``'s results at ``lims[q]`` in (distance, position) order. (Range search
    calls this twice, to count and then to fill; results computed in parallel cannot be returned
    as a list of arrays without losing numba's on-disk cache.)
    """
    nq = qw.shape[0]
    n = dw.shape[0]
    m = sub_len.shape[0]
    max_len = 0
    for i in range(m):
        max_len = max(max_len, sub_len[i])
    nchunks = min(nq, 8 * nthreads)
    write = all_d.shape[0] > 0
    counts = np.zeros(nq, dtype=np.int64)
    for c in numba.prange(nchunks):
        qa = c * nq // nchunks
        qb = (c + 1) * nq // nchunks
        state = np.zeros(3, dtype=np.int64)
        qkeys = np.empty(m, dtype=np.int64)
        hist = np.zeros(bits + 1, dtype=np.int64)
        cand_d = np.empty(1024, dtype=np.int32)
        cand_p = np.empty(1024, dtype=np.int64)
        for qi in range(qa, qb):
            hist[:] = 0
            state[0] = 0
            state[1] = radius if radius >= 0 else bits
            state[2] = k if radius < 0 else 0
            for i in range(m):
                qkeys[i] = _key(qw, qi, seg_start, seg_word, seg_shift, seg_width, seg_out, i)
            if radius >= 0:
                covered_goal = radius
            else:
                covered_goal = bits
            done = False
            for r in range(max_len + 1):
                if done:
                    break
                for i in range(m):
                    cand_d, cand_p = _probe_radius(
                        qw,
                        qi,
                        qkeys,
                        inline,
                        sub_len,
                        r,
                        table_base,
                        offsets,
                        positions,
                        i,
                        (seg_start, seg_word, seg_shift, seg_width, seg_out),
                        state,
                        cand_d,
                        cand_p,
                        hist,
                    )
                    nc = state[0]
                    covered = m * r + i
                    if r >= sub_len[i]:
                        covered = bits  # a whole table has been enumerated: every code is a candidate
                    if radius < 0:
                        cum = 0
                        for t in range(min(covered, bits) + 1):
                            cum += hist[t]
                        if cum >= k or covered >= bits:
                            done = True
                            break
                    elif covered >= covered_goal:
                        done = True
                        break
            nc = state[0]
            # select: kNN keeps the k smallest (distance, position); range keeps d <= radius
            if radius >= 0:
                limit_d = radius
                want = n
            else:
                want = min(k, n)
                cum = 0
                limit_d = bits
                for t in range(bits + 1):
                    cum += hist[t]
                    if cum >= want:
                        limit_d = t
                        break
            nsel = 0
            for t in range(nc):
                if cand_d[t] <= limit_d:
                    nsel += 1
            keys = np.empty(nsel, dtype=np.int64)
            j = 0
            for t in range(nc):
                if cand_d[t] <= limit_d:
                    keys[j] = np.int64(cand_d[t]) * n + cand_p[t]
                    j += 1
            keys.sort()
            nout = min(nsel, want)
            counts[qi] = nout
            if write:
                o = lims[qi]
                for t in range(nout):
                    all_d[o + t] = keys[t] // n
                    all_p[o + t] = keys[t] % n
    return counts
