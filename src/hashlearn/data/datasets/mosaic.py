"""A **synthetic** multi-label set: seeded ``grid × grid`` mosaics of a single-label set's images.

``cifar10-mosaic-synthetic`` is built from CIFAR-10 (the prepared copy when there is one). Its
name says synthetic wherever it appears, so results can never pass for a real multi-label
benchmark.
"""

from __future__ import annotations

import numpy as np

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import load_dataset, register_dataset
from hashlearn.data.datasets._base import SPLIT_ORDER, Load
from hashlearn.data.sources import Alloc, alloc_in_memory
from hashlearn.data.store import open_prepared
from hashlearn.errors import InputError, NotFoundError


def make_mosaics(
    ds: ImageDataset,
    *,
    grid: int = 2,
    seed: int = 0,
    alloc: Alloc = alloc_in_memory,
    size: int | None = None,
    progress: bool = False,
) -> ImageDataset:
    """A **synthetic** multi-label set: ``grid × grid`` mosaics of a single-label set's images.

    Within each official split (so test mosaics are built from test images only), the images
    are shuffled with ``seed`` and cut into groups of ``grid²``; each group becomes one mosaic
    (``grid·H × grid·W``) whose multi-hot label is the union of its tiles' classes (1 to
    ``grid²`` labels). Every source image is used at most once; a remainder of fewer than
    ``grid²`` images per split is dropped. The name gets ``-mosaic-synthetic`` so results can
    never pass for a real multi-label benchmark. Ids list the tiles, row by row.
    """
    if ds.multilabel:
        raise InputError(f"{ds.name}: mosaics are built from a single-label set")
    k = grid * grid
    rng = np.random.default_rng(seed)
    splits = ds.official_split if ds.official_split is not None else np.full(len(ds), "")
    groups, group_split = [], []
    for s in sorted(set(splits.tolist()), key=lambda v: SPLIT_ORDER.index(v) if v in SPLIT_ORDER else 99):
        members = rng.permutation(np.flatnonzero(splits == s))
        usable = len(members) - len(members) % k
        groups.append(members[:usable].reshape(-1, k))
        group_split += [s] * (usable // k)
    tiles = np.concatenate(groups)
    if len(tiles) == 0:
        raise InputError(f"{ds.name}: too few images for one {grid}x{grid} mosaic per split")
    h, w, c = ds.image_shape
    shape = (len(tiles), size or grid * h, size or grid * w, c)
    images = alloc(shape)
    labels = np.zeros((len(tiles), ds.n_classes), dtype=np.uint8)
    from tqdm.auto import tqdm

    for m, group in enumerate(tqdm(tiles, desc="mosaics", unit="img", disable=not progress, leave=False)):
        rows = [np.concatenate([ds.images[i] for i in group[r * grid : (r + 1) * grid]], axis=1) for r in range(grid)]
        mosaic = np.concatenate(rows, axis=0)
        if size is not None:
            from PIL import Image

            from hashlearn.data.images import resize_and_crop

            pil = Image.fromarray(mosaic[..., 0] if c == 1 else mosaic)
            mosaic = np.asarray(resize_and_crop(pil, size), dtype=np.uint8).reshape(size, size, c)
        images[m] = mosaic
        labels[m, ds.labels[group]] = 1
    return ImageDataset(
        images=images,
        labels=labels,
        ids=np.array(["+".join(ds.ids[group]) for group in tiles]),
        class_names=list(ds.class_names),
        official_split=np.array(group_split) if ds.official_split is not None else None,
        name=f"{ds.name}-mosaic-synthetic",
        info={"source": ds.info.get("source"), "synthetic": True, "grid": grid, "seed": seed, "skipped": []},
    )


@register_dataset(
    "cifar10-mosaic-synthetic", kind="multi-label (synthetic)", classes=10, synthetic=True, protocol="per-label"
)
def build_cifar10_mosaic(load: Load, *, seed: int = 0, grid: int = 2) -> ImageDataset:
    """SYNTHETIC multi-label set: seeded 2x2 mosaics of CIFAR-10 images, multi-hot labels."""
    try:
        base = open_prepared("cifar10") if load.source is None else None
    except NotFoundError:
        base = None
    if base is None:
        base = load_dataset("cifar10", load.source, skip_bad=load.skip_bad, progress=load.progress)
    ds = make_mosaics(base, grid=grid, seed=seed, alloc=load.alloc, size=load.size, progress=load.progress)
    ds.name = load.name
    return ds
