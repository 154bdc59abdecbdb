"""Binary codes: binarize, convert, pack, measure Hamming distance, save and load.

Conventions (used everywhere in hashlearn):

* ``sign(0) = +1``: a real-valued output ``u`` becomes ``b = sign(u) ∈ {-1, +1}``.
* ``{0,1}`` and ``±1`` are the same code: bit ``1`` ⇔ ``+1``, bit ``0`` ⇔ ``-1``.
* Packed codes are ``uint8`` arrays of shape ``(n, ceil(bits / 8))``. Bit ``j`` of a code is
  stored in byte ``j // 8`` at bit position ``7 - j % 8`` (most significant bit first, as
  ``numpy.packbits(..., bitorder="big")``); the unused low bits of the last byte are zero.
  Hamming distance therefore does not depend on the padding.
* The format of an array is decided from its dtype, shape and ``bits``, never from its values:
  ``uint8`` is packed unless ``bits`` equals its number of columns; every other dtype holds one
  0/1 or ±1 value per bit (:func:`codes_from_array`, :func:`load_codes`).
"""

from hashlearn.codes.binary import (
    CodeSet,
    as_bits,
    as_packed,
    codes_from_array,
    hamming_distances,
    load_codes,
    pack_bits,
    packed_nbytes,
    save_codes,
    sign,
    to_01,
    to_pm1,
    unpack_bits,
)

__all__ = [
    "CodeSet",
    "as_bits",
    "as_packed",
    "codes_from_array",
    "hamming_distances",
    "load_codes",
    "pack_bits",
    "packed_nbytes",
    "save_codes",
    "sign",
    "to_01",
    "to_pm1",
    "unpack_bits",
]
