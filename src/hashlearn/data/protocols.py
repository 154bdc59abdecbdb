"""Retrieval protocols: named, seeded rules that cut a dataset into query / train / val / database.

Every split has four index arrays into the dataset (each sorted ascending):

* ``query`` — the images searched with at test time. Never used for fitting or model selection.
* ``train`` — the images a method is *fitted* on.
* ``val`` — a held-out slice of the protocol's training set (default 10 % of it, per class,
  rounded half up),
  for model selection (epochs, hyper-parameters). Model selection searches ``val`` queries
  against ``train`` as the database (:meth:`Split.model_selection`), so the test queries are
  never looked at before the final evaluation.
* ``database`` — the images retrieved from at test time.

The protocol's training set (what the papers call "training set", e.g. CIFAR-10's 5,000)
is ``train ∪ val``; ``val_fraction=0`` gives ``train`` all of it.

When the protocol names a ``val_split`` (``official-split`` does: ``val``) and the dataset has
images in that official split (a ``val/``, ``valid/`` or ``validation/`` folder beside ``train/``
and ``test/``), those images are ``val`` instead of a slice of the training set.

Draws use one ``numpy.random.default_rng(seed)`` in a fixed order (queries class by class,
then training images class by class, then the validation slice), so the same seed, dataset and
parameters always give the same split, and a different seed a different one.

:func:`default_protocol` says which protocol fits a dataset when none is given.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn._atomic import atomic_target
from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import DATASETS, load_all
from hashlearn.data.sources import one_line
from hashlearn.data.store import prepared_path, read_manifest
from hashlearn.errors import InputError, NotFoundError
from hashlearn.registry import Registry

PROTOCOLS = Registry("protocol")
SPLIT_PARTS = ("query", "train", "val", "database")
SPLIT_FORMAT = "hashlearn-split"


def _checksum(parts: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in SPLIT_PARTS:
        h.update(key.encode())
        h.update(np.ascontiguousarray(parts[key], dtype="<i8").tobytes())
    return h.hexdigest()


def check_split_path(path: str | Path) -> Path:
    """``Path(path)`` if it ends in ``.json`` or ``.npz`` and can be written, else :class:`InputError`."""
    path = Path(path)
    if path.suffix not in (".json", ".npz"):
        raise InputError(f"split file {path} must end in .json or .npz")
    if path.is_dir():
        raise InputError(f"split file {path} is a folder")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write split file {path}: {folder} is read-only or not a writable folder")
    return path


@dataclass(eq=False)
class Split:
    """Index arrays of one protocol applied to one dataset with one seed (see the module docstring)."""

    query: np.ndarray
    train: np.ndarray
    val: np.ndarray
    database: np.ndarray
    protocol: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_images: int = 0
    dataset: str | None = None
    ids_sha256: str | None = None  # of the dataset's ids, in order: which images the indices point at

    def __post_init__(self) -> None:
        for key in SPLIT_PARTS:
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.int64))

    @property
    def sizes(self) -> dict[str, int]:
        return {key: len(getattr(self, key)) for key in SPLIT_PARTS}

    @property
    def checksum(self) -> str:
        """sha256 of the four index arrays (little-endian int64, in the order query, train, val, database)."""
        return _checksum({key: getattr(self, key) for key in SPLIT_PARTS})

    def check(self, ds: ImageDataset, where: str | Path | None = None) -> Split:
        """``self`` if it was made for ``ds`` (same number of images and, when recorded, the same ids in
        the same order), else :class:`InputError` naming the split (``where``, e.g. its file) and ``ds``."""
        what = f"split file {where}" if where is not None else f"split {self.protocol!r}"
        made_for = f"dataset {self.dataset!r}" if self.dataset else "another dataset"
        if self.n_images != len(ds):
            raise InputError(
                f"{what} was made for {made_for} of {self.n_images:,} images, not {ds.name!r} of {len(ds):,}"
            )
        every = np.concatenate([getattr(self, k) for k in SPLIT_PARTS])
        if len(every) and (every.min() < 0 or every.max() >= len(ds)):
            raise InputError(f"{what} has indices outside 0..{len(ds) - 1} of dataset {ds.name!r}")
        if self.ids_sha256 is not None and self.ids_sha256 != ids_digest(ds.ids):
            raise InputError(
                f"{what} was made for {made_for}, whose images differ from those of {ds.name!r} "
                "(other ids, or another order); make the split again with hashlearn data split"
            )
        return self

    def model_selection(self) -> tuple[np.ndarray, np.ndarray]:
        """``(queries, database)`` for choosing models: ``val`` searched against ``train``."""
        return self.val, self.train

    def describe(self) -> dict[str, Any]:
        """What a result file records about the split."""
        return {
            "protocol": self.protocol,
            "params": dict(self.params),
            "seed": self.seed,
            "dataset": self.dataset,
            "n_images": self.n_images,
            "sizes": self.sizes,
            "checksum": self.checksum,
        }

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"Split({self.protocol!r}, seed={self.seed}, {sizes})"

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to ``.json`` (readable lists) or ``.npz`` (compact); the checksum goes along."""
        path = check_split_path(path)
        meta = {"format": SPLIT_FORMAT, "version": 1, **self.describe()}
        if self.ids_sha256 is not None:
            meta["ids_sha256"] = self.ids_sha256
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_target(path) as tmp:  # written whole, then renamed: never half a file
                if path.suffix == ".json":
                    payload = {**meta, **{key: getattr(self, key).tolist() for key in SPLIT_PARTS}}
                    tmp.write_text(json.dumps(payload) + "\n")
                else:
                    parts = {k: getattr(self, k) for k in SPLIT_PARTS}
                    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **parts)
        except OSError as exc:
            raise InputError(f"cannot write split file {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`; a checksum mismatch raises :class:`InputError`."""
        path = Path(path)
        if not path.exists():
            raise NotFoundError(f"split file {path} does not exist")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    parts = {key: z[key] for key in SPLIT_PARTS}
            else:
                meta = json.loads(path.read_text())
                parts = {key: np.asarray(meta[key], dtype=np.int64) for key in SPLIT_PARTS}
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"split file {path} is unreadable: {one_line(exc)}") from None
        if not isinstance(meta, dict) or meta.get("format") != SPLIT_FORMAT:
            raise InputError(f"{path} is not a hashlearn split file")
        try:
            split = cls(
                **parts,
                protocol=meta["protocol"],
                params=meta.get("params", {}),
                seed=meta["seed"],
                n_images=meta.get("n_images", 0),
                dataset=meta.get("dataset"),
                ids_sha256=meta.get("ids_sha256"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"split file {path} is malformed ({type(exc).__name__}: {one_line(exc)})") from None
        if split.checksum != meta.get("checksum"):
            raise InputError(f"split file {path} does not match its checksum (edited or damaged)")
        return split


class Protocol:
    """Base class: a named rule with parameters; :meth:`split` applies it to a dataset."""

    name = "protocol"

    def __init__(self, name: str | None = None, **params: Any):
        self.name = name or self.name
        self.params = params

    def split(self, ds: ImageDataset, seed: int = 0) -> Split:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name!r}, {args})"

    def _make(self, ds: ImageDataset, seed: int, query, train, val, database) -> Split:
        return Split(
            query=np.sort(query),
            train=np.sort(train),
            val=np.sort(val),
            database=np.sort(database),
            protocol=self.name,
            params=dict(self.params),
            seed=int(seed),
            n_images=len(ds),
            dataset=ds.name,
            ids_sha256=ids_digest(ds.ids),
        )


