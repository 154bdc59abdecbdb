"""What the prepared-dataset cache holds, and how it is written and read back.

A prepared dataset is one folder ``<cache>/<key>/``::

    images.npy          uint8 (N, H, W, C)         memory-mapped when opened
    labels.npy          int64 (N,) or uint8 (N, C)
    ids.npy             str (N,)
    official_split.npy  str (N,)                   only when the source has one
    manifest.json       counts, shapes, sha256 of each .npy file, dataset, source, options, format version

``<key>`` is the prepared name (lower case), plus ``-<S>px`` when resized to ``S``. The cache
root is ``$HASHLEARN_CACHE`` or ``~/.cache/hashlearn``. This module knows nothing of the dataset
builders: :func:`hashlearn.data.prepare` (in :mod:`hashlearn.data.cache`) decodes a dataset and
hands it to :func:`write_prepared`.

Safety: the folder is written under a hidden temporary name and renamed into place only once
``manifest.json`` is complete, so a killed ``prepare`` leaves a ``.tmp-*`` folder that is never
read, not a half cache that looks valid. :func:`open_prepared` always checks the format version,
each file's byte size, dtype and shape against the manifest (cheap), and that a source archive
still has the size and modification time it had when prepared; ``verify=True`` also recomputes
the sha256 of every file. Any mismatch raises, naming the file, instead of returning stale data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn import __version__
from hashlearn._digest import file_digest
from hashlearn.data.dataset import ImageDataset
from hashlearn.data.sources import Alloc, cache_root, describe_shape, format_bytes, one_line
from hashlearn.errors import InputError, NotFoundError

CACHE_FORMAT = "hashlearn-prepared-dataset"
CACHE_VERSION = 1

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_name(name: str, what: str = "dataset name") -> str:
    """``name`` if it is a plain name (letters, digits, ``. _ + -``; no folders), else :class:`InputError`."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or len(name) > 200:
        raise InputError(
            f"{what} {name!r} must be a plain name (letters, digits, '.', '_', '+', '-', starting with a letter "
            "or digit; no folders), e.g. 'flowers'"
        )
    return name


def plain_name(text: str) -> str:
    """``text`` made a plain name: other characters become ``-``, leading ones that cannot start a name go
    (``'My Flowers (2)'`` → ``'My-Flowers-2'``); ``''`` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", text)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name).rstrip("-")
    return name[:200]


def cache_key(name: str, size: int | None = None) -> str:
    check_name(name)
    return name.lower() if size is None else f"{name.lower()}-{size}px"


def cache_dir_path(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$HASHLEARN_CACHE`` or ``~/.cache/hashlearn``."""
    return Path(cache_dir or cache_root()).expanduser()


def prepared_path(name: str, cache_dir: str | Path | None = None, size: int | None = None) -> Path:
    """The folder that holds (or would hold) prepared dataset ``name``."""
    return cache_dir_path(cache_dir) / cache_key(name, size)


def source_stamp(source: str | None) -> dict[str, Any] | None:
    """Size and mtime of a source *file* (folders are not stamped: walking them costs too much)."""
    if not source:
        return None
    p = Path(source)
    if not p.is_file():
        return None
    st = p.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_prepared(
    root: Path,
    key: str,
    build: Callable[[Alloc], ImageDataset],
    *,
    name: str,
    dataset: str,
    source: str | Path | None,
    size: int | None,
    options: dict[str, Any],
) -> Path:
    """Write ``build(alloc)`` as prepared dataset ``root/key`` (atomically) and return the folder.

    ``alloc(shape)`` hands the builder a ``.npy`` memmap in the temporary folder, after checking
    that the file system has room for it. An existing folder of the same key is replaced only
    once the new one is complete; on any failure nothing is left behind, not even the cache
    folders this call created.
    """
    final = root / key
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if writing fails
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise InputError(
            f"cache folder {root} cannot be written ({exc.strerror or exc}); choose another with --cache DIR "
            "or $HASHLEARN_CACHE"
        ) from None
    started = time.perf_counter()
    try:
        allocated: list[np.ndarray] = []

        def alloc(shape: tuple[int, ...]) -> np.ndarray:
            _check_disk(tmp, int(np.prod(shape, dtype=np.float64)), f"{key} {describe_shape(shape)}")
            array = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
            allocated.append(array)
            return array

        ds = build(alloc)
        _write_images(ds.images, allocated, tmp / "images.npy")
        del allocated[:]
        np.save(tmp / "labels.npy", np.ascontiguousarray(ds.labels))
        np.save(tmp / "ids.npy", ds.ids)
        if ds.official_split is not None:
            np.save(tmp / "official_split.npy", ds.official_split)
        source_used = ds.info.get("source") or (str(source) if source else None)
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "hashlearn_version": __version__,
            "name": name,
            "dataset": dataset.lower(),
            "synthetic": "synthetic" in ds.name,
            "source": source_used,
            "source_path": _resolved(source_used),
            "source_stamp": source_stamp(source_used),
            "size": size,
            "options": {
                k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in options.items()
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "prepare_seconds": None,
            "count": len(ds),
            "image_shape": list(ds.image_shape),
            "multilabel": ds.multilabel,
            "class_names": ds.class_names,
            "per_split": ds.split_counts(),
            "per_class": ds.class_counts(),
            "skipped": list(ds.info.get("skipped", [])),
            "info": {k: v for k, v in ds.info.items() if k not in ("skipped",) and _jsonable(v)},
            "arrays": {},
        }
        del ds
        for f in sorted(tmp.glob("*.npy")):
            arr = np.load(f, mmap_mode="r")
            manifest["arrays"][f.stem] = {
                "file": f.name,
                "shape": list(arr.shape),
                "dtype": arr.dtype.str,
                "bytes": f.stat().st_size,
                "sha256": file_digest(f),
            }
            del arr
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    return final


