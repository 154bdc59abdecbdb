"""Implementation of :mod:`hashlearn.codes` (see the package docstring for conventions)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashlearn.errors import InputError, NotFoundError

FORMAT_VERSION = 1


def sign(x) -> np.ndarray:
    """``sign`` with ``sign(0) = +1``; returns ``int8`` values in ``{-1, +1}``."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        raise InputError("cannot binarize: the values contain NaN")
    return np.where(x >= 0, 1, -1).astype(np.int8)


def to_01(codes) -> np.ndarray:
    """``±1`` (or ``{0,1}``) codes → ``uint8`` bits in ``{0, 1}``."""
    return as_bits(codes)


def to_pm1(codes) -> np.ndarray:
    """``{0,1}`` (or ``±1``) codes → ``int8`` values in ``{-1, +1}``."""
    return (as_bits(codes).astype(np.int8) * 2 - 1).astype(np.int8)


def packed_nbytes(bits: int) -> int:
    """Bytes per packed code of ``bits`` bits."""
    return (int(bits) + 7) // 8


def as_bits(codes, name: str = "codes") -> np.ndarray:
    """Validate unpacked codes and return them as ``uint8`` bits ``(n, bits)``.

    Accepts ``bool``, ``{0,1}`` or ``{-1,+1}`` values of any numeric dtype. Anything else
    (NaN, 0.5, 2, a mix of 0 and -1, …) raises :class:`InputError` naming ``name``.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (n, bits), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: expected numeric binary values, got dtype {arr.dtype}")
    if arr.size == 0:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    lo, hi = arr.min(), arr.max()
    values = set(np.unique(arr).tolist()) if arr.size <= 4096 or lo < -1 or hi > 1 else None
    if values is None:
        # large arrays inside [-1, 1]: check membership without building a set of every value
        ok01 = bool(((arr == 0) | (arr == 1)).all())
        okpm = bool(((arr == -1) | (arr == 1)).all())
    else:
        ok01 = values <= {0, 1}
        okpm = values <= {-1, 1}
    if ok01:
        return arr.astype(np.uint8)
    if okpm:
        return (arr > 0).astype(np.uint8)
    raise InputError(f"{name}: values must be binary, 0/1 or -1/+1 (found values in [{lo}, {hi}])")


def pack_bits(codes, name: str = "codes") -> np.ndarray:
    """Unpacked ``{0,1}``/``±1`` codes ``(n, bits)`` → packed ``uint8`` ``(n, ceil(bits/8))``."""
    bits = as_bits(codes, name)
    return np.packbits(bits, axis=1, bitorder="big")


def unpack_bits(packed, bits: int, name: str = "codes") -> np.ndarray:
    """Packed ``uint8`` codes → ``uint8`` bits ``(n, bits)``."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise InputError(f"{name}: packed codes must be a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    if packed.shape[1] != packed_nbytes(bits):
        raise InputError(
            f"{name}: {bits} bits need {packed_nbytes(bits)} bytes per code, got {packed.shape[1]}"
        )
    return np.unpackbits(packed, axis=1, count=bits, bitorder="big")


def as_packed(codes, bits: int | None = None, name: str = "codes") -> tuple[np.ndarray, int]:
    """Return ``(packed uint8, bits)`` for codes given packed or unpacked.

    With ``bits`` given, a ``uint8`` array whose width is ``ceil(bits/8)`` (and not ``bits``)
    is taken as already packed. Otherwise the array is taken as unpacked ``(n, bits)``
    ``{0,1}``/``±1`` values and is validated and packed.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    if bits is not None:
        bits = int(bits)
        if bits <= 0:
            raise InputError(f"{name}: bits must be positive, got {bits}")
        nbytes = packed_nbytes(bits)
        if arr.shape[1] == nbytes and arr.shape[1] != bits:
            if arr.dtype != np.uint8:
                raise InputError(f"{name}: packed codes must be uint8, got {arr.dtype}")
            if bits % 8 and arr.size and (arr[:, -1] & ((1 << (8 - bits % 8)) - 1)).any():
                raise InputError(f"{name}: padding bits past bit {bits} are not zero; wrong --bits?")
            return np.ascontiguousarray(arr), bits
        if arr.shape[1] != bits:
            raise InputError(
                f"{name}: width {arr.shape[1]} matches neither {bits} unpacked bits nor {nbytes} packed bytes"
            )
    packed = pack_bits(arr, name)
    return packed, arr.shape[1]


def hamming_distances(query_packed: np.ndarray, database_packed: np.ndarray) -> np.ndarray:
    """All Hamming distances between two packed code sets, ``int32`` ``(nq, nd)``.

    A plain, exact kernel (numba, parallel over queries). Search over large databases
    belongs to :mod:`hashlearn.index`; evaluation chunks its queries through this.
    """
    from hashlearn.codes._kernels import hamming_matrix, to_words

    q = np.asarray(query_packed)
    d = np.asarray(database_packed)
    if q.ndim != 2 or d.ndim != 2 or q.dtype != np.uint8 or d.dtype != np.uint8:
        raise InputError("hamming_distances expects two 2-D uint8 packed arrays")
    if q.shape[1] != d.shape[1]:
        raise InputError(f"code length mismatch: {q.shape[1]} bytes per query code vs {d.shape[1]} in the database")
    return hamming_matrix(to_words(q), to_words(d))


@dataclass
class CodeSet:
    """Packed codes with their bit count and one id per code."""

    packed: np.ndarray
    bits: int
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.packed)

    def unpacked(self) -> np.ndarray:
        return unpack_bits(self.packed, self.bits)


def save_codes(path, packed, bits: int, ids=None) -> Path:
    """Save packed codes with their ids to ``path`` (``.npz``), atomically."""
    packed, bits = as_packed(packed, bits)
    if ids is None:
        ids = np.arange(len(packed), dtype=np.int64)
    ids = np.asarray(ids)
    if len(ids) != len(packed):
        raise InputError(f"{len(ids)} ids for {len(packed)} codes")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, packed=packed, bits=np.int64(bits), ids=ids, format_version=np.int64(FORMAT_VERSION))
    os.replace(tmp, path)
    return path


def load_codes(path) -> CodeSet:
    """Load codes written by :func:`save_codes`."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"codes file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            packed, bits, ids = f["packed"], int(f["bits"]), f["ids"]
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a hashlearn codes file ({exc})") from None
    packed, bits = as_packed(packed, bits, name=str(path))
    return CodeSet(packed=packed, bits=bits, ids=ids)
