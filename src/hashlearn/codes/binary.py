"""Implementation of :mod:`hashlearn.codes` (see the package docstring for conventions).

The format of a code array (packed or not, how many bits) is decided from its dtype, its shape
and an explicit ``bits``, never from its values (packed bytes can happen to be all 0/1):

* ``uint8`` is packed ``(n, ceil(bits/8))`` unless ``bits`` equals its number of columns, in
  which case it holds 0/1 values. :func:`as_packed` needs ``bits`` for ``uint8``; a file
  (:func:`load_codes`, :func:`codes_from_array`) without ``bits`` is packed, ``8 × columns`` bits.
* ``bool``, ``int8`` and every other integer or float dtype are unpacked ``(n, bits)`` 0/1 or ±1.
* A hashlearn ``.npz`` code file carries ``packed``, ``bits`` and ``ids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashlearn._atomic import atomic_target
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

    The format is decided from the dtype, the shape and ``bits``, never from the values:

    * ``uint8`` is the packed dtype. With ``bits`` given, a width of ``ceil(bits/8)`` bytes is
      packed codes (the padding bits past ``bits`` must be zero) and a width of exactly ``bits``
      is unpacked 0/1 values (for ``bits = 1`` the two coincide: unpacked). Without ``bits`` a
      ``uint8`` array is ambiguous (packed bytes that happen to be 0/1 look like 0/1 codes) and
      raises :class:`InputError` asking for ``bits``.
    * ``bool``, ``int8`` and every other integer or float dtype hold unpacked ``(n, bits)``
      0/1 or ±1 values (validated); ``bits``, when given, must equal the width.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    if bits is not None:
        try:
            bits = int(bits)
        except (TypeError, ValueError):
            raise InputError(f"{name}: bits must be a positive integer, got {bits!r}") from None
        if bits <= 0:
            raise InputError(f"{name}: bits must be positive, got {bits}")
    width = arr.shape[1]
    if arr.dtype == np.uint8:
        if bits is None:
            raise InputError(
                f"{name}: uint8 codes of width {width} are ambiguous: pass bits={8 * width} if they are packed "
                f"(numpy.packbits) or bits={width} if they hold 0/1 values (or give bool/int8 codes)"
            )
        nbytes = packed_nbytes(bits)
        if width == bits:
            return pack_bits(arr, name), bits
        if width != nbytes:
            raise InputError(
                f"{name}: width {width} matches neither {bits} unpacked bits nor {nbytes} packed bytes"
            )
        if bits % 8 and arr.size and (arr[:, -1] & ((1 << (8 - bits % 8)) - 1)).any():
            raise InputError(f"{name}: padding bits past bit {bits} are not zero; wrong --bits?")
        return np.ascontiguousarray(arr), bits
    if bits is not None and width != bits:
        if width == packed_nbytes(bits) and np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{name}: packed codes must be uint8, got {arr.dtype}")
        raise InputError(f"{name}: {arr.dtype} codes are unpacked (n, bits), but width {width} is not {bits} bits")
    if width == 0:
        raise InputError(f"{name}: codes have no bits (shape {arr.shape})")
    return pack_bits(arr, name), width


def codes_from_array(codes, bits: int | None = None, name: str = "codes") -> tuple[np.ndarray, int]:
    """The rule for a bare code array read from a file (``.npy``): ``(packed uint8, bits)``.

    Like :func:`as_packed`, except that a ``uint8`` array without ``bits`` is taken as packed
    ``(n, bytes)`` codes of ``8 × bytes`` bits: that is what ``numpy.packbits`` and hashlearn
    write. A ``uint8`` file of 0/1 values needs ``bits`` equal to its number of columns.
    """
    arr = np.asarray(codes)
    if arr.ndim == 2 and arr.dtype == np.uint8 and bits is None:
        if arr.shape[1] == 0:
            raise InputError(f"{name}: codes have no bits (shape {arr.shape})")
        bits = 8 * arr.shape[1]
    return as_packed(arr, bits, name)


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


META_PREFIX = "meta_"  # code-file metadata: 0-d string arrays named meta_<key>


@dataclass
class CodeSet:
    """Packed codes with their bit count, one id per code, and the file's string metadata
    (e.g. ``run_fingerprint``: the run that made them; ``image_root``: what relative ids are relative to)."""

    packed: np.ndarray
    bits: int
    ids: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.packed)

    def unpacked(self) -> np.ndarray:
        return unpack_bits(self.packed, self.bits)


def save_codes(path, packed, bits: int, ids=None, meta: dict[str, str] | None = None) -> Path:
    """Save packed codes with their ids (and string ``meta``data) to ``path`` (``.npz``), atomically."""
    packed, bits = as_packed(packed, bits)
    meta = dict(meta or {})
    for key, value in meta.items():
        if not (isinstance(key, str) and key.isidentifier() and isinstance(value, str)):
            raise InputError(f"code-file metadata must map names to strings, got {key!r}: {value!r}")
    if ids is None:
        ids = np.arange(len(packed), dtype=np.int64)
    ids = np.asarray(ids)
    if len(ids) != len(packed):
        raise InputError(f"{len(ids)} ids for {len(packed)} codes")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        np.savez(tmp, packed=packed, bits=np.int64(bits), ids=ids, format_version=np.int64(FORMAT_VERSION),
                 **{META_PREFIX + k: np.str_(v) for k, v in meta.items()})
    return path


def load_codes(path, bits: int | None = None, name: str | None = None) -> CodeSet:
    """Load a code file; the format comes from the file, never from the code values.

    * A hashlearn ``.npz`` (written by :func:`save_codes`) carries ``packed``, ``bits`` and
      ``ids``; ``bits``, when given, must agree with the file.
    * A ``.npy`` array follows :func:`codes_from_array`: ``uint8`` is packed (``8 × columns``
      bits, or ``bits`` when given) unless ``bits`` equals its number of columns, in which case
      it holds 0/1 values; ``bool``/``int8``/other integer/float arrays hold 0/1 or ±1 values.
      Ids are ``0 .. n-1``.

    ``name`` (default: the path) starts every error message.
    """
    import zipfile

    path = Path(path)
    where = name or str(path)
    if path.is_dir():
        raise InputError(f"{where}: is a folder, not a codes file")
    if not path.exists():
        raise NotFoundError(f"codes file not found: {path}" if name is None else f"{where}: file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickle" in reason:
            reason = "not a .npy or .npz file, or it holds Python objects, which are never loaded"
        raise InputError(f"{where}: not a codes file (.npy array or hashlearn .npz): {reason}") from None
    if isinstance(loaded, np.ndarray):
        packed, n_bits = codes_from_array(loaded, bits, where)
        return CodeSet(packed=packed, bits=n_bits, ids=np.arange(len(packed), dtype=np.int64))
    try:
        with loaded as f:
            missing = [k for k in ("packed", "bits") if k not in f.files]
            if missing:
                raise InputError(
                    f"{where}: not a hashlearn codes file (no {' or '.join(missing)} in it; has {', '.join(f.files)})"
                )
            packed, file_bits = f["packed"], f["bits"]
            ids = f["ids"] if "ids" in f.files else None
            meta = {k[len(META_PREFIX):]: f[k] for k in f.files if k.startswith(META_PREFIX)}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{where}: not a hashlearn codes file ({' '.join(str(exc).split())})") from None
    if file_bits.ndim != 0 or not np.issubdtype(file_bits.dtype, np.integer) or int(file_bits) <= 0:
        raise InputError(f"{where}: 'bits' must be one positive integer, got {file_bits!r}")
    file_bits = int(file_bits)
    if bits is not None and int(bits) != file_bits:
        raise InputError(f"{where} holds {file_bits}-bit codes, not {int(bits)} bits as given")
    packed, file_bits = as_packed(packed, file_bits, name=where)
    if ids is None:
        ids = np.arange(len(packed), dtype=np.int64)
    if ids.ndim != 1 or len(ids) != len(packed):
        raise InputError(f"{where}: {len(ids)} ids for {len(packed)} codes")
    for key, value in meta.items():
        if value.ndim != 0 or value.dtype.kind != "U":
            raise InputError(f"{where}: metadata {key} must be one string, got {value.dtype} {value.shape}")
    return CodeSet(packed=packed, bits=file_bits, ids=ids, meta={k: str(v) for k, v in meta.items()})