def ids_digest(ids: np.ndarray) -> str:
    """sha256 of a dataset's ids in order (UTF-8, one per line): identifies which images indices point at."""
    h = hashlib.sha256()
    for i in range(0, len(ids), 65536):
        h.update(("\n".join(np.asarray(ids[i : i + 65536]).astype(str).tolist()) + "\n").encode())
    return h.hexdigest()


def _round(x: float) -> int:
    """Round half up (1.5 → 2, 0.5 → 1), unlike Python's round-half-to-even."""
    return int(np.floor(x + 0.5))


def _take(rng: np.random.Generator, candidates: np.ndarray, count: int, what: str) -> np.ndarray:
    if count > len(candidates):
        raise InputError(f"{what} has {len(candidates)} images available, the protocol needs {count}")
    return rng.permutation(candidates)[:count]


#: how a :class:`PerClassProtocol` chooses its queries: exactly one of these is given
QUERY_CHOICES = ("query_per_class", "query_fraction", "query_split")


class PerClassProtocol(Protocol):
    """Single-label rule: queries and training images drawn per class.

    Parameters
    ----------
    query_per_class : queries drawn from every class (from all images), or
    query_fraction : that fraction of each class (rounded), or
    query_split : use every image of this official split (e.g. ``"test"``) as a query.
    train_per_class : training images per class, drawn from the non-query images
        (``None``: all of them, or all of ``train_split``).
    train_split : restrict training images to this official split.
    database_includes_train : database = all non-query images (``True``) or those minus training.
    val_fraction : share of each class's training images held out as ``val``.
    val_split : when the dataset has images in this official split (e.g. ``"val"``), they are
        ``val`` (all of them, none of them training) and ``val_fraction`` is not used.
    """

    name = "per-class"

    def __init__(
        self,
        name: str | None = None,
        *,
        query_per_class: int | None = None,
        query_fraction: float | None = None,
        query_split: str | None = None,
        train_per_class: int | None = None,
        train_split: str | None = None,
        database_includes_train: bool = True,
        val_fraction: float = 0.1,
        val_split: str | None = None,
    ):
        who = name or self.name
        chosen = [v is not None for v in (query_per_class, query_fraction, query_split)]
        if sum(chosen) != 1:
            raise InputError(f"give exactly one of {', '.join(QUERY_CHOICES)}")
        _check_count(who, "query_per_class", query_per_class)
        _check_count(who, "train_per_class", train_per_class)
        if query_fraction is not None and not (_is_number(query_fraction) and 0 < query_fraction <= 1):
            raise InputError(f"protocol {who!r}: query_fraction must be in (0, 1], not {query_fraction!r}")
        for key, value in (("query_split", query_split), ("train_split", train_split), ("val_split", val_split)):
            if value is not None and not isinstance(value, str):
                raise InputError(f"protocol {who!r}: {key} must be the name of an official split, not {value!r}")
        _check_flag(who, "database_includes_train", database_includes_train)
        _check_val_fraction(val_fraction)
        extra = {} if val_split is None else {"val_split": val_split}  # older splits' descriptions stay as they were
        super().__init__(
            name,
            query_per_class=query_per_class, query_fraction=query_fraction, query_split=query_split,
            train_per_class=train_per_class, train_split=train_split,
            database_includes_train=database_includes_train, val_fraction=val_fraction, **extra,
        )  # fmt: skip

    def split(self, ds: ImageDataset, seed: int = 0) -> Split:
        p = self.params
        if ds.multilabel:
            raise InputError(
                f"protocol {self.name!r} is for single-label data; {ds.name} is multi-label (try 'per-label')"
            )
        rng = np.random.default_rng(seed)
        labels = np.asarray(ds.labels)
        classes = range(ds.n_classes)
        if p["query_split"] is not None:
            query = np.flatnonzero(_official(ds, self.name) == p["query_split"])
            if len(query) == 0:
                raise InputError(f"{ds.name} has no images in official split {p['query_split']!r}")
        else:
            parts = []
            for c in classes:
                members = np.flatnonzero(labels == c)
                k = (
                    p["query_per_class"]
                    if p["query_per_class"] is not None
                    else _round(p["query_fraction"] * len(members))
                )
                parts.append(_take(rng, members, k, f"class {ds.class_names[c]!r} of {ds.name}"))
            query = np.concatenate(parts)
        pool = np.setdiff1d(np.arange(len(ds)), query)
        official_val = None  # the source's own validation images, when the protocol uses them
        if p.get("val_split") is not None and ds.official_split is not None:
            found = pool[ds.official_split[pool] == p["val_split"]]
            official_val = found if len(found) else None
        pool_train = pool if official_val is None else np.setdiff1d(pool, official_val)
        if p["train_split"] is not None:
            pool_train = pool_train[_official(ds, self.name)[pool_train] == p["train_split"]]
        if p["train_per_class"] is None:
            train_all = pool_train
        else:
            train_all = np.concatenate(
                [
                    _take(
                        rng,
                        pool_train[labels[pool_train] == c],
                        p["train_per_class"],
                        f"class {ds.class_names[c]!r} of {ds.name} (after queries)",
                    )
                    for c in classes
                ]  # fmt: skip
            )
        if official_val is not None:
            database = pool if p["database_includes_train"] else np.setdiff1d(pool, np.union1d(train_all, official_val))
            return self._make(ds, seed, query, train_all, official_val, database)
        database = pool if p["database_includes_train"] else np.setdiff1d(pool, train_all)
        val_parts = []
        for c in classes:
            members = train_all[labels[train_all] == c]
            val_parts.append(rng.permutation(members)[: _round(p["val_fraction"] * len(members))])
        val = np.concatenate(val_parts) if val_parts else np.array([], dtype=np.int64)
        train = np.setdiff1d(train_all, val)
        return self._make(ds, seed, query, train, val, database)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_count(protocol: str, key: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"protocol {protocol!r}: {key} must be a whole number >= 0, not {value!r}")


