"""Datasets, one module per family, registered by name in :data:`DATASETS`.

Each module of this package registers its builders where they are defined; :func:`load_all`
imports every module (names starting with ``_`` excepted), so adding a dataset is one module
plus its test, and ``hashlearn data list`` and :func:`load_dataset` see it at once::

    from hashlearn.data.datasets import register_dataset
    from hashlearn.data.datasets._base import Load

    @register_dataset("flowers102", kind="single-label", default_source="flowers102", classes=102)
    def build_flowers102(load: Load, *, mode: str = "RGB") -> ImageDataset:
        \"\"\"Oxford Flowers-102 (first docstring line = the summary in `hashlearn data list`).\"\"\"
        source = load.require_source()                  # --source, else default_source under $HASHLEARN_DATA
        tree = FileTree(source)
        ...                                             # parse the family's layout into paths and labels
        return load.from_files(tree, relpaths, labels=labels, class_names=names, mode=mode)

A builder takes one :class:`~hashlearn.data.datasets._base.Load` (the request: name, source,
size, skip_bad, progress, alloc, and the shared plumbing: ``from_files`` decodes image files,
``from_arrays`` resizes decoded pixels; both build the :class:`ImageDataset`). Its keyword
arguments after ``load`` are its options (``load_dataset("folder", src, mode="L")``); any other
option is refused with one line.

Registration info: ``kind`` (shown by ``data list``), ``default_source`` (relative to
``$HASHLEARN_DATA``; a string or a list, first existing wins), ``protocol`` (a fixed default
protocol; see :func:`hashlearn.data.default_protocol`), ``generic=True`` (a source of any
content: prepared under the source's own name), ``classes``, ``images``, ``synthetic``.

Orders are deterministic everywhere: files sorted by path within a class (so CIFAR-10's
``NNNN.jpg`` follow the official batch order), official splits in the order train, val, test.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets._base import Load, default_source_of
from hashlearn.data.images import check_size
from hashlearn.data.sources import Alloc, alloc_in_memory
from hashlearn.errors import InputError, NotFoundError
from hashlearn.registry import Registry

DATASETS = Registry("dataset")


def register_dataset(name: str, **info: Any) -> Callable:
    """Register a builder ``(load: Load, **options) -> ImageDataset`` under ``name`` (see the module docstring)."""
    return DATASETS.register(name, **info)


def load_all() -> Registry:
    """Import every dataset module of this package (each registers itself) and return :data:`DATASETS`."""
    return DATASETS.fill_from_package(__name__, __path__)


def get_builder(name: str) -> Callable[..., ImageDataset]:
    """The builder registered as ``name`` (:class:`NotFoundError` listing the known names otherwise)."""
    return load_all().get(name)


def default_source(name: str) -> Path | None:
    """The registered default source of ``name`` under ``$HASHLEARN_DATA``, if it exists there."""
    return default_source_of(load_all().info(name).get("default_source"))


def load_dataset(
    name: str,
    source: str | Path | None = None,
    *,
    size: int | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    alloc: Alloc = alloc_in_memory,
    **options: Any,
) -> ImageDataset:
    """Decode dataset ``name`` from ``source`` (default: its usual place under ``$HASHLEARN_DATA``).

    This always decodes; use :func:`hashlearn.data.prepare` once and
    :func:`hashlearn.data.open_prepared` afterwards to avoid decoding again.
    """
    builder = get_builder(name)
    check_size(size)  # positive, and size x size within the image pixel limit
    check_options(name, builder, options)
    src = Path(source).expanduser() if source is not None else None
    if src is not None and not src.exists():
        raise NotFoundError(f"source {src} for dataset {name!r} does not exist")
    load = Load(
        name=name.lower(),
        source=src,
        size=size,
        skip_bad=skip_bad,
        progress=progress,
        alloc=alloc,
        default_sources=DATASETS.info(name).get("default_source"),
    )
    ds = builder(load, **options)
    ds.info.setdefault("size", size)
    return ds


def builder_options(builder: Callable) -> list[str] | None:
    """The option names a builder takes (``None``: any, it has ``**options``)."""
    params = list(inspect.signature(builder).parameters.values())[1:]  # the first is `load`
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


def check_options(name: str, builder: Callable, options: dict[str, Any]) -> None:
    """Refuse options the builder does not take (e.g. ``mode`` for a dataset with a fixed mode)."""
    takes = builder_options(builder)
    if takes is None:
        return
    unknown = [k for k in options if k not in takes]
    if unknown:
        accepted = f"its options are {', '.join(takes)}" if takes else "it takes no options"
        raise InputError(f"dataset {name!r} does not take the option {', '.join(unknown)} ({accepted})")


__all__ = [
    "DATASETS",
    "Load",
    "default_source",
    "get_builder",
    "load_all",
    "load_dataset",
    "register_dataset",
]
