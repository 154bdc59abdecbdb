"""Images listed in a ``file,label`` CSV beside them (Kaggle / Vertex AI style), folder or ``.tar.gz``.

``csv`` reads any such source (prepared under the source's own name unless ``--as`` says
otherwise); ``cifar10-png200`` is the golden sample of the first 200 CIFAR-10 training images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import SPLIT_NAMES, Load
from hashlearn.data.images import IMAGE_EXTENSIONS
from hashlearn.data.sources import FileTree, one_line
from hashlearn.errors import InputError


def load_csv_labelled(load: Load, source: Path, *, mode: str = "RGB") -> ImageDataset:
    """Images listed in a ``file,label`` CSV, in CSV row order.

    A row names its image by relative path, by file name, or by file name without extension
    (Kaggle's ``id``). A first row whose label column is ``label`` is a header. When every
    listed image is under one split-named folder (``train/``), that is the official split.
    """
    tree = FileTree(source, keep=lambda rel: rel.lower().endswith(".csv") or rel.lower().endswith(IMAGE_EXTENSIONS))
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
    index = {c: i for i, c in enumerate(class_names)}
    folders = {r.split("/")[0].lower() for r in rels if "/" in r}
    split = SPLIT_NAMES.get(folders.pop()) if len(folders) == 1 else None
    return load.from_files(
        tree,
        [images[r] for r in rels],
        labels=[index[n] for n in names],
        class_names=class_names,
        ids=rels,
        official_split=[split] * len(rels) if split else None,
        mode=mode,
        info={"source": str(source)},
    )


@register_dataset(
    "cifar10-png200",
    kind="single-label",
    classes=10,
    images=200,
    default_source="cifar10-png-sample/small-cifar-10-png200.tar.gz",
    protocol="per-class",
)
def build_cifar10_png200(load: Load) -> ImageDataset:
    """The first 200 CIFAR-10 training images as lossless PNG with trainLabels.csv (a golden sample)."""
    return load_csv_labelled(load, load.require_source())


@register_dataset("csv", kind="single-label", default_source=None, generic=True)
def build_csv(load: Load, *, mode: str = "auto") -> ImageDataset:
    """Images with a 'file,label' CSV beside them (Kaggle style), folder or .tar.gz."""
    return load_csv_labelled(load, load.require_source(), mode=mode)