def _check_flag(protocol: str, key: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"protocol {protocol!r}: {key} must be true or false, not {value!r}")


def _check_val_fraction(value: Any) -> None:
    if not (_is_number(value) and 0 <= value < 1):
        raise InputError(f"val_fraction must be in [0, 1), not {value}")


class PerLabelProtocol(Protocol):
    """Multi-label (NUS-WIDE-style) rule: ``query_per_label`` queries and ``train_per_label`` training images.

    Labels are visited in column order; for each label, images that carry it and are not yet
    chosen are drawn without replacement. An image with several labels is counted once, for the
    label it was drawn for, and is never drawn twice: every label draws exactly ``query_per_label``
    images, so 21 labels x 100 gives exactly 2,100 queries, while a label may appear on more
    queries than that through images drawn for other labels. Training images are drawn the
    same way from the non-query images; ``val`` is a random ``val_fraction`` of the training set;
    the database is all non-query images (or those minus training, ``database_includes_train=False``).
    Works on single-label sets too (one-hot labels), where it equals the per-class rule.
    """

    name = "per-label"

    def __init__(
        self,
        name: str | None = None,
        *,
        query_per_label: int = 100,
        train_per_label: int = 500,
        database_includes_train: bool = True,
        val_fraction: float = 0.1,
    ):
        who = name or self.name
        _check_count(who, "query_per_label", query_per_label, allow_none=False)
        _check_count(who, "train_per_label", train_per_label, allow_none=False)
        _check_flag(who, "database_includes_train", database_includes_train)
        _check_val_fraction(val_fraction)
        super().__init__(
            name, query_per_label=query_per_label, train_per_label=train_per_label,
            database_includes_train=database_includes_train, val_fraction=val_fraction,
        )  # fmt: skip

    def split(self, ds: ImageDataset, seed: int = 0) -> Split:
        p = self.params
        rng = np.random.default_rng(seed)
        matrix = ds.label_matrix().astype(bool)
        available = np.ones(len(ds), dtype=bool)

        def draw(count: int, stage: str) -> np.ndarray:
            chosen = []
            for c in range(ds.n_classes):
                picked = _take(rng, np.flatnonzero(matrix[:, c] & available), count,
                               f"label {ds.class_names[c]!r} of {ds.name} ({stage})")  # fmt: skip
                available[picked] = False
                chosen.append(picked)
            return np.concatenate(chosen)

        query = draw(p["query_per_label"], "queries")
        pool = np.flatnonzero(~np.isin(np.arange(len(ds)), query))
        train_all = draw(p["train_per_label"], "training")
        database = pool if p["database_includes_train"] else np.setdiff1d(pool, train_all)
        val = rng.permutation(train_all)[: _round(p["val_fraction"] * len(train_all))]
        train = np.setdiff1d(train_all, val)
        return self._make(ds, seed, query, train, val, database)