def _resolved(source: str | None) -> str | None:
    """The absolute path of a source that is a file or folder (``None`` for other sources)."""
    if not source or not Path(source).exists():
        return None
    return str(Path(source).resolve())


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first) when they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_disk(folder: Path, need: int, what: str) -> None:
    """Refuse to write ``need`` bytes into ``folder`` when its file system has less free space."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        raise InputError(
            f"cache folder {folder.parent}: {what} needs {format_bytes(need)} but only {format_bytes(free)} is "
            "free there; use a smaller --size or another --cache DIR"
        )


def _write_images(images: np.ndarray, allocated: list[np.ndarray], path: Path) -> None:
    """Make ``path`` hold exactly ``images`` (the builder may have returned a shorter view)."""
    target = allocated[0] if allocated else None
    if target is not None and images is target:
        target.flush()
        return
    _check_disk(path.parent, images.nbytes, f"images {describe_shape(images.shape)}")
    data = np.ascontiguousarray(images)
    part = path.with_name("images.part.npy")
    np.save(part, data)
    del data, images
    if target is not None:
        target.flush()
        del target
    allocated.clear()
    os.replace(part, path)


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(name: str, cache_dir: str | Path | None = None, size: int | None = None) -> dict[str, Any]:
    """The manifest of a prepared dataset (raises :class:`NotFoundError` when it is not prepared)."""
    folder = prepared_path(name, cache_dir, size)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        size_flag = f" --size {size}" if size else ""
        raise NotFoundError(
            f"dataset {name!r} is not prepared in {folder.parent}; run: hashlearn data prepare {name}{size_flag}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        reason = f"unreadable manifest.json ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        raise InputError(f"prepared dataset {folder} has an {reason}; prepare it again") from None
    if not isinstance(manifest, dict):
        raise InputError(f"prepared dataset {folder} has a manifest.json that is not an object; prepare it again")
    return manifest


def open_prepared(
    name: str, cache_dir: str | Path | None = None, size: int | None = None, verify: bool = False
) -> ImageDataset:
    """Memory-map a prepared dataset back, after checking it against its manifest.

    The cheap checks (format version, byte sizes, dtypes, shapes, source archive stamp) always
    run; ``verify=True`` also recomputes the sha256 of every array file (about a second per GB).
    ``info["dataset"]`` is the registered dataset it was built by (e.g. ``folder`` for ``flowers``).
    """
    folder = prepared_path(name, cache_dir, size)
    manifest = read_manifest(name, cache_dir, size)
    again = f"; run: hashlearn data prepare {name}" + (f" --size {size}" if size else "") + " again"

    def stale(reason: str) -> InputError:
        return InputError(f"prepared dataset {folder} is stale or corrupt: {reason}{again}")

    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise stale(f"cache format {manifest.get('format')} v{manifest.get('version')}, expected v{CACHE_VERSION}")
    stamp = manifest.get("source_stamp")
    src = manifest.get("source")
    if stamp and src and Path(src).is_file() and source_stamp(src) != stamp:
        raise stale(f"source {src} changed since it was prepared")
    try:
        return _open_checked(folder, manifest, verify, stale)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise stale(f"manifest.json is malformed ({type(exc).__name__}: {one_line(exc)})") from None


def _open_checked(folder: Path, manifest: dict[str, Any], verify: bool, stale) -> ImageDataset:
    arrays: dict[str, np.ndarray] = {}
    for key, spec in manifest["arrays"].items():
        if Path(spec["file"]).name != spec["file"] or spec["file"] in ("", ".", ".."):
            raise stale(f"manifest.json names a file outside the cache folder: {spec['file']!r}")
        path = folder / spec["file"]
        if not path.is_file():
            raise stale(f"{spec['file']} is missing")
        if path.stat().st_size != spec["bytes"]:
            raise stale(f"{spec['file']} has {path.stat().st_size} bytes, manifest says {spec['bytes']}")
        if verify and file_digest(path) != spec["sha256"]:
            raise stale(f"{spec['file']} does not match its sha256")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise stale(f"{spec['file']} is unreadable ({one_line(exc)})") from None
        if not isinstance(arr, np.ndarray):
            raise stale(f"{spec['file']} is not a .npy array")
        if list(arr.shape) != spec["shape"] or arr.dtype.str != spec["dtype"]:
            raise stale(
                f"{spec['file']} is {arr.dtype.str} {list(arr.shape)}, manifest says {spec['dtype']} {spec['shape']}"
            )
        arrays[key] = arr
    for required in ("images", "labels", "ids"):
        if required not in arrays:
            raise stale(f"{required}.npy is not in the manifest")
    split = arrays.get("official_split")
    try:
        return ImageDataset(
            images=arrays["images"],
            labels=np.array(arrays["labels"]),
            ids=np.array(arrays["ids"]),
            class_names=list(manifest["class_names"]),
            official_split=None if split is None else np.array(split),
            name=str(manifest["name"]),
            info={
                "source": manifest.get("source"),
                "skipped": manifest.get("skipped", []),
                "cache": str(folder),
                "size": manifest.get("size"),
                "dataset": manifest.get("dataset"),
            },
        )
    except InputError as exc:
        raise stale(str(exc)) from None


def prepared_names(cache_dir: str | Path | None = None) -> list[str]:
    """Keys of the prepared datasets in the cache (hidden temporary folders excluded)."""
    root = cache_dir_path(cache_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "manifest.json").exists())


__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "cache_key",
    "check_name",
    "open_prepared",
    "plain_name",
    "prepared_names",
    "prepared_path",
    "read_manifest",
    "write_prepared",
]
