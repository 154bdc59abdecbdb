"""Frozen-backbone features, computed once and cached on disk.

:func:`extract_features` runs a backbone in inference mode over a set of images, globally
pools each requested tap to a vector, and stores one ``(N, C)`` array per tap under
``<cache_dir>/features/<key>/``. The key covers everything the numbers depend on: the
dataset's name and content, the backbone, its weights (sha256 of the file, or ``none`` +
seed), the image size, the taps, the pooling, the dtype and the library versions. A
manifest stores the key and the sha256 of every array; a later call checks both, so a
stale or tampered cache raises instead of being used silently. Work is written in chunks
(``<key>.partial/``) so an interrupted extraction resumes where it stopped; the finished
folder appears with one atomic rename. The keying, chunked writing, resume and checks are
:mod:`hashlearn.nn._cache`, shared with the spatial activation cache
(:mod:`hashlearn.nn.activations`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.errors import InputError
from hashlearn.nn import _cache
from hashlearn.nn._cache import dataset_fingerprint, default_cache_dir

FORMAT_VERSION = 1
POOLINGS = ("avg", "max", "avgmax")

__all__ = ["FORMAT_VERSION", "POOLINGS", "cached_feature_sets", "dataset_fingerprint", "default_cache_dir",
           "extract_features"]

# old private names, kept for callers written against them
_unpack_data = _cache.unpack_data
_safe = _cache.safe
_sha256_array = _cache.sha256_array


def extract_features(
    data: Any,
    backbone: str = "efficientnet_lite0",
    image_size: int | None = None,
    taps: Sequence[str] | None = None,
    *,
    weights: str | os.PathLike = "default",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    key: str | None = None,
    pooling: str = "avg",
    dtype: str = "float32",
    seed: int = 0,
    chunk_size: int = 2048,
    num_threads: int | None = None,
    use_cache: bool = True,
    rebuild: bool = False,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Pooled tap features of a frozen backbone, cached: ``{tap: (N, C) array}``.

    ``data``: an :class:`~hashlearn.data.ImageDataset` (uses ``.images``, ``.name``, ``.ids``)
    or a uint8 array (N,H,W[,C]) — then ``key`` names it (content is hashed either way).
    ``taps``: tap names of the backbone (default ``default_taps``); the final pooled vector
    ``"pool"`` is always included. Every conv tap is reduced over H×W by ``pooling``:
    ``"avg"`` (global average, default), ``"max"``, or ``"avgmax"`` (the two concatenated,
    2C columns, average first). Vector taps (``pool``, ``fc7``) are stored as they are.
    ``image_size`` (default: the backbone's ``input_size``) is the side the images are
    resized to. ``dtype`` is ``"float32"`` or ``"float16"``.
    ``weights="none"`` uses a random network seeded by ``seed``.

    A stale or tampered cache raises :class:`HashlearnError`; ``rebuild=True`` recomputes.
    ``use_cache=False`` neither reads nor writes the cache.
    """
    import torch

    from hashlearn import __version__
    from hashlearn.nn.backbones import POOL, create_backbone

    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if batch_size < 1 or chunk_size < 1:
        raise InputError(f"batch_size and chunk_size must be ≥ 1, got {batch_size}, {chunk_size}")
    images, name, content = _cache.unpack_data(data, key)
    n = len(images)

    net = create_backbone(backbone, weights=weights, taps=taps, seed=seed if str(weights).lower() == "none" else None)
    net.eval()
    size = int(image_size or net.input_size)
    # canonical order (the backbone's own), so the same set of taps always gives the same key
    order = list(net.tap_channels)
    out_taps = sorted(set(net.taps) | {POOL}, key=order.index)
    cache_key = {
        "format": FORMAT_VERSION,
        "dataset": name,
        "content_sha256": content,
        "n": n,
        "backbone": net.name,
        "weights": net.weights_id if net.weights_id != "none" else f"none:seed={seed}",
        "image_size": size,
        "taps": out_taps,
        "pooling": pooling,
        "dtype": dtype,
        "hashlearn": __version__,
        "torch": torch.__version__.split("+")[0],
    }
    label = f"{name}-{net.name}-{size}px"
    final = _cache.cache_folder(cache_dir, "features", label, cache_key)

    if use_cache and final.exists() and not rebuild:
        return _load_cached(final, cache_key)
    if use_cache and not rebuild:
        # a finished cache of the same settings with more taps serves any subset of them
        for folder in sorted(final.parent.glob(_cache.safe(label + "-") + "*")):
            superset = _superset_key(folder, cache_key)
            if superset is not None:
                return _load_cached(folder, superset, only=out_taps)
    if rebuild and final.exists():
        shutil.rmtree(final)

    with torch.inference_mode():  # output sizes: one tiny forward pass
        probe = net(net.preprocess(np.asarray(images[:1]), size))
    widths = {t: (2 if pooling == "avgmax" and probe[t].ndim == 4 else 1) * probe[t].shape[1] for t in out_taps}
    specs = {t: (f"{i:02d}-{_cache.safe(t)}.npy", (n, widths[t]), dtype) for i, t in enumerate(out_taps)}
    writer = _cache.ChunkedWriter(final if use_cache else None, cache_key, specs, chunk_size, "feature cache")
    if writer.finished:  # another process wrote it while this one waited
        writer.close()
        return _load_cached(final, cache_key)
    np_dtype = np.dtype(dtype)

    def compute(c0: int, c1: int, bar) -> None:
        chunk = _run_chunk(net, images, c0, c1, size, batch_size, out_taps, pooling, np_dtype, bar)
        for t in out_taps:
            writer.arrays[t][c0:c1] = chunk[t]

    computed, seconds = _cache.fill_chunks(writer, compute, f"{name} {net.name} {size}px", progress, num_threads)
    if progress:
        rate = computed / seconds if computed else float("nan")
        print(f"features {final.name}: {computed} images computed in {seconds:.1f} s ({rate:.1f} images/s)",
              file=sys.stderr)
    if not use_cache:
        return {t: writer.arrays[t] for t in out_taps}
    writer.finish({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "images_computed": computed,
                   "seconds": round(seconds, 2),
                   "images_per_second": round(computed / seconds, 2) if computed else None},
                  whole_file_sha256=True)
    return _load_cached(final, cache_key)


