"""Encode images with a trained run, and code files that know which run made them.

Every function takes a run folder or a hasher from :func:`hashlearn.train.model.load_run`
(the one loader): :func:`encode_images` (files → packed codes), :func:`encode_files` (files,
optionally skipping unreadable ones), :func:`encode_dataset` (every image of a dataset).

Code files written by ``train`` and ``encode`` carry the fingerprint of the run that made them
(:func:`save_run_codes`: the ``.npz`` of :func:`hashlearn.codes.save_codes` plus a
``run_fingerprint`` string). :func:`check_codes_match_run` refuses, in one line, to compare
codes of one run with a query encoded by another (what ``search --image --run R --codes C``
must call): Hamming distances between codes of two different models mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.train.model import Hasher, load_run

#: the key of a code file that holds the fingerprint of the run that made its codes
FINGERPRINT_KEY = "run_fingerprint"


def _hasher(run) -> Hasher:
    return run if isinstance(run, Hasher) else load_run(run)


# -- code files with the run's fingerprint ---------------------------------------------------------------

def save_run_codes(path, packed, bits: int, ids=None, fingerprint: str | None = None,
                   meta: dict[str, str] | None = None) -> Path:
    """:func:`hashlearn.codes.save_codes` with the run's ``fingerprint`` in the file's metadata."""
    from hashlearn.codes import save_codes

    meta = dict(meta or {})
    if fingerprint is not None:
        meta[FINGERPRINT_KEY] = fingerprint
    return save_codes(path, packed, bits, ids=ids, meta=meta)


def codes_fingerprint(path) -> str | None:
    """The fingerprint of the run that made the codes of ``path`` (None: a ``.npy``, or a file
    written without one)."""
    from hashlearn.codes import load_codes

    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return None
    return load_codes(path).meta.get(FINGERPRINT_KEY)


def check_codes_match_run(codes_path, run) -> None:
    """Refuse (one line) the code file ``codes_path`` when its codes were made by another run than
    ``run`` (a run folder or a hasher from :func:`load_run`). Codes without a fingerprint
    (``.npy`` arrays, files of other tools or of older versions) are not refused here."""
    found = codes_fingerprint(codes_path)
    if found is None:
        return
    hasher = _hasher(run)
    if hasher.fingerprint is not None and found != hasher.fingerprint:
        where = hasher.run_dir or "this hasher"
        raise InputError(f"{codes_path} holds codes of another run than {where} (run fingerprint {found[:12]}… vs "
                         f"{hasher.fingerprint[:12]}…): encode the database with this run (hashlearn encode --run "
                         f"{where}) or search with the run that made it")


# -- encoding --------------------------------------------------------------------------------------------------

def _read_batch(paths, size: int, channels: int, skip_bad: bool, skipped: list) -> tuple[list, list]:
    from hashlearn.data import read_image

    mode = "L" if channels == 1 else "RGB"
    kept, images = [], []
    for p in paths:
        try:
            im = read_image(p, size=size, mode=mode)
        except HashlearnError as exc:
            if not skip_bad:
                raise
            skipped.append((str(p), str(exc)))
            continue
        kept.append(p)
        images.append(im if im.ndim == 3 else im[..., None])
    return kept, images


def encode_files(run, paths, skip_bad: bool = False, batch_size: int = 256):
    """``(packed, kept, skipped)``: packed uint8 codes of the image files ``paths`` that could be
    read, those paths, and ``(path, reason)`` for each unreadable file (only with ``skip_bad``;
    otherwise the first unreadable file is an error naming it)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no images to encode")
    enc = _hasher(run)
    kept_all, skipped, parts = [], [], []
    for start in range(0, len(paths), batch_size):
        kept, images = _read_batch(paths[start:start + batch_size], enc.image_size, enc.channels, skip_bad, skipped)
        if images:
            parts.append(enc.encode(np.stack(images)))
            kept_all += kept
    packed = np.concatenate(parts) if parts else np.zeros((0, (enc.bits + 7) // 8), np.uint8)
    return packed, kept_all, skipped


def encode_images(run, paths) -> tuple[np.ndarray, int]:
    """Packed codes ``(n, ceil(bits/8))`` uint8 of the image files ``paths`` and the bit count."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no images to encode")
    for p in paths:
        if not Path(p).is_file():
            raise NotFoundError(f"image not found: {p}")
    enc = _hasher(run)
    packed, _, _ = encode_files(enc, paths)
    return packed, enc.bits


def encode_dataset(run, dataset, batch_size: int = 1024, progress: bool = False):
    """``(packed, bits, ids)`` for every image of ``dataset``."""
    from hashlearn.train.progress import progress_bar

    enc = _hasher(run)
    parts = [enc.encode(np.asarray(dataset.images[start:start + batch_size]))
             for start in progress_bar(range(0, len(dataset.images), batch_size), progress, "encode", unit="batch")]
    packed = np.concatenate(parts) if parts else np.zeros((0, (enc.bits + 7) // 8), np.uint8)
    return packed, enc.bits, np.asarray(dataset.ids)
