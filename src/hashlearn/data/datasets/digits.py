"""scikit-learn's 8x8 digits (1,797 grey images, bundled with scikit-learn: always available offline)."""

from __future__ import annotations

import numpy as np

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import Load


@register_dataset("digits", kind="single-label", classes=10, images=1797, default_source=None, protocol="per-class")
def build_digits(load: Load) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits; values 0..16 scaled to 0..255 (round(v * 255 / 16))."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return load.from_arrays(
        images,
        labels=bunch.target.astype(np.int64),
        class_names=[str(i) for i in range(10)],
        ids=[f"digits:{i}" for i in range(len(images))],
        source="sklearn.datasets.load_digits",
    )