def _official(ds: ImageDataset, protocol: str) -> np.ndarray:
    if ds.official_split is None:
        raise InputError(f"protocol {protocol!r} needs an official train/test split, which {ds.name} does not have")
    return ds.official_split


def register_protocol(name: str, **info: Any):
    """Register a factory ``(**params) -> Protocol`` under ``name``."""
    return PROTOCOLS.register(name, **info)


@register_protocol("cifar10-1", query=1000, train=5000, database=59000)
def cifar10_1(val_fraction: float = 0.1) -> Protocol:
    """Query 100/class from all images; database = the rest (59,000); training 500/class from the database."""
    return PerClassProtocol("cifar10-1", query_per_class=100, train_per_class=500, val_fraction=val_fraction)


@register_protocol("cifar10-i", query=1000, train=5000, database=54000)
def cifar10_i(val_fraction: float = 0.1) -> Protocol:
    """Query 100/class; training 500/class; database = the other 54,000 (training excluded)."""
    return PerClassProtocol(
        "cifar10-I",
        query_per_class=100,
        train_per_class=500,
        database_includes_train=False,
        val_fraction=val_fraction,
    )


@register_protocol("cifar10-ii", query=10000, train=50000, database=50000)
def cifar10_ii(val_fraction: float = 0.1) -> Protocol:
    """Query = the 10,000 official test images; training = database = the 50,000 training images."""
    return PerClassProtocol("cifar10-II", query_split="test", train_split="train", val_fraction=val_fraction)


