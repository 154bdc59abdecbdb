"""Tiny synthetic data for the trainer tests (8×8 grey images whose class sets a bright row)."""

import numpy as np

from hashlearn.data import ImageDataset, Split


def tiny_dataset(n_per_class: int = 30, classes: int = 4, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 60, size=(len(labels), 8, 8, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 * y : 2 * y + 2, :, 0] += 150
    return ImageDataset(images=images, labels=labels.astype(np.int64), ids=[f"img{i}" for i in range(len(labels))],
                        class_names=[f"c{c}" for c in range(classes)], name="tiny")


def tiny_split(ds: ImageDataset, seed: int = 0) -> Split:
    """query 5/class, val 3/class, train 12/class, database = everything but the queries."""
    rng = np.random.default_rng(seed)
    q, v, t = [], [], []
    for c in range(len(ds.class_names)):
        idx = rng.permutation(np.flatnonzero(ds.labels == c))
        q += list(idx[:5])
        v += list(idx[5:8])
        t += list(idx[8:20])
    db = np.setdiff1d(np.arange(len(ds)), q)
    return Split(query=np.sort(q), train=np.sort(t), val=np.sort(v), database=db, protocol="tiny", seed=seed,
                 n_images=len(ds), dataset=ds.name)


def tiny_config(**overrides):
    from hashlearn.train import load_config

    sets = [
        "method=dpsh", "bits=[8]", "backbone=smallcnn", "backbone_args={width: 4}", "train.epochs=2",
        "train.batch_size=16", "train.progress=false", "optim.lr=0.01", "eval.topk=[all]",
    ]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(overrides=sets)
