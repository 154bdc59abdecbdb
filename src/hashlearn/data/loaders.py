"""Dataset builders, registered by name in :data:`DATASETS`.

A builder turns a source into an :class:`ImageDataset`::

    @register_dataset("name", default_source="relative/to/HASHLEARN_DATA", kind="single-label")
    def build_name(source: Path | None, *, size, skip_bad, progress, alloc, **options) -> ImageDataset

``source`` is what the user gave (``None`` → the registered default under ``$HASHLEARN_DATA``);
``alloc(shape)`` supplies the image array (a memmap when a cache is being written). Adding a
dataset is one decorated function; ``hashlearn data list`` and :func:`load_dataset` see it at once.

Orders are deterministic everywhere: files sorted by path within a class (so CIFAR-10's
``NNNN.jpg`` follow the official batch order), official splits in the order train, val, test.
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import shutil
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn._digest import file_digest
from hashlearn.data.dataset import ImageDataset
from hashlearn.data.images import IMAGE_EXTENSIONS as _IMAGE_EXT
from hashlearn.data.images import check_size, is_image_name
from hashlearn.data.sources import (
    Alloc,
    FileTree,
    alloc_in_memory,
    cache_root,
    data_root,
    decode_files,
    first_existing,
    is_archive,
    one_line,
    resize_array,
)
from hashlearn.errors import InputError, NotFoundError
from hashlearn.registry import Registry

DATASETS = Registry("dataset")


def register_dataset(name: str, **info: Any) -> Callable:
    """Register a builder. ``info``: ``default_source`` (relative to ``$HASHLEARN_DATA``), ``kind``, …"""
    return DATASETS.register(name, **info)


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
    builder = DATASETS.get(name)
    check_size(size)  # positive, and size x size within the image pixel limit
    _check_options(name, builder, options)
    src = Path(source).expanduser() if source is not None else None
    if src is not None and not src.exists():
        raise NotFoundError(f"source {src} for dataset {name!r} does not exist")
    ds = builder(src, size=size, skip_bad=skip_bad, progress=progress, alloc=alloc, **options)
    ds.info.setdefault("size", size)
    return ds


def _check_options(name: str, builder: Callable, options: dict[str, Any]) -> None:
    """Refuse options the builder does not take (e.g. ``mode`` for a dataset with a fixed mode)."""
    import inspect

    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"source", "size", "skip_bad", "progress", "alloc"}
    takes = [p for p in params if p not in fixed]
    unknown = [k for k in options if k not in takes]
    if unknown:
        accepted = f"its options are {', '.join(takes)}" if takes else "it takes no options"
        raise InputError(f"dataset {name!r} does not take the option {', '.join(unknown)} ({accepted})")


def default_source(name: str) -> Path | None:
    """The registered default source of ``name`` under ``$HASHLEARN_DATA``, if it exists there."""
    rel = DATASETS.info(name).get("default_source")
    root = data_root()
    if not rel or root is None:
        return None
    rels = rel if isinstance(rel, (list, tuple)) else [rel]
    return first_existing(root / r for r in rels)


def _require_source(name: str, source: Path | None, extra: list[Path] = ()) -> Path:  # type: ignore[assignment]
    found = source or default_source(name) or first_existing(extra)
    if found is None:
        rel = DATASETS.info(name).get("default_source")
        hint = f" or set HASHLEARN_DATA to a folder holding {rel}" if rel else ""
        raise NotFoundError(f"dataset {name!r} needs a source: pass source=PATH (--source PATH){hint}")
    return found


# --------------------------------------------------------------------------------------------
# Class-folder trees: root/<class>/<image> or root/<split>/<class>/<image>, folder or .tar.gz
# --------------------------------------------------------------------------------------------

SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
SPLIT_ORDER = ("train", "val", "test")


def _folder_layout(paths: list[str], where: Path) -> tuple[int, bool]:
    """``(prefix_depth, has_split_level)`` of a class-folder tree.

    A single wrapping folder (``CIFAR-10-images/train/...``) is skipped; a top level whose
    folders are all split names (train/Training, test/Testing, val) is the official split.
    """
    depth = 0
    while True:
        parts = [p.split("/")[depth:] for p in paths]
        tops = {p[0] for p in parts}
        if all(len(p) >= 3 for p in parts) and len(tops) == 1 and tops.pop().lower() not in SPLIT_NAMES:
            depth += 1
            continue
        lengths = {len(p) for p in parts}
        if lengths == {2}:
            return depth, False
        if lengths == {3} and all(p[0].lower() in SPLIT_NAMES for p in parts):
            return depth, True
        expected = f"{where}: expected root/<class>/<image> or root/<train|test>/<class>/<image>"
        pairs = list(zip(paths, parts, strict=True))
        flat = [p for p, q in pairs if len(q) < 2]
        if flat:
            raise InputError(f"{expected}, found {flat[0]}, which is not inside a class folder")
        deep = [p for p, q in pairs if len(q) > 3]
        if deep:
            raise InputError(f"{expected}, found {deep[0]}, which is nested too deeply")
        if lengths == {3}:
            bad = next(p for p, q in pairs if q[0].lower() not in SPLIT_NAMES)
            raise InputError(f"{expected}, found {bad}, whose top folder is not a split name (train, val, test)")
        bad = next(p for p, q in pairs if len(q) == 3)  # a mix of <class>/<image> and <x>/<class>/<image>
        raise InputError(f"{expected}, not a mix of both, found {bad} beside class folders")


def load_class_folder(
    source: Path,
    *,
    name: str,
    size: int | None,
    skip_bad: bool,
    progress: bool,
    alloc: Alloc,
    mode: str = "RGB",
) -> ImageDataset:
    """Any ``root/<class>/<image>`` tree (optionally under ``train/`` and ``test/`` folders)."""
    tree = FileTree(source)
    if not tree.paths:
        raise InputError(f"no image files in {source}")
    depth, has_split = _folder_layout(tree.paths, source)
    records = []  # (split rank, class, relpath-without-prefix, full relpath, split)
    for full in tree.paths:
        parts = full.split("/")[depth:]
        split = SPLIT_NAMES[parts[0].lower()] if has_split else None
        cls = parts[-2]
        rank = SPLIT_ORDER.index(split) if split else 0
        records.append((rank, cls, "/".join(parts), full, split))
    records.sort()
    class_names = sorted({r[1] for r in records})
    relpaths = [r[3] for r in records]
    images, kept, skipped = decode_files(
        tree, relpaths, size=size, mode=mode, skip_bad=skip_bad, progress=progress, alloc=alloc, desc=name
    )
    index = {c: i for i, c in enumerate(class_names)}
    kept_records = [records[i] for i in kept]
    return ImageDataset(
        images=images,
        labels=np.array([index[r[1]] for r in kept_records], dtype=np.int64),
        ids=np.array([r[2] for r in kept_records]),
        class_names=class_names,
        official_split=np.array([r[4] for r in kept_records]) if has_split else None,
        name=name,
        info={"source": str(source), "skipped": skipped},
    )


@register_dataset("folder", kind="single-label", default_source=None)
def build_folder(source: Path | None, *, size, skip_bad, progress, alloc, mode: str = "RGB") -> ImageDataset:
    """Any root/<class>/<image> folder or .tar.gz; root/<train|test>/... gives the official split."""
    return load_class_folder(
        _require_source("folder", source),
        name="folder",
        size=size,
        skip_bad=skip_bad,
        progress=progress,
        alloc=alloc,
        mode=mode,
    )


@register_dataset(
    "brain-mri",
    kind="single-label",
    default_source="brain-tumor-mri/brain_tumor_mri_224.tar.gz",
    classes=4,
    images=7019,
)
def build_brain_mri(source: Path | None, *, size, skip_bad, progress, alloc) -> ImageDataset:
    """Brain tumour MRI (Kaggle): Training/ and Testing/ class folders, grey scans converted to RGB."""
    return load_class_folder(
        _require_source("brain-mri", source),
        name="brain-mri",
        size=size,
        skip_bad=skip_bad,
        progress=progress,
        alloc=alloc,
        mode="RGB",
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10: official python pickles, class-folder JPEG/PNG copies, download
# --------------------------------------------------------------------------------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickle the CIFAR batches without letting a file run arbitrary code: only numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure here means a damaged or foreign file
        raise InputError(f"cannot read CIFAR batch {where}: {one_line(exc)}") from None
    if not isinstance(obj, dict):
        raise InputError(f"cannot read CIFAR batch {where}: not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _is_cifar_pickle_source(source: Path) -> bool:
    if source.is_dir():
        return any(source.rglob("data_batch_1")) or any(source.rglob("test_batch"))
    if is_archive(source):
        with tarfile_open(source) as tar:
            for member in tar:  # stop at the first telling member: a full pass over 60,000 JPEGs costs seconds
                leaf = Path(member.name).name
                if leaf in CIFAR10_BATCHES:
                    return True
                if is_image_name(leaf):
                    return False
    return False


def tarfile_open(path: Path):
    import tarfile

    try:
        return tarfile.open(path)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read archive {path}: {one_line(exc)}") from None


def load_cifar10_pickles(source: Path, *, size, progress, alloc) -> ImageDataset:
    """The official ``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py``)."""
    wanted = set(CIFAR10_BATCHES) | {"batches.meta"}
    tree = FileTree(source, keep=lambda rel: rel.rsplit("/", 1)[-1] in wanted)
    by_name = {p.rsplit("/", 1)[-1]: p for p in tree.paths}
    batches = [b for b in CIFAR10_BATCHES if b in by_name]
    if not batches:
        raise InputError(f"{source}: no CIFAR-10 batches (data_batch_1..5, test_batch) found")
    class_names = CIFAR10_CLASSES
    if "batches.meta" in by_name:
        where = tree.where(by_name["batches.meta"])
        meta = _unpickle(tree.read(by_name["batches.meta"]), where)
        names = meta.get("label_names")
        if names is None or isinstance(names, (str, bytes)) or not hasattr(names, "__len__") or len(names) == 0:
            raise InputError(f"{where}: expected a 'label_names' list of class names")
        class_names = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
    parts, labels, ids, splits = [], [], [], []
    for b in batches:
        where = tree.where(by_name[b])
        d = _unpickle(tree.read(by_name[b]), where)
        missing = [k for k in ("data", "labels") if k not in d]
        if missing:
            raise InputError(f"{where}: not a CIFAR-10 batch (no {' or '.join(repr(k) for k in missing)} key)")
        try:
            data = np.asarray(d["data"])
            batch_labels = np.asarray(d["labels"])
        except (ValueError, TypeError) as exc:
            raise InputError(f"{where}: unreadable data or labels ({one_line(exc)})") from None
        if data.dtype.kind not in "iu" or data.ndim != 2 or data.shape[1] != 3072:
            raise InputError(f"{where}: data must be uint8 (n, 3072), got {data.dtype} {data.shape}")
        if data.dtype != np.uint8:
            if data.size and (data.min() < 0 or data.max() > 255):
                raise InputError(f"{where}: pixel values must be 0..255, found {data.min()}..{data.max()}")
            data = data.astype(np.uint8)
        if batch_labels.ndim != 1 or len(batch_labels) != len(data) or batch_labels.dtype.kind not in "iu":
            raise InputError(
                f"{where}: expected {len(data)} integer labels, got {batch_labels.dtype} {batch_labels.shape}"
            )
        out_of_range = (batch_labels < 0) | (batch_labels >= len(class_names))
        if out_of_range.any():
            i = int(np.flatnonzero(out_of_range)[0])
            raise InputError(
                f"{where}: label {batch_labels[i]} of image {i} is not a class index 0..{len(class_names) - 1}"
            )
        parts.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels.astype(np.int64))
        ids += [f"{b}:{i}" for i in range(len(data))]
        splits += ["test" if b == "test_batch" else "train"] * len(data)
    return ImageDataset(
        images=resize_array(np.concatenate(parts), size, alloc, progress),
        labels=np.concatenate(labels),
        ids=np.array(ids),
        class_names=class_names,
        official_split=np.array(splits),
        name="cifar10",
        info={"source": str(source), "format": "cifar-10-python", "skipped": []},
    )


def download_cifar10(dest_dir: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download the official archive to ``dest_dir`` (checked against its md5), return its path."""
    url, md5 = url or CIFAR10_URL, md5 or CIFAR10_MD5
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "cifar-10-python.tar.gz"
    if target.exists() and file_digest(target, "md5") == md5:
        return target
    partial = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise NotFoundError(
            f"no CIFAR-10 source given or found locally, and downloading {url} failed ({one_line(exc)}); "
            "pass --source PATH (cifar-10-python.tar.gz or a class-folder copy) or set HASHLEARN_DATA"
        ) from None
    if file_digest(partial, "md5") != md5:
        partial.unlink()
        raise InputError(f"downloaded {url} has the wrong md5 (expected {md5}); try again")
    partial.replace(target)
    return target