@register_protocol(
    "per-class",
    summary="Any single-label set: query_fraction (default 0.1), query_per_class or query_split queries per class; "
    "training = the other images (or train_per_class of them); database = every non-query image",
)
def per_class(**params: Any) -> Protocol:
    """Any single-label set: queries per class, training from the rest (see :class:`PerClassProtocol`);
    ``query_fraction=0.1`` when none of query_per_class, query_fraction and query_split is given."""
    if all(params.get(key) is None for key in QUERY_CHOICES):
        params["query_fraction"] = 0.1
    return PerClassProtocol("per-class", **params)


# per-class takes PerClassProtocol's parameters, listed once there (protocol_params and get_protocol read this)
_signature = inspect.signature(PerClassProtocol)
per_class.__signature__ = _signature.replace(parameters=[p for p in _signature.parameters.values() if p.name != "name"])


@register_protocol(
    "official-split",
    summary="Queries = the official test split; training = the official train split; val = the official val "
    "split when there is one, else 10 % of train per class; database = every non-query image (train and val)",
)
def official_split(val_fraction: float = 0.1, val_split: str | None = "val") -> Protocol:
    """The source's own split: queries = test, training = train, val = val when the source has one.

    ``val_fraction`` of the training split (per class) is held out as ``val`` only when the
    dataset has no images in official split ``val_split``. The database is every image that is
    not a query: the training split and the validation split.
    """
    return PerClassProtocol(
        "official-split", query_split="test", train_split="train", val_fraction=val_fraction, val_split=val_split
    )


@register_protocol("per-label")
def per_label(
    *,
    query_per_label: int = 100,
    train_per_label: int = 500,
    database_includes_train: bool = True,
    val_fraction: float = 0.1,
) -> Protocol:
    """Multi-label: 100 queries and 500 training images per label, drawn label by label; rest database."""
    return PerLabelProtocol(
        "per-label", query_per_label=query_per_label, train_per_label=train_per_label,
        database_includes_train=database_includes_train, val_fraction=val_fraction,
    )  # fmt: skip


@register_protocol("nus-wide", query=2100, train=10500)
def nus_wide(val_fraction: float = 0.1) -> Protocol:
    """NUS-WIDE-21 convention: 100 queries and 500 training images per label; database = non-query images."""
    return PerLabelProtocol("nus-wide", query_per_label=100, train_per_label=500, val_fraction=val_fraction)


def protocol_params(name: str) -> list[str]:
    """The parameters protocol ``name`` takes (what ``--set KEY=VALUE`` / ``protocol_args`` may set);
    besides these, every protocol takes ``classes`` (:class:`ClassSubset`) and ``train_class_fraction``
    (:class:`TrainClassFraction`)."""
    factory = PROTOCOLS.get(name)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(factory).parameters.values() if p.kind in kinds]


def class_index(protocol: str, c: Any, ds: ImageDataset) -> int:
    """The index of class ``c`` (a class name or an index) of ``ds``; anything else is one line."""
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < ds.n_classes:
        return int(c)
    if isinstance(c, str) and c in ds.class_names:
        return ds.class_names.index(c)
    raise InputError(f"protocol {protocol!r}: class {c!r} is not a class of {ds.name} (its classes: "
                     f"{', '.join(ds.class_names)}; or an index 0..{ds.n_classes - 1})")


