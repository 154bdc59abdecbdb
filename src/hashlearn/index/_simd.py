"""Explicit AVX2-width vector code for the linear scan, written as numba intrinsics in LLVM IR.

The scan's inner loop is the Hamming distance of one query to 32 database codes at once, on a
*byte-transposed* block of the database (row ``b`` holds byte ``b`` of 32 consecutive codes):
for each byte position, XOR with the query's byte broadcast to 32 lanes, ``ctpop`` on
``<32 x i8>`` (LLVM lowers it to the nibble-lookup ``vpshufb`` sequence on AVX2), and add into a
``<32 x i8>`` accumulator; one unsigned compare with the threshold then yields a 32-bit mask of
the codes that may enter the result. Written as IR rather than left to LLVM's auto-vectoriser,
which keeps numba's 64-bit integer arithmetic and would not do this.

Distances up to 255 fit a byte. For 256-bit codes (32 bytes) the adds saturate, so a distance
of 256 reads as 255 rather than wrapping to 0: the mask stays exact for any threshold up to 255
(wrapping would only add false candidates, which the caller re-measures). While a threshold is
above 255, callers take every code.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V32 = ir.VectorType(_I8, 32)
LANES = 32
#: largest threshold the byte lanes can test exactly
MAX_THRESHOLD = 255


def _splat(builder, value):
    vec = builder.insert_element(ir.Constant(_V32, ir.Undefined), value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
    return builder.shuffle_vector(vec, ir.Constant(_V32, ir.Undefined), zeros)


def block_masks(nbytes: int):
    """An intrinsic ``masks(T, q, t, nchunks, out)`` for codes of ``nbytes`` bytes (1-32).

    ``T``: ``uint8 (nbytes, B)`` C-contiguous byte-transposed block; ``q``: ``uint8 (nbytes,)``
    query; ``t``: threshold (``<= 255``); writes ``out[c]`` (``uint32``) for ``c < nchunks``: bit
    ``i`` set iff ``distance(q, code 32c+i) < t``. Columns past the block's valid codes give
    arbitrary bits; the caller masks them.
    """
    if not 1 <= nbytes <= 32:
        raise ValueError(f"block_masks: nbytes must be 1..32, got {nbytes}")
    saturate = nbytes * 8 > MAX_THRESHOLD

    @intrinsic
    def masks(typingctx, tr, q, t, nchunks, out):
        sig = types.void(tr, q, t, nchunks, out)

        def codegen(context, builder, signature, args):
            tra = context.make_array(signature.args[0])(context, builder, args[0])
            qa = context.make_array(signature.args[1])(context, builder, args[1])
            oa = context.make_array(signature.args[4])(context, builder, args[4])
            module = builder.module
            ctpop = cgutils.get_or_insert_function(module, ir.FunctionType(_V32, [_V32]), "llvm.ctpop.v32i8")
            add_sat = cgutils.get_or_insert_function(module, ir.FunctionType(_V32, [_V32, _V32]), "llvm.uadd.sat.v32i8")
            width = builder.extract_value(tra.shape, 1)
            qs = [_splat(builder, builder.load(builder.gep(qa.data, [ir.Constant(_I64, b)]))) for b in range(nbytes)]
            rows = [builder.mul(width, ir.Constant(_I64, b)) for b in range(nbytes)]
            thr = _splat(builder, builder.trunc(args[2], _I8))
            with cgutils.for_range(builder, args[3]) as loop:
                off = builder.mul(loop.index, ir.Constant(_I64, LANES))
                acc = None
                for b in range(nbytes):
                    ptr = builder.bitcast(builder.gep(tra.data, [builder.add(off, rows[b])]), _V32.as_pointer())
                    pc = builder.call(ctpop, [builder.xor(builder.load(ptr, align=1), qs[b])])
                    if acc is None:
                        acc = pc
                    else:
                        acc = builder.call(add_sat, [acc, pc]) if saturate else builder.add(acc, pc)
                bits = builder.bitcast(builder.icmp_unsigned("<", acc, thr), _I32)
                builder.store(bits, builder.gep(oa.data, [loop.index]))
            return context.get_dummy_value()

        return sig, codegen

    return masks


@intrinsic
def ctz32(typingctx, x):
    """Index of the lowest set bit of a non-zero ``uint32`` (LLVM ``cttz``)."""
    sig = types.int64(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.zext(builder.cttz(args[0], ir.Constant(ir.IntType(1), 1)), _I64)

    return sig, codegen