@register_dataset(
    "cifar10",
    kind="single-label",
    classes=10,
    images=60000,
    default_source=["cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar10-jpeg/CIFAR-10-images.tar.gz"],
)
def build_cifar10(source: Path | None, *, size, skip_bad, progress, alloc) -> ImageDataset:
    """CIFAR-10 (60,000 32x32 RGB, 10 classes) from the official pickles or a class-folder copy."""
    if source is None:
        source = default_source("cifar10") or first_existing([cache_root() / "downloads" / "cifar-10-python.tar.gz"])
        if source is None:
            source = download_cifar10(cache_root() / "downloads")
    if _is_cifar_pickle_source(source):
        return load_cifar10_pickles(source, size=size, progress=progress, alloc=alloc)
    ds = load_class_folder(source, name="cifar10", size=size, skip_bad=skip_bad, progress=progress, alloc=alloc)
    if ds.class_names != CIFAR10_CLASSES:
        raise InputError(f"{source}: class folders {ds.class_names} are not the CIFAR-10 classes")
    return ds


def load_csv_labelled(source: Path, *, name: str, size, skip_bad, progress, alloc, mode: str = "RGB"):
    """Images listed in a ``file,label`` CSV (Kaggle / Vertex AI style), in CSV row order.

    A row names its image by relative path, by file name, or by file name without extension
    (Kaggle's ``id``). A first row whose label column is ``label`` is a header.
    """
    tree = FileTree(source, keep=lambda rel: rel.lower().endswith(".csv") or rel.lower().endswith(_IMAGE_EXT))
    csvs = [p for p in tree.paths if p.lower().endswith(".csv")]
    if len(csvs) != 1:
        raise InputError(f"{source}: expected exactly one labels .csv file, found {len(csvs) or 'none'}")
    base = csvs[0].rsplit("/", 1)[0] + "/" if "/" in csvs[0] else ""
    images = {p[len(base) :]: p for p in tree.paths if p.startswith(base) and not p.lower().endswith(".csv")}
    by_name: dict[str, str] = {}
    for rel in images:
        leaf = rel.rsplit("/", 1)[-1]
        by_name.setdefault(leaf, rel)
        by_name.setdefault(leaf.rsplit(".", 1)[0], rel)
    try:
        rows = list(csv.reader(io.StringIO(tree.read(csvs[0]).decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {tree.where(csvs[0])}: not a UTF-8 CSV file ({one_line(exc)})") from None
    if rows and len(rows[0]) >= 2 and rows[0][1].strip().lower() == "label":
        rows = rows[1:]
    rels, names = [], []
    for line, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) < 2:
            raise InputError(f"{tree.where(csvs[0])} line {line}: expected 'file,label', got {row}")
        key = row[0].strip()
        rel = key if key in images else by_name.get(key.rsplit("/", 1)[-1])
        if rel is None:
            raise InputError(f"{tree.where(csvs[0])} line {line}: no image file {key!r}")
        rels.append(rel)
        names.append(row[1].strip())
    class_names = sorted(set(names))
    arr, kept, skipped = decode_files(
        tree,
        [images[r] for r in rels],
        size=size,
        mode=mode,
        skip_bad=skip_bad,
        progress=progress,
        alloc=alloc,
        desc=name,
    )
    index = {c: i for i, c in enumerate(class_names)}
    folders = {r.split("/")[0].lower() for r in rels if "/" in r}
    split = SPLIT_NAMES.get(folders.pop()) if len(folders) == 1 else None
    return ImageDataset(
        images=arr,
        labels=np.array([index[names[i]] for i in kept], dtype=np.int64),
        ids=np.array([rels[i] for i in kept]),
        class_names=class_names,
        official_split=np.full(len(kept), split) if split else None,
        name=name,
        info={"source": str(source), "skipped": skipped},
    )


@register_dataset(
    "cifar10-png200",
    kind="single-label",
    classes=10,
    images=200,
    default_source="cifar10-png-sample/small-cifar-10-png200.tar.gz",
)
def build_cifar10_png200(source: Path | None, *, size, skip_bad, progress, alloc) -> ImageDataset:
    """The first 200 CIFAR-10 training images as lossless PNG with trainLabels.csv (a golden sample)."""
    return load_csv_labelled(
        _require_source("cifar10-png200", source),
        name="cifar10-png200",
        size=size,
        skip_bad=skip_bad,
        progress=progress,
        alloc=alloc,
    )


@register_dataset("csv", kind="single-label", default_source=None)
def build_csv(source: Path | None, *, size, skip_bad, progress, alloc, mode: str = "RGB") -> ImageDataset:
    """Images with a 'file,label' CSV beside them (Kaggle style), folder or .tar.gz."""
    return load_csv_labelled(
        _require_source("csv", source),
        name="csv",
        size=size,
        skip_bad=skip_bad,
        progress=progress,
        alloc=alloc,
        mode=mode,
    )


# --------------------------------------------------------------------------------------------
# idx files (MNIST, Fashion-MNIST) and scikit-learn digits
# --------------------------------------------------------------------------------------------

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


def load_idx_folder(source: Path, *, name: str, class_names: list[str], size, progress, alloc) -> ImageDataset:
    """The standard idx files of a folder; each split with both images and labels is loaded."""
    if not source.is_dir():
        raise InputError(f"{source}: expected a folder holding *-images-idx3-ubyte(.gz) files")
    parts, labels, ids, splits, ignored = [], [], [], [], []
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images_path, labels_path = _find_idx(source, prefix, "images"), _find_idx(source, prefix, "labels")
        if images_path is None or labels_path is None:
            ignored += [str(p) for p in (images_path, labels_path) if p is not None]
            continue
        imgs, labs = read_idx(images_path), read_idx(labels_path)
        if imgs.ndim != 3 or labs.ndim != 1 or len(imgs) != len(labs):
            raise InputError(f"{images_path}: {imgs.shape} images do not match {labs.shape} labels in {labels_path}")
        parts.append(imgs[..., None])
        labels.append(labs.astype(np.int64))
        ids += [f"{split}:{i}" for i in range(len(imgs))]
        splits += [split] * len(imgs)
    if not parts:
        raise InputError(f"{source}: no idx image file with its label file (train-*/t10k-*) found")
    return ImageDataset(
        images=resize_array(np.concatenate(parts), size, alloc, progress),
        labels=np.concatenate(labels),
        ids=np.array(ids),
        class_names=class_names,
        official_split=np.array(splits),
        name=name,
        info={"source": str(source), "ignored_without_pair": ignored, "skipped": []},
    )


@register_dataset("mnist", kind="single-label", classes=10, default_source="mnist-test")
def build_mnist(source: Path | None, *, size, skip_bad, progress, alloc) -> ImageDataset:
    """MNIST idx files (grey, 28x28x1); loads whichever of train/test has images and labels."""
    return load_idx_folder(
        _require_source("mnist", source),
        name="mnist",
        class_names=[str(i) for i in range(10)],
        size=size,
        progress=progress,
        alloc=alloc,
    )


@register_dataset("fashion-mnist", kind="single-label", classes=10, images=70000, default_source="fashion-mnist")
def build_fashion_mnist(source: Path | None, *, size, skip_bad, progress, alloc) -> ImageDataset:
    """Fashion-MNIST idx files (grey, 28x28x1; Debian's dataset-fashion-mnist is found by default)."""
    return load_idx_folder(
        _require_source("fashion-mnist", source, [SYSTEM_FASHION_MNIST]),
        name="fashion-mnist",
        class_names=FASHION_MNIST_CLASSES,
        size=size,
        progress=progress,
        alloc=alloc,
    )


@register_dataset("digits", kind="single-label", classes=10, images=1797, default_source=None)
def build_digits(source: Path | None, *, size, skip_bad, progress, alloc) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits; values 0..16 scaled to 0..255 (round(v * 255 / 16))."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageDataset(
        images=resize_array(images, size, alloc, progress),
        labels=bunch.target.astype(np.int64),
        ids=np.array([f"digits:{i}" for i in range(len(images))]),
        class_names=[str(i) for i in range(10)],
        official_split=None,
        name="digits",
        info={"source": "sklearn.datasets.load_digits", "skipped": []},
    )


# --------------------------------------------------------------------------------------------
# HashNet / DeepHash-pytorch list files (multi-label)
# --------------------------------------------------------------------------------------------


def load_image_lists(
    source: Path,
    *,
    name: str,
    size,
    skip_bad,
    progress,
    alloc,
    lists: list[str] | None = None,
    image_root: str | Path | None = None,
    mode: str = "RGB",
) -> ImageDataset:
    """HashNet / DeepHash-pytorch list files: one ``relative/path.jpg 0 1 0 1 …`` line per image.

    ``source`` is the folder holding the ``*.txt`` lists (all of them, sorted, unless ``lists``
    names some) and, by default, the images. Each list's file stem (``train``, ``test``,
    ``database``) becomes the official split of its images. DeepHash-pytorch's ``database.txt``
    repeats ``train.txt``; an image listed twice is kept once, with the split of the first list
    that names it (lists in the order given) — its labels must agree. Class names come from a
    ``classes.txt`` (one per line) when present. A path that does not exist under the image root
    is retried without its leading folders (lists often carry the authors' ``data/nus_wide/``).
    Sets whose rows all have exactly one positive label (ImageNet-100) become single-label.
    """
    if not source.is_dir():
        raise InputError(f"{source}: expected a folder holding list files (train.txt, test.txt, database.txt)")
    reserved = {"classes.txt", "readme.txt"}
    if lists:
        list_paths = [source / item for item in lists]
    else:
        list_paths = sorted(p for p in source.glob("*.txt") if p.name.lower() not in reserved)
    if not list_paths:
        raise InputError(f"{source}: no list files (*.txt) found")
    root = Path(image_root) if image_root is not None else source
    entries: dict[str, tuple[np.ndarray, str]] = {}
    n_labels = None
    for lp in list_paths:
        if not lp.exists():
            raise NotFoundError(f"list file {lp} does not exist")
        for line_no, line in enumerate(_read_text(lp, "list file").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                vec = np.array([int(v) for v in fields[1:]], dtype=np.uint8)
            except (ValueError, OverflowError):
                raise InputError(f"{lp} line {line_no}: labels must be 0/1 integers, got {line!r}") from None
            if len(vec) == 0:
                raise InputError(f"{lp} line {line_no}: expected an image path followed by 0/1 labels, got {line!r}")
            if n_labels is None:
                n_labels = len(vec)
            if len(vec) != n_labels or len(vec) == 0 or vec.max(initial=0) > 1:
                raise InputError(f"{lp} line {line_no}: expected {n_labels} labels of 0/1, got {len(vec)}")
            path = fields[0]
            if path in entries:
                if not np.array_equal(entries[path][0], vec):
                    raise InputError(f"{lp} line {line_no}: {path} has labels that differ from an earlier list")
                continue
            entries[path] = (vec, lp.stem)
    if n_labels is None:
        raise InputError(f"{source}: the list files {', '.join(p.name for p in list_paths)} name no images")
    classes_file = source / "classes.txt"
    class_names = (
        [c.strip() for c in _read_text(classes_file, "class names file").splitlines() if c.strip()]
        if classes_file.exists()
        else [f"label{i}" for i in range(n_labels)]
    )
    if len(class_names) != n_labels:
        raise InputError(f"{classes_file}: {len(class_names)} names for {n_labels} label columns")

    paths = list(entries)
    strip = _strip_depth(root, paths[0])
    rel_in_root = ["/".join(Path(p).parts[strip:]) for p in paths]
    tree = FileTree(root, keep=set(rel_in_root).__contains__)  # the list decides which files count, not the folder walk
    images, kept, skipped = decode_files(
        tree, rel_in_root, size=size, mode=mode, skip_bad=skip_bad, progress=progress, alloc=alloc, desc=name
    )
    matrix = np.stack([entries[paths[i]][0] for i in kept])
    single = bool((matrix.sum(axis=1) == 1).all())
    return ImageDataset(
        images=images,
        labels=matrix.argmax(axis=1).astype(np.int64) if single else matrix,
        ids=np.array([rel_in_root[i] for i in kept]),
        class_names=class_names,
        official_split=np.array([entries[paths[i]][1] for i in kept]),
        name=name,
        info={"source": str(source), "lists": [str(p) for p in list_paths], "skipped": skipped},
    )


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or :class:`InputError` naming it (a folder, unreadable, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _strip_depth(root: Path, path: str) -> int:
    parts = Path(path).parts
    for k in range(len(parts)):
        if (root.joinpath(*parts[k:])).exists():
            return k
    return 0  # nothing matches: decode_files reports the missing file by name


def _register_list_dataset(name: str, summary: str, **info: Any) -> None:
    def build(source: Path | None, *, size, skip_bad, progress, alloc, lists=None, image_root=None) -> ImageDataset:
        return load_image_lists(
            _require_source(name, source),
            name=name,
            size=size,
            skip_bad=skip_bad,
            progress=progress,
            alloc=alloc,
            lists=lists,
            image_root=image_root,
        )

    build.__doc__ = summary
    register_dataset(name, kind="multi-label list files", default_source=name, **info)(build)


_register_list_dataset("image-list", "Any HashNet/DeepHash-pytorch list-file set ('path 0 1 0 …' + images).")
_register_list_dataset("nus-wide", "NUS-WIDE (21 concepts) from HashNet/DeepHash-pytorch list files.", classes=21)
_register_list_dataset("coco", "MS-COCO (80 labels) from HashNet/DeepHash-pytorch list files.", classes=80)
_register_list_dataset("mirflickr", "MIRFLICKR-25K (24/38 labels) from DeepHash-pytorch list files.", classes=24)
_register_list_dataset("voc2012", "PASCAL VOC 2012 (20 labels) from DeepHash-pytorch list files.", classes=20)
_register_list_dataset("imagenet-100", "ImageNet-100 (HashNet subset, single-label) from list files.", classes=100)


# --------------------------------------------------------------------------------------------
# Synthetic multi-label: 2x2 mosaics of single-label images
# --------------------------------------------------------------------------------------------


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
    out_side = None if size is None else size
    shape = (len(tiles), out_side or grid * h, out_side or grid * w, c)
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


@register_dataset("cifar10-mosaic-synthetic", kind="multi-label (synthetic)", classes=10, synthetic=True)
def build_cifar10_mosaic(source: Path | None, *, size, skip_bad, progress, alloc, seed: int = 0, grid: int = 2):
    """SYNTHETIC multi-label set: seeded 2x2 mosaics of CIFAR-10 images, multi-hot labels."""
    from hashlearn.data.cache import open_prepared

    try:
        base = open_prepared("cifar10") if source is None else None
    except NotFoundError:
        base = None
    if base is None:
        base = load_dataset("cifar10", source, skip_bad=skip_bad, progress=progress)
    ds = make_mosaics(base, grid=grid, seed=seed, alloc=alloc, size=size, progress=progress)
    ds.name = "cifar10-mosaic-synthetic"
    return ds
