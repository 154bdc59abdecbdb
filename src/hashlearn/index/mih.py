"""Multi-index hashing tables over a fixed set of codes (see ``_mih.py`` for the algorithm)."""

from __future__ import annotations

import math

import numba
import numpy as np

MAX_SUBSTRING_BITS = 24  # a direct-address table of 2**24 int64 offsets is 128 MiB


def valid_positions(bits: int) -> np.ndarray:
    """Word-layout positions (``64*word + bit``) of code bits ``0..bits-1``, in code-bit order.

    Code bit ``j`` sits in byte ``j // 8`` at bit ``7 - j % 8`` (MSB first); bytes fill the
    little-endian ``uint64`` words of :func:`hashlearn.codes._kernels.to_words` in order.
    """
    j = np.arange(bits)
    byte = j // 8
    return (byte // 8) * 64 + (byte % 8) * 8 + (7 - j % 8)


def default_m(bits: int, n: int) -> int:
    """Number of substrings: about ``bits / log2(n)`` (Norouzi et al.), each at most 24 bits."""
    log2n = math.log2(max(n, 2))
    m = max(1, round(bits / max(log2n, 1.0)))
    m = max(m, math.ceil(bits / MAX_SUBSTRING_BITS))
    return int(min(m, bits))


def split_positions(bits: int, m: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """Cut the code's bits into ``m`` substrings of (nearly) equal length.

    Without ``order`` the substrings are runs of consecutive word-layout positions, so each key is
    one or two shifts and masks. ``order`` (a permutation of code bits) decorrelates substrings.
    """
    if order is None:
        pos = np.sort(valid_positions(bits))
    else:
        pos = valid_positions(bits)[np.asarray(order)]
    return [np.asarray(p) for p in np.array_split(pos, m)]


def decorrelating_order(sample_bits: np.ndarray, m: int) -> np.ndarray:
    """A permutation of bits that spreads correlated bits over different substrings.

    Greedy: bits in order of decreasing total |correlation|, each to the substring (with room
    left) whose bits it correlates with least. Correlated bits in one substring lower the entropy
    of its keys, which crowds buckets and slows search.
    """
    x = sample_bits.astype(np.float64)
    bits = x.shape[1]
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    corr = np.abs(x.T @ x) / max(len(x), 1)
    np.fill_diagonal(corr, 0.0)
    sizes = [len(a) for a in np.array_split(np.arange(bits), m)]
    groups: list[list[int]] = [[] for _ in range(m)]
    for b in np.argsort(-corr.sum(axis=1), kind="stable"):
        best, best_cost = -1, np.inf
        for g in range(m):
            if len(groups[g]) >= sizes[g]:
                continue
            cost = corr[b, groups[g]].sum() if groups[g] else 0.0
            if cost < best_cost:
                best, best_cost = g, cost
        groups[best].append(int(b))
    return np.concatenate([np.sort(np.array(g, dtype=np.int64)) for g in groups])


def segments(substrings: list[np.ndarray]):
    """Runs of consecutive positions within one word: arrays for ``_mih._key``."""
    seg_start, seg_word, seg_shift, seg_width, seg_out = [0], [], [], [], []
    for pos in substrings:
        t = 0
        while t < len(pos):
            u = t + 1
            while u < len(pos) and pos[u] == pos[u - 1] + 1 and pos[u] // 64 == pos[t] // 64:
                u += 1
            seg_word.append(pos[t] // 64)
            seg_shift.append(pos[t] % 64)
            seg_width.append(u - t)
            seg_out.append(t)
            t = u
        seg_start.append(len(seg_word))
    as64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return as64(seg_start), as64(seg_word), as64(seg_shift), as64(seg_width), as64(seg_out)


class MIHTables:
    """The ``m`` hash tables of a multi-index hashing search over ``words`` (``(n, nw)`` uint64)."""

    def __init__(self, words: np.ndarray, bits: int, m: int | None = None, reorder: bool = False, seed: int = 0):
        from hashlearn.index._mih import build_table, substring_keys

        n = len(words)
        self.bits = int(bits)
        self.m = int(m) if m else default_m(bits, n)
        if not 1 <= self.m <= bits or math.ceil(bits / self.m) > MAX_SUBSTRING_BITS:
            raise ValueError(f"m={self.m} substrings of a {bits}-bit code: each must have 1..24 bits")
        order = None
        if reorder and n > 1 and self.m > 1:
            from hashlearn.codes import unpack_bits

            rng = np.random.default_rng(seed)
            take = rng.choice(n, size=min(n, 20000), replace=False)
            packed = np.ascontiguousarray(words[np.sort(take)]).view(np.uint8)[:, : (bits + 7) // 8]
            order = decorrelating_order(unpack_bits(np.ascontiguousarray(packed), bits), self.m)
        self.order = order
        subs = split_positions(bits, self.m, order)
        self.sub_len = np.array([len(s) for s in subs], dtype=np.int64)
        self.seg = segments(subs)
        keys = substring_keys(words, *self.seg)
        self.table_base = np.zeros(self.m, dtype=np.int64)
        offsets, positions = [], np.empty((self.m, n), dtype=np.int32)
        base = 0
        for i in range(self.m):
            nbuckets = 1 << int(self.sub_len[i])
            off, positions[i] = build_table(keys[i], nbuckets)
            offsets.append(off)
            self.table_base[i] = base
            base += nbuckets + 1
        # int32 offsets when they fit: half the bytes, so more of the tables stays in cache (each
        # probe reads two random offsets; at 10M codes, 3 tables of 2**21 buckets)
        self.offsets = np.concatenate(offsets).astype(np.int32 if n < 2**31 else np.int64)
        self.positions = positions
        # codes copied in each table's bucket order: verification streams memory instead of
        # missing the cache once per candidate (m copies of the codes; 10x faster at 10M codes)
        self.inline = np.empty((self.m, n, words.shape[1]), dtype=np.uint64)
        for i in range(self.m):
            np.take(words, positions[i], axis=0, out=self.inline[i])

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.positions.nbytes + self.inline.nbytes)

    def _run(self, qw, dw, k, radius, lims, out_d, out_p):
        from hashlearn.index._mih import mih_search

        return mih_search(
            qw,
            dw,
            int(k),
            int(radius),
            self.bits,
            *self.seg,
            self.sub_len,
            self.table_base,
            self.offsets,
            self.positions,
            self.inline,
            lims,
            out_d,
            out_p,
            numba.get_num_threads(),
        )

    def knn(self, qw: np.ndarray, dw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN as :func:`hashlearn.index._scan.knn_scan` (``-1`` pads past ``n``)."""
        nq, n = len(qw), len(dw)
        want = min(k, n)
        lims = np.arange(nq + 1, dtype=np.int64) * want
        out_d = np.empty(nq * want, dtype=np.int32)
        out_p = np.empty(nq * want, dtype=np.int64)
        dist = np.full((nq, k), -1, dtype=np.int32)
        pos = np.full((nq, k), -1, dtype=np.int64)
        if nq and want:
            self._run(qw, dw, k, -1, lims, out_d, out_p)
            dist[:, :want] = out_d.reshape(nq, want)
            pos[:, :want] = out_p.reshape(nq, want)
        return dist, pos

    def count(self, qw: np.ndarray, dw: np.ndarray, radius: int) -> np.ndarray:
        """Number of codes within ``radius`` of each query (the counting pass of :meth:`range`)."""
        nq = len(qw)
        if nq == 0 or len(dw) == 0:
            return np.zeros(nq, dtype=np.int64)
        lims = np.zeros(nq + 1, dtype=np.int64)
        empty_d, empty_p = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
        return np.asarray(self._run(qw, dw, 0, radius, lims, empty_d, empty_p), dtype=np.int64)

    def range(self, qw: np.ndarray, dw: np.ndarray, radius: int):
        """Range search as :func:`hashlearn.index._scan.range_scan`: ``(lims, dist, positions)``."""
        nq = len(qw)
        lims = np.zeros(nq + 1, dtype=np.int64)
        empty_d, empty_p = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
        if nq == 0 or len(dw) == 0:
            return lims, empty_d, empty_p
        counts = self._run(qw, dw, 0, radius, lims, empty_d, empty_p)
        np.cumsum(counts, out=lims[1:])
        out_d = np.empty(lims[-1], dtype=np.int32)
        out_p = np.empty(lims[-1], dtype=np.int64)
        if lims[-1]:
            self._run(qw, dw, 0, radius, lims, out_d, out_p)
        return lims, out_d, out_p
