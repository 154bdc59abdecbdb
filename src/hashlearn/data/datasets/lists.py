"""HashNet / DeepHash-pytorch list files: one ``relative/path.jpg 0 1 0 1 …`` line per image.

NUS-WIDE, MS-COCO, MIRFLICKR-25K, PASCAL VOC 2012 and ImageNet-100 come this way, and
``image-list`` reads any such set (prepared under the source's own name unless ``--as`` says
otherwise).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import Load, read_text
from hashlearn.data.sources import FileTree
from hashlearn.errors import InputError, NotFoundError


def load_image_lists(
    load: Load,
    source: Path,
    *,
    lists: list[str] | None = None,
    image_root: str | Path | None = None,
    mode: str = "RGB",
) -> ImageDataset:
    """Read a list-file set.

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
        for line_no, line in enumerate(read_text(lp, "list file").splitlines(), start=1):
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
        [c.strip() for c in read_text(classes_file, "class names file").splitlines() if c.strip()]
        if classes_file.exists()
        else [f"label{i}" for i in range(n_labels)]
    )
    if len(class_names) != n_labels:
        raise InputError(f"{classes_file}: {len(class_names)} names for {n_labels} label columns")

    paths = list(entries)
    strip = _strip_depth(root, paths[0])
    rel_in_root = ["/".join(Path(p).parts[strip:]) for p in paths]
    tree = FileTree(root, keep=set(rel_in_root).__contains__)  # the list decides which files count, not the folder walk
    ds = load.from_files(
        tree,
        rel_in_root,
        labels=np.stack([entries[p][0] for p in paths]),
        class_names=class_names,
        official_split=[entries[p][1] for p in paths],
        mode=mode,
        info={"source": str(source), "lists": [str(p) for p in list_paths]},
    )
    if (ds.labels.sum(axis=1) == 1).all():  # one positive label per kept row: a single-label set
        ds = dataclasses.replace(ds, labels=ds.labels.argmax(axis=1).astype(np.int64))
    return ds


def _strip_depth(root: Path, path: str) -> int:
    parts = Path(path).parts
    for k in range(len(parts)):
        if (root.joinpath(*parts[k:])).exists():
            return k
    return 0  # nothing matches: decoding reports the missing file by name


def _register_list_dataset(name: str, summary: str, **info: Any) -> None:
    def build(load: Load, *, lists: list[str] | None = None, image_root: str | Path | None = None) -> ImageDataset:
        return load_image_lists(load, load.require_source(), lists=lists, image_root=image_root)

    build.__doc__ = summary
    build.__name__ = build.__qualname__ = f"build_{name.replace('-', '_')}"
    register_dataset(name, kind="multi-label list files", default_source=name, **info)(build)


_register_list_dataset(
    "image-list", "Any HashNet/DeepHash-pytorch list-file set ('path 0 1 0 …' + images).", generic=True
)
_register_list_dataset(
    "nus-wide", "NUS-WIDE (21 concepts) from HashNet/DeepHash-pytorch list files.", classes=21, protocol="nus-wide"
)
_register_list_dataset(
    "coco", "MS-COCO (80 labels) from HashNet/DeepHash-pytorch list files.", classes=80, protocol="per-label"
)
_register_list_dataset(
    "mirflickr", "MIRFLICKR-25K (24/38 labels) from DeepHash-pytorch list files.", classes=24, protocol="per-label"
)
_register_list_dataset(
    "voc2012", "PASCAL VOC 2012 (20 labels) from DeepHash-pytorch list files.", classes=20, protocol="per-label"
)
_register_list_dataset("imagenet-100", "ImageNet-100 (HashNet subset, single-label) from list files.", classes=100)