class ClassSubset(Protocol):
    """Any protocol applied to the images of some classes only (``protocol_args: {classes: [...]}``,
    class names or indices; single-label data): e.g. Fashion-MNIST's five upper-body garment classes
    ``[T-shirt/top, Pullover, Dress, Coat, Shirt]`` (small differences between classes, the closest
    fine-grained set here). The inner protocol sees a view holding only those classes (relabelled
    0..C'−1 in the order of the dataset's classes, so per-class counts apply to each kept class);
    the split's indices point into the whole dataset and the images keep their original labels."""

    def __init__(self, inner: Protocol, classes: Any):
        if isinstance(classes, (str, int)) or not isinstance(classes, (list, tuple)) or not classes:
            raise InputError(f"protocol {inner.name!r}: classes must be a non-empty list of class names or "
                             f"indices, got {classes!r}")
        super().__init__(inner.name, **inner.params, classes=list(classes))
        self.inner = inner

    def resolve(self, ds: ImageDataset) -> np.ndarray:
        """The kept class indices, sorted."""
        out = [class_index(self.name, c, ds) for c in self.params["classes"]]
        if len(set(out)) != len(out):
            raise InputError(f"protocol {self.name!r}: classes {self.params['classes']!r} names a class twice")
        return np.array(sorted(out), dtype=np.int64)

    def split(self, ds: ImageDataset, seed: int = 0) -> Split:
        if ds.multilabel:
            raise InputError(f"protocol argument classes is for single-label data; {ds.name} is multi-label")
        kept = self.resolve(ds)
        rows = np.flatnonzero(np.isin(ds.labels, kept))
        relabel = np.full(ds.n_classes, -1, dtype=np.int64)
        relabel[kept] = np.arange(len(kept))
        view = ImageDataset(
            images=np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (len(rows), 1, 1, 1)),  # protocols read labels
            labels=relabel[np.asarray(ds.labels)[rows]],
            ids=np.asarray(ds.ids)[rows],
            class_names=[ds.class_names[c] for c in kept],
            official_split=None if ds.official_split is None else np.asarray(ds.official_split)[rows],
            name=ds.name,
        )
        inner = self.inner.split(view, seed=seed)
        return self._make(ds, seed, *(rows[getattr(inner, k)] for k in SPLIT_PARTS))


class TrainClassFraction(Protocol):
    """Any protocol whose training images of some classes are cut to a fraction of them
    (``protocol_args: {train_class_fraction: {CLASS: FRACTION}}``, class names or indices, fractions in
    (0, 1]; single-label data): an imbalanced training set, e.g. to test whether a method's sampling helps
    a minority class. Only ``train`` shrinks; the queries, the validation slice and the database are the
    inner protocol's, so retrieval is measured on the same images as without the cut. The kept images are
    drawn with the split's seed (at least one per cut class)."""

    def __init__(self, inner: Protocol, fractions: Any):
        if not isinstance(fractions, dict) or not fractions:
            raise InputError(f"protocol {inner.name!r}: train_class_fraction must map class names or indices to "
                             f"fractions, e.g. {{glioma: 0.1}}; got {fractions!r}")
        for c, f in fractions.items():
            if not _is_number(f) or not 0 < float(f) <= 1:
                raise InputError(f"protocol {inner.name!r}: train_class_fraction of class {c!r} must be a number "
                                 f"in (0, 1], got {f!r}")
        super().__init__(inner.name, **inner.params, train_class_fraction=dict(fractions))
        self.inner = inner

    def split(self, ds: ImageDataset, seed: int = 0) -> Split:
        if ds.multilabel:
            raise InputError(f"protocol argument train_class_fraction is for single-label data; {ds.name} is "
                             "multi-label")
        inner = self.inner.split(ds, seed=seed)
        labels = np.asarray(ds.labels)
        kept = inner.train
        rng = np.random.default_rng([int(seed), 0x1B])  # its own stream: the inner split is unchanged
        for c, fraction in self.params["train_class_fraction"].items():
            index = class_index(self.name, c, ds)
            members = kept[labels[kept] == index]
            keep = max(1, _round(len(members) * float(fraction))) if len(members) else 0
            drop = np.setdiff1d(members, rng.choice(members, keep, replace=False)) if len(members) else members
            kept = np.setdiff1d(kept, drop)
        return self._make(ds, seed, inner.query, kept, inner.val, inner.database)


