"""Spatial activations at a cut, computed once and cached on disk: fine-tuning above a tap on a CPU.

A CPU cannot fine-tune a large network end to end, so training starts from a cut: the part
of the backbone below and including tap ``T`` (:meth:`Backbone.forward_to`) runs once over
the dataset, its ``(C, H, W)`` map of every image is stored, and training runs only the
part above (:meth:`Backbone.forward_from`) plus the method's head, on the stored maps.

:func:`extract_activations` stores, per image, the map of the image and (``flip=True``) the
map of its horizontal mirror, as one memory-mapped ``.npy`` of shape ``(N, V, C, H, W)``
(``V`` = 2 with flips, else 1), float16 by default, so training can draw one of the two per
step and keep flip augmentation. The folder ``<cache>/activations/<dataset>-<backbone>-<size>px-
<tap>-<hash>/`` is keyed by the dataset's content, the backbone, its weights (the weights
identity plus the sha256 of the weights *below the cut*, which is all the maps depend on),
the image size, the tap, ``flip``, the dtype and the library versions, so every method and
run with the same backbone, weights, size and cut shares it. Writing, resume after a kill,
the atomic finish and the checks are the feature cache's (:mod:`hashlearn.nn._cache`): the
manifest records a sha256 per chunk of rows, and :class:`ActivationCache` checks each chunk
the first time it reads from it (:meth:`ActivationCache.verify` checks all at once), so a
tampered or truncated cache is an error, never silently used.

The size is ``N × V × C × H × W × itemsize`` bytes (:func:`activation_nbytes`); extraction
refuses with one line when the disk has less room than that.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.errors import HashlearnError, InputError
from hashlearn.nn import _cache

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
ARRAY = "activations"

__all__ = ["ActivationCache", "activation_nbytes", "activation_shape", "extract_activations"]


class ActivationCache:
    """A finished activation cache, memory-mapped read-only.

    ``len(cache)`` images; ``shape`` = ``(N, C, H, W)``, what :meth:`get` returns for all of them;
    ``item_shape`` = ``(C, H, W)``; ``views`` = 2 when mirrored maps are stored, else 1;
    ``nbytes`` (the array's bytes on disk), ``path`` (the folder), ``file`` (the ``.npy``),
    ``key`` (what it was made from), ``tap``, ``backbone``, ``image_size``, ``flip``, ``dtype``.
    """

    def __init__(self, folder: str | os.PathLike, expected_key: dict | None = None):
        self.path = Path(folder)
        if expected_key is None:  # opening a folder by path: its own key, still checked for being one of ours
            import json

            try:
                expected_key = json.loads((self.path / _cache.MANIFEST).read_text())["key"]
            except (OSError, ValueError, KeyError, TypeError):
                raise HashlearnError(f"activation cache {self.path} has no readable manifest; delete it or "
                                     f"pass rebuild=True") from None
        manifest = _cache.read_manifest(self.path, expected_key, "activation cache")
        if expected_key.get("kind") != "activations" or ARRAY not in manifest.get("arrays", {}):
            raise HashlearnError(f"{self.path} is not an activation cache")
        self.manifest = manifest
        self.key = manifest["key"]
        self._info = manifest["arrays"][ARRAY]
        self.array = _cache.open_array(self.path, self._info, mmap=True)  # (N, V, C, H, W), read-only
        self.file = self.path / self._info["file"]
        self._chunk_rows = int(self._info["chunk_rows"])
        self._verified = np.zeros(len(self._info["chunk_sha256"]), dtype=bool)

    tap = property(lambda self: self.key["tap"])
    backbone = property(lambda self: self.key["backbone"])
    image_size = property(lambda self: self.key["image_size"])
    flip = property(lambda self: bool(self.key["flip"]))
    dtype = property(lambda self: self.key["dtype"])
    views = property(lambda self: int(self.array.shape[1]))
    item_shape = property(lambda self: tuple(int(d) for d in self.array.shape[2:]))
    nbytes = property(lambda self: int(self.array.nbytes))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.item_shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __repr__(self) -> str:
        return (f"ActivationCache({self.backbone} {self.image_size}px @ {self.tap}: {len(self)} × {self.views} × "
                f"{self.item_shape} {self.dtype}, {_cache.human_bytes(self.nbytes)}, {str(self.path)!r})")

    def _check(self, rows: np.ndarray) -> None:
        chunks = np.unique(rows // self._chunk_rows)
        todo = chunks[~self._verified[chunks]]
        if len(todo):
            _cache.verify_chunks(self.path, self._info, self.array, todo.tolist())
            self._verified[todo] = True

    def verify(self) -> None:
        """Check the sha256 of every chunk now (:meth:`get` checks each chunk the first time it reads it)."""
        self._check(np.arange(0, len(self), self._chunk_rows))

    def get(self, indices: Any, flipped: Any = False):
        """Maps of images ``indices`` as a float32 tensor ``(B, C, H, W)``.

        ``flipped``: a bool for all, or one bool per index — the map of the mirrored image
        (needs a cache made with ``flip=True``).
        """
        import torch

        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        if idx.ndim == 0:
            idx = idx.reshape(1)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise InputError(f"index out of range for an activation cache of {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        flips = np.asarray(flipped.cpu() if isinstance(flipped, torch.Tensor) else flipped)
        if flips.ndim > 1 or (flips.ndim == 1 and len(flips) != len(idx)):
            raise InputError(f"flipped must be a bool or one bool per index; got shape {flips.shape} for "
                             f"{len(idx)} indices")
        view = np.broadcast_to(flips.astype(bool), idx.shape).astype(np.int64)
        if view.any() and self.views == 1:
            raise InputError(f"activation cache {self.path.name} holds no mirrored maps (made with flip=False)")
        self._check(idx)
        values = self.array[idx, view] if self.views > 1 else self.array[idx, 0]
        return torch.from_numpy(np.asarray(values, dtype=np.float32))


def activation_shape(net, tap: str, image_size: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of the map at ``tap`` for ``image_size`` px inputs (one tiny forward pass)."""
    import torch

    x = torch.zeros(1, net.in_channels, int(image_size), int(image_size), device=_device(net))
    with torch.inference_mode():
        return tuple(int(d) for d in net.forward_to(tap, x).shape[1:])


def activation_nbytes(net, tap: str, image_size: int, n: int, *, flip: bool = True, dtype: str = "float16") -> int:
    """Bytes of an activation cache of ``n`` images: ``n × (1 + flip) × C × H × W × itemsize``."""
    c, h, w = activation_shape(net, tap, image_size)
    return int(n) * (2 if flip else 1) * c * h * w * np.dtype(dtype).itemsize


def _device(net):
    import torch

    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def extract_activations(
    backbone: Any,
    images_or_dataset: Any,
    tap: str,
    image_size: int | None = None,
    *,
    flip: bool = True,
    dtype: str = "float16",
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    weights: str | os.PathLike = "default",
    seed: int = 0,
    key: str | None = None,
    chunk_size: int = 1024,
    num_threads: int | None = None,
    rebuild: bool = False,
) -> ActivationCache:
    """The map at ``tap`` of every image (and of its mirror, ``flip=True``), cached on disk.

    ``backbone``: a :class:`~hashlearn.nn.Backbone` (used as it is, on its device) or a
    registered name (built with ``weights`` / ``seed``). ``images_or_dataset``: an
    :class:`~hashlearn.data.ImageDataset` or uint8 images (N,H,W[,C]); ``key`` names an array.
    ``image_size``: the side images are resized to (default: the backbone's ``input_size``).
    The part below the cut runs in eval mode under ``torch.inference_mode`` (the backbone's
    train/eval flags are restored afterwards). ``chunk_size`` images are written between
    resume points; ``rebuild=True`` recomputes a finished cache.

    Returns an :class:`ActivationCache`. Raises :class:`HashlearnError` (one line) when the
    disk has no room, and when a finished cache is stale or tampered.
    """
    import torch

    from hashlearn import __version__
    from hashlearn.nn.backbones import Backbone, create_backbone

    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if batch_size < 1 or chunk_size < 1:
        raise InputError(f"batch_size and chunk_size must be ≥ 1, got {batch_size}, {chunk_size}")
    images, name, content = _cache.unpack_data(images_or_dataset, key)
    n = len(images)
    if isinstance(backbone, Backbone):
        net = backbone
    elif isinstance(backbone, str):
        net = create_backbone(backbone, weights=weights, seed=seed if str(weights).lower() == "none" else None)
    else:
        raise InputError(f"backbone must be a Backbone or a registered name, got {type(backbone).__name__}")
    net._cut_index(tap)  # unknown / vector taps: one-line error before any work
    size = int(image_size or net.input_size)
    cache_key = {
        "format": FORMAT_VERSION,
        "kind": "activations",
        "dataset": name,
        "content_sha256": content,
        "n": n,
        "backbone": net.name,
        "weights": net.weights_id,
        "weights_below_sha256": net.state_digest_below(tap),
        "in_channels": net.in_channels,
        "normalise": [list(net.mean), list(net.std)],
        "image_size": size,
        "tap": tap,
        "flip": bool(flip),
        "dtype": dtype,
        "hashlearn": __version__,
        "torch": torch.__version__.split("+")[0],
    }
    label = f"{name}-{net.name}-{size}px-{tap}"
    final = _cache.cache_folder(cache_dir, "activations", label, cache_key)
    if final.exists() and not rebuild:
        return ActivationCache(final, cache_key)
    if rebuild and final.exists():
        shutil.rmtree(final)

    flags = {m: m.training for m in net.modules()}
    net.eval()
    device = _device(net)
    try:
        c, h, w = activation_shape(net, tap, size)
        views = 2 if flip else 1
        specs = {ARRAY: ("activations.npy", (n, views, c, h, w), dtype)}
        note = f" ({n} images × {views} × {c}×{h}×{w} × {np.dtype(dtype).itemsize} B)"
        writer = _cache.ChunkedWriter(final, cache_key, specs, chunk_size, "activation cache", note)
        if writer.finished:
            writer.close()
            return ActivationCache(final, cache_key)

        def compute(c0: int, c1: int, bar) -> None:
            _run_chunk(net, images, c0, c1, size, batch_size, tap, flip, writer.arrays[ARRAY], device, bar)

        computed, seconds = _cache.fill_chunks(writer, compute, f"{name} {net.name} {size}px → {tap}", progress,
                                               num_threads)
        rate = round(computed / seconds, 2) if computed else None
        if progress:
            print(f"activations {final.name}: {computed} images computed in {seconds:.1f} s ({rate} images/s), "
                  f"{_cache.human_bytes(n * views * c * h * w * np.dtype(dtype).itemsize)}", file=sys.stderr)
        writer.finish({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "images_computed": computed,
                       "seconds": round(seconds, 2), "images_per_second": rate})
    finally:
        for m, training in flags.items():
            m.training = training
    return ActivationCache(final, cache_key)


def _run_chunk(net, images, c0: int, c1: int, size: int, batch_size: int, tap: str, flip: bool,
               out: np.ndarray, device, bar) -> None:
    """Maps of images ``c0:c1`` (and their mirrors) into rows ``c0:c1`` of ``out`` (N, V, C, H, W)."""
    import torch

    with torch.inference_mode():
        for b0 in range(c0, c1, batch_size):
            b1 = min(c1, b0 + batch_size)
            x = net.preprocess(np.asarray(images[b0:b1]), size).to(device)
            for view, inputs in enumerate((x, x.flip(-1)) if flip else (x,)):
                a = net.forward_to(tap, inputs).to(torch.float16 if out.dtype == np.float16 else torch.float32)
                if not torch.isfinite(a).all():
                    raise HashlearnError(f"the maps at {tap!r} of {net.name} overflow {out.dtype} (images {b0}–"
                                         f"{b1 - 1}); use dtype='float32'")
                out[b0:b1, view] = a.cpu().numpy()
            if bar is not None:
                bar.update(b1 - b0)
