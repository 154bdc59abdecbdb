"""numba kernels on packed codes viewed as ``uint64`` words.

``popcount64`` compiles to the CPU's ``popcnt`` instruction (LLVM ``ctpop``). Other
modules (the index) reuse these helpers rather than writing their own.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a ``uint64`` (LLVM ``ctpop``)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def to_words(packed: np.ndarray) -> np.ndarray:
    """Packed ``uint8`` codes ``(n, nbytes)`` → ``uint64`` words ``(n, ceil(nbytes/8))``.

    Zero bytes pad each code to whole words, which leaves Hamming distances unchanged.
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    n, nbytes = packed.shape
    nwords = (nbytes + 7) // 8
    if nbytes != nwords * 8:
        padded = np.zeros((n, nwords * 8), dtype=np.uint8)
        padded[:, :nbytes] = packed
        packed = padded
    return packed.view(np.uint64).reshape(n, nwords)


@numba.njit(parallel=True, cache=True, nogil=True)
def hamming_matrix(q_words, d_words):
    nq, nw = q_words.shape
    nd = d_words.shape[0]
    out = np.empty((nq, nd), dtype=np.int32)
    for i in numba.prange(nq):
        for j in range(nd):
            acc = 0
            for w in range(nw):
                acc += popcount64(q_words[i, w] ^ d_words[j, w])
            out[i, j] = acc
    return out
