"""Decode once, memory-map forever: :func:`prepare` puts a dataset into the prepared-dataset cache.

What the cache holds and how it is read back (:func:`open_prepared`, :func:`read_manifest`, …)
is :mod:`hashlearn.data.store`, re-exported here. This module only adds what preparing *by
dataset name* needs: building the dataset (:func:`hashlearn.data.load_dataset` into a memmap),
the name it is stored under, and the rule that a prepared dataset is not silently replaced by
one from another source.

Names. A dataset is stored under ``as_name`` when given, else under its own name — except a
*generic* dataset (``folder``, ``csv``, ``image-list``: a source of any content), which is
stored under the base name of its source made a plain name (``/data/My Flowers.tar.gz`` →
``My-Flowers``), so that two folders never overwrite each other as ``folder``.

Replacing. Preparing over an existing prepared dataset of the same name (and size) is allowed
when it comes from the same source (same dataset and the same source path, resolved; a source
left to the dataset's default counts as the same): that re-prepare replaces it with the same
content, as before. From a different source it is refused unless ``force=True`` (``--force``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import DATASETS, default_source, get_builder, load_dataset
from hashlearn.data.images import check_size
from hashlearn.data.store import (
    CACHE_VERSION,
    cache_dir_path,
    cache_key,
    check_name,
    open_prepared,
    plain_name,
    prepared_names,
    prepared_path,
    read_manifest,
    write_prepared,
)
from hashlearn.errors import InputError, NotFoundError

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def prepared_name(name: str, source: str | Path | None = None, as_name: str | None = None) -> str:
    """The name dataset ``name`` from ``source`` is prepared under (see the module docstring).

    Raises :class:`InputError` for an ``as_name`` that is not a plain name, and for a source whose
    base name is that of another registered dataset (``--as`` must then choose).
    """
    get_builder(name)  # unknown name → NotFoundError
    key = name.lower()
    if as_name is not None:
        return check_name(as_name, "--as name")
    if source is None or not DATASETS.info(key).get("generic"):
        return key
    src = Path(source).expanduser()
    base = (src.resolve() if src.exists() else src).name
    for suffix in _ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    derived = plain_name(base)
    if not derived:
        return key
    if derived.lower() != key and derived.lower() in DATASETS:
        raise InputError(
            f"source {src} would be prepared as {derived!r}, the name of a registered dataset; "
            "choose another name with --as NAME"
        )
    return derived


def prepare(
    name: str,
    source: str | Path | None = None,
    cache_dir: str | Path | None = None,
    size: int | None = None,
    skip_bad: bool = False,
    *,
    as_name: str | None = None,
    force: bool = False,
    progress: bool = False,
    **options: Any,
) -> ImageDataset:
    """Decode dataset ``name`` once into the cache and return it memory-mapped.

    The prepared name is :func:`prepared_name` (``as_name``, else the source's base name for a
    generic ``folder``/``csv``/``image-list`` source, else ``name``); the returned dataset's
    ``name`` is it. ``options`` go to the builder (e.g. ``mode="L"`` for a folder). An existing
    prepared dataset of the same name from another source is kept unless ``force=True``; one
    from the same source is replaced atomically. Unreadable images raise :class:`InputError`
    naming the file, or with ``skip_bad=True`` are left out and listed in ``manifest["skipped"]``.
    """
    get_builder(name)  # unknown name → NotFoundError before any work
    if as_name is not None:
        check_name(as_name, "--as name")
    check_size(size)  # absurd sizes are refused before any work
    if source is not None and not Path(source).expanduser().exists():
        raise NotFoundError(f"source {Path(source).expanduser()} for dataset {name!r} does not exist")
    stored = prepared_name(name, source, as_name)
    root = cache_dir_path(cache_dir)
    key = cache_key(stored, size)
    if not force:
        _refuse_other_source(root, key, name, source)
    write_prepared(
        root,
        key,
        lambda alloc: load_dataset(
            name, source, size=size, skip_bad=skip_bad, progress=progress, alloc=alloc, **options
        ),
        name=stored,
        dataset=name,
        source=source,
        size=size,
        options=options,
    )
    return open_prepared(stored, cache_dir=root, size=size)


def _refuse_other_source(root: Path, key: str, name: str, source: str | Path | None) -> None:
    """:class:`InputError` when ``root/key`` holds a prepared dataset from another source than ``source``."""
    try:
        manifest = json.loads((root / key / "manifest.json").read_text())
    except (OSError, ValueError):
        return  # nothing there, or a damaged cache: preparing again is the cure
    if not isinstance(manifest, dict):
        return
    old_dataset = manifest.get("dataset")
    old_source = manifest.get("source_path") or manifest.get("source")
    new_source = Path(source).expanduser() if source is not None else default_source(name)
    if old_dataset == name.lower():
        if new_source is None:
            return  # left to the dataset's own default
        if old_source and _same_path(old_source, new_source):
            return
    old = f"{old_source} ({old_dataset})" if old_source else f"dataset {old_dataset}"
    new = f"{_absolute(new_source)} ({name.lower()})" if new_source is not None else f"dataset {name.lower()}"
    raise InputError(
        f"prepared dataset {key!r} in {root} comes from {old}; preparing {new} would replace it: "
        "pass --force (force=True) to replace it, or --as NAME (as_name=) to keep both"
    )


def _absolute(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


__all__ = [
    "CACHE_VERSION",
    "cache_key",
    "default_source",
    "open_prepared",
    "prepare",
    "prepared_name",
    "prepared_names",
    "prepared_path",
    "read_manifest",
]
