"""The in-memory (or memory-mapped) form of every dataset: :class:`ImageDataset`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hashlearn.errors import InputError


@dataclass(eq=False)
class ImageDataset:
    """Images, labels and per-image metadata, all aligned on the first axis.

    Attributes
    ----------
    images : ``uint8 (N, H, W, C)``; ``C`` is 3 (RGB) or 1 (grey). May be a read-only memmap.
    labels : ``int64 (N,)`` class indices (single-label) or ``uint8 (N, n_classes)`` multi-hot.
    ids : ``str (N,)`` stable identifiers, e.g. ``'train/airplane/0001.jpg'`` or
        ``'test_batch:17'``; they survive re-ordering, so results and splits can name images.
    class_names : one name per class / label column.
    official_split : ``str (N,)`` (``'train'``, ``'test'``, …) when the source defines one, else ``None``.
    name : dataset name; synthetic sets carry ``synthetic`` in it.
    info : free-form provenance (source, skipped files, …), copied into the cache manifest.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: list[str]
    official_split: np.ndarray | None = None
    name: str = "dataset"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=str)
        if self.official_split is not None:
            self.official_split = np.asarray(self.official_split, dtype=str)
        self.class_names = [str(c) for c in self.class_names]
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise InputError(
                f"{self.name}: images must be uint8 (N, H, W, 1 or 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.ndim == 1:
            if self.labels.dtype != np.int64:
                self.labels = self.labels.astype(np.int64)
            if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
                bad = self.labels[(self.labels < 0) | (self.labels >= len(self.class_names))][0]
                raise InputError(
                    f"{self.name}: class index {bad} is out of range for {len(self.class_names)} classes "
                    f"(0..{len(self.class_names) - 1})"
                )
        elif self.labels.ndim == 2:
            if self.labels.dtype != np.uint8:
                self.labels = (np.asarray(self.labels) > 0).astype(np.uint8)
            if self.labels.shape[1] != len(self.class_names):
                raise InputError(
                    f"{self.name}: {self.labels.shape[1]} label columns but {len(self.class_names)} class names"
                )
        else:
            raise InputError(f"{self.name}: labels must be (N,) or (N, C), got shape {self.labels.shape}")
        for what, arr in (("labels", self.labels), ("ids", self.ids), ("official_split", self.official_split)):
            if arr is not None and len(arr) != n:
                raise InputError(f"{self.name}: {len(arr)} {what} for {n} images")

    # -- basic properties -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image, label)`` of image ``i`` (what a torch ``Dataset`` needs)."""
        return self.images[i], self.labels[i]

    def __repr__(self) -> str:
        kind = "multi-label" if self.multilabel else "single-label"
        shape = "x".join(str(s) for s in self.image_shape)
        return f"ImageDataset({self.name!r}, n={len(self)}, image={shape}, {self.n_classes} classes, {kind})"

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    # -- derived views ----------------------------------------------------------------------
    def label_matrix(self) -> np.ndarray:
        """Multi-hot ``uint8 (N, n_classes)`` labels for both kinds (one-hot for single-label)."""
        if self.multilabel:
            return np.asarray(self.labels, dtype=np.uint8)
        out = np.zeros((len(self), self.n_classes), dtype=np.uint8)
        out[np.arange(len(self)), self.labels] = 1
        return out

    def subset(self, indices: np.ndarray | list[int], name: str | None = None) -> ImageDataset:
        """A new dataset holding ``indices`` (in that order); images are copied into memory."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            images=np.asarray(self.images[idx]),
            labels=np.asarray(self.labels[idx]),
            ids=self.ids[idx],
            class_names=list(self.class_names),
            official_split=None if self.official_split is None else self.official_split[idx],
            name=name or self.name,
            info=dict(self.info),
        )

    def class_counts(self) -> dict[str, int]:
        """Images per class (for multi-label sets: images carrying each label)."""
        counts = (
            self.label_matrix().sum(axis=0) if self.multilabel else np.bincount(self.labels, minlength=self.n_classes)
        )
        return {c: int(k) for c, k in zip(self.class_names, counts, strict=True)}

    def split_counts(self) -> dict[str, int]:
        """Images per official split (``{'all': N}`` when the source has none)."""
        if self.official_split is None:
            return {"all": len(self)}
        return dict(sorted(Counter(self.official_split.tolist()).items(), key=lambda kv: _split_rank(kv[0])))

    def summary(self) -> dict[str, Any]:
        """Counts per split and per class, as printed by ``hashlearn data info``."""
        per_split_class: dict[str, dict[str, int]] = {}
        splits = self.official_split if self.official_split is not None else np.full(len(self), "all")
        matrix = self.label_matrix()
        for s in sorted(set(splits.tolist()), key=_split_rank):
            counts = matrix[splits == s].sum(axis=0)
            per_split_class[s] = {c: int(k) for c, k in zip(self.class_names, counts, strict=True)}
        return {
            "name": self.name,
            "images": len(self),
            "image_shape": list(self.image_shape),
            "multilabel": self.multilabel,
            "classes": self.n_classes,
            "per_split": self.split_counts(),
            "per_class": self.class_counts(),
            "per_split_class": per_split_class,
        }


def _split_rank(split: str) -> tuple[int, str]:
    """Order official splits as train, val, test, then any others by name."""
    order = ("train", "val", "test")
    return (order.index(split) if split in order else len(order), split)