def _run_chunk(net, images, c0, c1, size, batch_size, taps, pooling, np_dtype, bar) -> dict[str, np.ndarray]:
    import torch

    parts: dict[str, list[np.ndarray]] = {t: [] for t in taps}
    with torch.inference_mode():
        for b0 in range(c0, c1, batch_size):
            b1 = min(c1, b0 + batch_size)
            x = net.preprocess(np.asarray(images[b0:b1]), size)
            out = net(x)
            for t in taps:
                v = out[t]
                if v.ndim == 4:
                    if pooling == "avg":
                        v = v.mean(dim=(2, 3))
                    elif pooling == "max":
                        v = v.amax(dim=(2, 3))
                    else:
                        v = torch.cat([v.mean(dim=(2, 3)), v.amax(dim=(2, 3))], dim=1)
                parts[t].append(v.float().numpy().astype(np_dtype, copy=False))
            if bar is not None:
                bar.update(b1 - b0)
    return {t: np.concatenate(p) for t, p in parts.items()}


def _superset_key(folder: Path, key: dict) -> dict | None:
    """The manifest key of ``folder`` when it equals ``key`` except for holding more taps."""
    try:
        other = json.loads((folder / "manifest.json").read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None
    same = {k: v for k, v in other.items() if k != "taps"} == {k: v for k, v in key.items() if k != "taps"}
    return other if same and set(key["taps"]) <= set(other.get("taps", [])) else None


def _load_cached(folder: Path, expected_key: dict, only: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    manifest = _cache.read_manifest(folder, expected_key, "feature cache")
    result = {}
    for tap, info in manifest["arrays"].items():
        if only is not None and tap not in only:
            continue
        result[tap] = _cache.open_array(folder, info, mmap=False)  # checks the whole-file sha256
        if "sha256" not in info:
            _cache.verify_chunks(folder, info, result[tap])
    return result if only is None else {t: result[t] for t in only}


def cached_feature_sets(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The finished caches under ``cache_dir``, for listing: pooled features (``kind`` ``"features"``) and
    spatial activations (``kind`` ``"activations"``, :func:`hashlearn.nn.extract_activations`), each as its
    manifest key plus ``path``, ``nbytes`` and ``images_per_second``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = []
    for kind in ("features", "activations"):
        for m in sorted((root / kind).glob("*/manifest.json")):
            try:
                info = json.loads(m.read_text())
                key = dict(info["key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            nbytes = sum((m.parent / a["file"]).stat().st_size for a in info.get("arrays", {}).values()
                         if (m.parent / a["file"]).exists())
            found.append({"kind": kind, "path": str(m.parent), **key, "nbytes": nbytes,
                          "images_per_second": info.get("images_per_second")})
    return found
