"""Batch orders for the training loop (``train.sampler``).

* ``random`` — a seeded permutation of the training set, cut into batches (the last partial batch
  dropped): every image once per epoch.
* ``class_balanced`` — every class in every batch (spec §2, ATH: "oversample minority classes so
  each batch contains every class"). Each batch of ``S`` images gives every class ``⌊S / C⌋``
  places and ``S mod C`` classes, drawn at random per batch, one more. A class's images are
  drawn from its own seeded permutation, taken in turn and reshuffled when used up, so a class
  of few images is repeated (oversampled) and a large one is sampled without repeats within a
  pass. Multi-hot labels: the images carrying label ``c`` are class ``c``'s pool (an image may
  then be drawn for each of its labels). Classes without a training image are left out. An epoch
  has as many batches as with ``random`` (``⌊N / S⌋``).
* ``auto`` (the default) — the method's preferred order, its ``sampler`` attribute (triplet
  methods such as ATH and DTSH prefer ``class_balanced``), else ``random``; ``random`` too when a
  batch cannot hold every class (e.g. 200 classes in batches of 64; the trainer says so).

Data parallelism: each global batch is ``W`` balanced sub-batches of ``S / W`` images in rank
order, so the slice each rank takes is itself balanced; that needs ``S / W ≥ C`` (else one line).
The order of an epoch is a function of ``(seed, epoch)`` only, so a resumed run is bit-exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashlearn.errors import InputError

SAMPLERS = ("auto", "random", "class_balanced")


def resolve_sampler(setting: str, method: Any, labels: np.ndarray | None = None, batch_size: int | None = None,
                    world: int = 1) -> str:
    """``random`` or ``class_balanced``: the setting, or for ``auto`` the method's preference — unless
    (``labels`` and ``batch_size`` given) a batch cannot hold every class, where ``auto`` falls back to
    ``random`` (an explicit ``class_balanced`` is refused by :func:`check_class_balanced` instead)."""
    if setting != "auto":
        return setting
    preferred = getattr(method, "sampler", "random")
    preferred = preferred if preferred in SAMPLERS[1:] else "random"
    if preferred == "class_balanced" and labels is not None and batch_size is not None:
        if batch_size // max(world, 1) < len(class_pools(labels)):
            return "random"
    return preferred


def class_pools(labels: np.ndarray) -> list[np.ndarray]:
    """The training positions of each class that has some (class ids ``(N,)`` or multi-hot ``(N, C)``)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return [np.flatnonzero(labels == c) for c in np.unique(labels)]
    pools = [np.flatnonzero(labels[:, c] > 0) for c in range(labels.shape[1])]
    return [p for p in pools if len(p)]


def check_class_balanced(labels: np.ndarray, batch_size: int, world: int = 1) -> int:
    """The number of classes; an :class:`InputError` when a (per-process) batch cannot hold them all."""
    classes = len(class_pools(labels))
    shard = batch_size // max(world, 1)
    if shard < classes:
        per = f" per process ({batch_size} / {world})" if world > 1 else ""
        raise InputError(f"train.sampler class_balanced: a batch of {shard} images{per} cannot hold all {classes} "
                         f"classes; raise train.batch_size to at least {classes * max(world, 1)} or use "
                         f"train.sampler=random")
    return classes


def class_balanced_order(labels: np.ndarray, n_batches: int, batch_size: int, seed: int, world: int = 1) -> np.ndarray:
    """Training positions for ``n_batches`` global batches of ``batch_size``: ``world`` balanced
    sub-batches each (see the module docstring), ``(n_batches · batch_size,)`` int64."""
    check_class_balanced(labels, batch_size, world)
    pools = class_pools(labels)
    classes = len(pools)
    shard = batch_size // max(world, 1)
    rng = np.random.default_rng(seed)
    streams = [rng.permutation(p) for p in pools]
    cursor = [0] * classes

    def take(c: int, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if cursor[c] == len(streams[c]):
                streams[c], cursor[c] = rng.permutation(pools[c]), 0
            step = min(k - len(out), len(streams[c]) - cursor[c])
            out += streams[c][cursor[c]:cursor[c] + step].tolist()
            cursor[c] += step
        return out

    base, extra = divmod(shard, classes)
    order: list[int] = []
    for _ in range(n_batches * max(world, 1)):
        counts = np.full(classes, base)
        counts[rng.choice(classes, size=extra, replace=False)] += 1
        sub: list[int] = []
        for c in range(classes):
            sub += take(c, int(counts[c]))
        order += rng.permutation(np.asarray(sub, dtype=np.int64)).tolist()
    return np.asarray(order, dtype=np.int64)