def get_protocol(name: str, **params: Any) -> Protocol:
    """The protocol registered as ``name`` (case-insensitive), with ``params`` overriding its defaults.

    A parameter the protocol does not take is an :class:`InputError` listing the ones it takes. Every
    protocol also takes ``classes`` (:class:`ClassSubset`) and ``train_class_fraction``
    (:class:`TrainClassFraction`).
    """
    factory = PROTOCOLS.get(name)
    valid = protocol_params(name)
    fractions = params.pop("train_class_fraction", None)
    if fractions is not None:
        return TrainClassFraction(get_protocol(name, **params), fractions)
    classes = params.pop("classes", None)
    if classes is not None:
        return ClassSubset(get_protocol(name, **params), classes)
    unknown = [k for k in params if k not in valid]
    if unknown:
        takes = (f"its parameters are {', '.join(valid)}" if valid else "it takes no parameters") \
            + " (and classes and train_class_fraction, as every protocol)"
        raise InputError(f"protocol {name!r} has no parameter {', '.join(map(repr, unknown))}; {takes}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise InputError(f"protocol {name!r}: {one_line(exc)}") from None


# --------------------------------------------------------------------------------------------
# The default protocol of a dataset
# --------------------------------------------------------------------------------------------

#: How :func:`default_protocol` decides, in words (``hashlearn data list`` prints it).
DEFAULT_PROTOCOL_RULE = (
    "the dataset's own protocol where it has one (cifar10, mnist, fashion-mnist -> cifar10-1; nus-wide -> nus-wide); "
    "otherwise "
    "multi-label -> per-label, official train and test splits -> official-split, anything else -> per-class"
)


def protocol_for_content(multilabel: bool, splits: Any) -> str:
    """The protocol that fits a dataset of this kind: ``per-label``, ``official-split`` or ``per-class``."""
    if multilabel:
        return "per-label"
    if {"train", "test"} <= set(splits or ()):
        return "official-split"
    return "per-class"


def default_protocol(
    dataset: str | ImageDataset, *, cache_dir: str | Path | None = None, size: int | None = None
) -> str:
    """The protocol to use on ``dataset`` when none is given (``hashlearn train`` without ``--protocol``).

    The rule (:data:`DEFAULT_PROTOCOL_RULE`): the protocol a dataset is registered with
    (``cifar10`` → ``cifar10-1``, ``nus-wide`` → ``nus-wide``), also for a copy prepared under
    another name; otherwise from its content: multi-label → ``per-label``; an official split with
    both ``train`` and ``test`` images → ``official-split``; anything else → ``per-class``.

    ``dataset`` is an :class:`ImageDataset` (its content decides), or a name: a registered
    dataset with its own protocol, or a prepared dataset (its manifest decides; ``cache_dir`` and
    ``size`` find it). A name that is neither, or a dataset whose protocol depends on a source
    not prepared yet (``folder``, ``mnist``, …), is an :class:`InputError` saying what to do.
    """
    load_all()

    def registered(family: Any) -> str | None:
        return DATASETS.info(family).get("protocol") if isinstance(family, str) and family in DATASETS else None

    if isinstance(dataset, ImageDataset):
        fixed = registered(dataset.info.get("dataset")) or registered(dataset.name)
        splits = () if dataset.official_split is None else np.unique(dataset.official_split).tolist()
        return fixed or protocol_for_content(dataset.multilabel, splits)
    name = str(dataset)
    if registered(name):
        return registered(name)  # type: ignore[return-value]
    try:
        manifest = read_manifest(name, cache_dir, size)
    except NotFoundError:
        where = prepared_path(name, cache_dir, size).parent
        if name in DATASETS:
            raise InputError(
                f"dataset {name!r} has no default protocol until it is prepared (it depends on its images: "
                f"{DEFAULT_PROTOCOL_RULE.split('; otherwise ')[1]}); run: hashlearn data prepare {name}, "
                "or pass --protocol NAME"
            ) from None
        raise InputError(
            f"dataset {name!r} is neither a registered dataset nor prepared in {where}, so no protocol fits it; "
            "prepare it (hashlearn data prepare) or pass --protocol NAME"
        ) from None
    fixed = registered(manifest.get("dataset"))
    return fixed or protocol_for_content(bool(manifest.get("multilabel")), manifest.get("per_split") or {})
