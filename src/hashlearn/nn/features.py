"""Frozen-backbone features, computed once and cached on disk.

:func:`extract_features` runs a backbone in inference mode over a set of images, globally
pools each requested tap to a vector, and stores one ``(N, C)`` array per tap under
``<cache_dir>/features/<key>/``. The key covers everything the numbers depend on: the
dataset's name and content, the backbone, its weights (sha256 of the file, or ``none`` +
seed), the image size, the taps, the pooling, the dtype and the library versions. A
manifest stores the key and the sha256 of every array; a later call checks both, so a
stale or tampered cache raises instead of being used silently. Work is written in chunks
(``<key>.partial/``) so an interrupted extraction resumes where it stopped; the finished
folder appears with one atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn._digest import file_digest
from hashlearn.errors import HashlearnError, InputError

FORMAT_VERSION = 1
POOLINGS = ("avg", "max", "avgmax")


def default_cache_dir() -> Path:
    """``$HASHLEARN_CACHE`` or ``~/.cache/hashlearn`` (same rule as :mod:`hashlearn.data`)."""
    try:
        from hashlearn.data import cache_root  # type: ignore[attr-defined]

        return Path(cache_root())
    except ImportError:
        env = os.environ.get("HASHLEARN_CACHE")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "hashlearn"


def _sha256_array(a: np.ndarray) -> str:
    h = hashlib.sha256()
    a = np.ascontiguousarray(a) if not isinstance(a, np.memmap) else a
    flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
    step = max(1, (1 << 24) // max(1, flat[0].nbytes if len(flat) else 1))
    for s in range(0, len(flat), step):
        h.update(np.ascontiguousarray(flat[s:s + step]).tobytes())
    return h.hexdigest()


def dataset_fingerprint(images: np.ndarray, ids: Sequence[Any] | None = None) -> str:
    """sha256 over the image bytes, their shape, and the ids when given."""
    h = hashlib.sha256()
    h.update(repr((tuple(images.shape), str(images.dtype))).encode())
    h.update(_sha256_array(images).encode())
    if ids is not None:
        h.update(_sha256_array(np.asarray([str(i) for i in ids])).encode())
    return h.hexdigest()


def _unpack_data(data: Any, key: str | None) -> tuple[np.ndarray, str, str]:
    """(images, dataset name, content fingerprint) from an ImageDataset-like object or an array."""
    if hasattr(data, "images"):
        images = data.images
        name = key or getattr(data, "name", None) or "dataset"
        content = getattr(data, "content_sha256", None) or getattr(data, "checksum", None)
        if not isinstance(content, str):
            content = dataset_fingerprint(images, getattr(data, "ids", None))
    else:
        images = data
        if not isinstance(images, np.ndarray):
            raise InputError(f"images must be a numpy array or an ImageDataset, got {type(data).__name__}")
        name = key or "array"
        content = dataset_fingerprint(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise InputError(f"{name}: images must be uint8 (N,H,W) or (N,H,W,1|3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise InputError(f"{name}: no images")
    return images, name, content


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


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
    images, name, content = _unpack_data(data, key)
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
    key_hash = hashlib.sha256(json.dumps(cache_key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "features" / _safe(f"{name}-{net.name}-{size}px-{key_hash}")

    if use_cache and final.exists() and not rebuild:
        return _load_cached(final, cache_key)
    if use_cache and not rebuild:
        # a finished cache of the same settings with more taps serves any subset of them
        for folder in sorted(final.parent.glob(_safe(f"{name}-{net.name}-{size}px-") + "*")):
            superset = _superset_key(folder, cache_key)
            if superset is not None:
                return _load_cached(folder, superset, only=out_taps)
    if rebuild and final.exists():
        shutil.rmtree(final)

    partial = final.with_name(final.name + ".partial")
    if use_cache:
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "key.json").write_text(json.dumps(cache_key, indent=1, sort_keys=True))

    old_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    np_dtype = np.dtype(dtype)
    chunks: list[dict[str, np.ndarray]] = []
    started = time.perf_counter()
    computed = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc=f"{name} {net.name} {size}px", file=sys.stderr,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, smoothing=0.05)
    try:
        for c0 in range(0, n, chunk_size):
            c1 = min(n, c0 + chunk_size)
            chunk_file = partial / f"chunk-{c0:09d}-{c1:09d}.npz"
            chunk = _read_chunk(chunk_file, out_taps, c1 - c0) if use_cache else None
            if chunk is None:
                chunk = _run_chunk(net, images, c0, c1, size, batch_size, out_taps, pooling, np_dtype, bar)
                computed += c1 - c0
                if use_cache:
                    tmp = chunk_file.with_name(f".{chunk_file.stem}.{os.getpid()}.tmp.npz")
                    np.savez(tmp, **chunk)
                    os.replace(tmp, chunk_file)
            elif bar is not None:
                bar.update(c1 - c0)
            chunks.append(chunk)
    finally:
        torch.set_num_threads(old_threads)
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    result = {t: np.concatenate([c[t] for c in chunks]) for t in out_taps}
    if progress:
        rate = computed / seconds if computed else float("nan")
        print(f"features {final.name}: {computed} images computed in {seconds:.1f} s ({rate:.1f} images/s)",
              file=sys.stderr)
    if not use_cache:
        return result

    tmp_dir = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    arrays = {}
    for i, t in enumerate(out_taps):
        fname = f"{i:02d}-{_safe(t)}.npy"
        _atomic_save_npy(tmp_dir / fname, result[t])
        arrays[t] = {"file": fname, "shape": list(result[t].shape), "dtype": dtype,
                     "sha256": file_digest(tmp_dir / fname)}
    manifest = {"key": cache_key, "arrays": arrays, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "images_computed": computed, "seconds": round(seconds, 2),
                "images_per_second": round(computed / seconds, 2) if computed else None}
    (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        os.rename(tmp_dir, final)
    except OSError:  # another process finished the same key first: keep theirs
        shutil.rmtree(tmp_dir, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    return result


def _read_chunk(path: Path, taps: list[str], rows: int) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            chunk = {t: z[t] for t in taps}
    except Exception:  # a half-written or damaged chunk is recomputed
        return None
    return chunk if all(len(a) == rows for a in chunk.values()) else None


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
    where = str(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        raise HashlearnError(
            f"feature cache {where} has no readable manifest; delete it or pass rebuild=True"
        ) from None
    if manifest.get("key") != expected_key:
        raise HashlearnError(f"feature cache {where} was made for different settings (stale); "
                             f"delete it or pass rebuild=True")
    result = {}
    for tap, info in manifest["arrays"].items():
        if only is not None and tap not in only:
            continue
        path = folder / info["file"]
        if not path.exists() or file_digest(path) != info["sha256"]:
            raise HashlearnError(f"feature cache file {path} is missing or does not match its checksum "
                                 f"(tampered or corrupt); delete {where} or pass rebuild=True")
        result[tap] = np.load(path)
    return result if only is None else {t: result[t] for t in only}


def cached_feature_sets(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The finished feature caches under ``cache_dir`` (manifest key + folder), for listing."""
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "features"
    found = []
    for m in sorted(root.glob("*/manifest.json")):
        try:
            info = json.loads(m.read_text())
        except ValueError:
            continue
        found.append({"path": str(m.parent), **info["key"], "images_per_second": info.get("images_per_second")})
    return found
