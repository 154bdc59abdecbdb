"""MNIST and Fashion-MNIST from their idx files (grey, 28x28x1).

Whichever of the train (``train-*``) and test (``t10k-*``) splits has both its images and its
labels file is loaded; a file without its pair is listed in ``info["ignored_without_pair"]``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import Load
from hashlearn.data.sources import one_line
from hashlearn.errors import InputError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or raw) as a ``uint8`` array, e.g. ``(n, 28, 28)`` or ``(n,)``."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read idx file {path}: {one_line(exc)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise InputError(f"{path}: header says {dims} ({expected} bytes) but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    for sep in ("-", "."):
        for ext in (".gz", ""):
            p = folder / f"{prefix}-{kind}{sep}idx{3 if kind == 'images' else 1}-ubyte{ext}"
            if p.exists():
                return p
    return None


def load_idx_folder(load: Load, source: Path, *, class_names: list[str]) -> ImageDataset:
    """The standard idx files of a folder; each split with both images and labels is loaded."""
    if not source.is_dir():
        raise InputError(f"{source}: expected a folder holding *-images-idx3-ubyte(.gz) files")
    parts, ignored = [], []
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images_path, labels_path = _find_idx(source, prefix, "images"), _find_idx(source, prefix, "labels")
        if images_path is None or labels_path is None:
            ignored += [str(p) for p in (images_path, labels_path) if p is not None]
            continue
        imgs, labs = read_idx(images_path), read_idx(labels_path)
        if imgs.ndim != 3 or labs.ndim != 1 or len(imgs) != len(labs):
            raise InputError(f"{images_path}: {imgs.shape} images do not match {labs.shape} labels in {labels_path}")
        parts.append((split, split, imgs[..., None], labs))
    if not parts:
        raise InputError(f"{source}: no idx image file with its label file (train-*/t10k-*) found")
    return load.from_parts(parts, class_names=class_names, source=str(source), info={"ignored_without_pair": ignored})


# MNIST-like sets are evaluated in the hashing literature with CIFAR-10's protocol I (100 queries and
# 500 training images a class, the rest the database), so that is their default.
@register_dataset("mnist", kind="single-label", classes=10, default_source="mnist-test", protocol="cifar10-1")
def build_mnist(load: Load) -> ImageDataset:
    """MNIST idx files (grey, 28x28x1); loads whichever of train/test has images and labels."""
    return load_idx_folder(load, load.require_source(), class_names=[str(i) for i in range(10)])


@register_dataset(
    "fashion-mnist", kind="single-label", classes=10, images=70000, default_source="fashion-mnist", protocol="cifar10-1"
)
def build_fashion_mnist(load: Load) -> ImageDataset:
    """Fashion-MNIST idx files (grey, 28x28x1; Debian's dataset-fashion-mnist is found by default)."""
    return load_idx_folder(load, load.require_source(SYSTEM_FASHION_MNIST), class_names=FASHION_MNIST_CLASSES)
