"""CIFAR-10: the official python pickles, a class-folder JPEG/PNG copy, or the official download.

The pickles are read by an unpickler that admits numpy arrays only (a batch file cannot run
code); the download is checked against its md5.
"""

from __future__ import annotations

import io
import pickle
import shutil
import urllib.request
from pathlib import Path

import numpy as np

from hashlearn._digest import file_digest
from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import Load, default_source_of
from hashlearn.data.datasets.folder import load_class_folder
from hashlearn.data.images import is_image_name
from hashlearn.data.sources import FileTree, cache_root, first_existing, is_archive, one_line
from hashlearn.errors import InputError, NotFoundError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
DEFAULT_SOURCES = ["cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar10-jpeg/CIFAR-10-images.tar.gz"]


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


def tarfile_open(path: Path):
    import tarfile

    try:
        return tarfile.open(path)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read archive {path}: {one_line(exc)}") from None


def is_cifar_pickle_source(source: Path) -> bool:
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


def load_cifar10_pickles(load: Load, source: Path) -> ImageDataset:
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
    parts = []
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
        split = "test" if b == "test_batch" else "train"
        parts.append((b, split, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), batch_labels))
    return load.from_parts(parts, class_names=class_names, source=str(source), info={"format": "cifar-10-python"})


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
    "cifar10", kind="single-label", classes=10, images=60000, default_source=DEFAULT_SOURCES, protocol="cifar10-1"
)
def build_cifar10(load: Load) -> ImageDataset:
    """CIFAR-10 (60,000 32x32 RGB, 10 classes) from the official pickles or a class-folder copy."""
    source = load.source
    if source is None:
        downloads = cache_root() / "downloads"
        source = default_source_of(DEFAULT_SOURCES) or first_existing([downloads / "cifar-10-python.tar.gz"])
        if source is None:
            source = download_cifar10(downloads)
    if is_cifar_pickle_source(source):
        return load_cifar10_pickles(load, source)
    ds = load_class_folder(load, source, mode="RGB")
    if ds.class_names != CIFAR10_CLASSES:
        raise InputError(f"{source}: class folders {ds.class_names} are not the CIFAR-10 classes")
    return ds
