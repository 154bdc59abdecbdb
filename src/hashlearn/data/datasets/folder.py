"""Class-folder trees: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``, folder or ``.tar.gz``.

``folder`` reads any such tree (prepared under the source's own name unless ``--as`` says
otherwise); ``brain-mri`` is the Kaggle brain tumour MRI set in that layout. A top level whose
folders are all split names (train/Training, val/valid/validation, test/Testing) is the source's
official split. ``folder`` stores grey images as 1 channel when every image of the tree is
single-channel (``mode="auto"``), as RGB otherwise; ``mode="RGB"`` / ``"L"`` forces one.
"""

from __future__ import annotations

from pathlib import Path

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import SPLIT_NAMES, SPLIT_ORDER, Load
from hashlearn.data.sources import FileTree
from hashlearn.errors import InputError


def folder_layout(paths: list[str], where: Path) -> tuple[int, bool]:
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


def load_class_folder(load: Load, source: Path, *, mode: str = "RGB") -> ImageDataset:
    """Any ``root/<class>/<image>`` tree (optionally under ``train/``, ``val/`` and ``test/`` folders)."""
    tree = FileTree(source)
    if not tree.paths:
        raise InputError(f"no image files in {source}")
    depth, has_split = folder_layout(tree.paths, source)
    records = []  # (split rank, class, relpath-without-prefix, full relpath, split)
    for full in tree.paths:
        parts = full.split("/")[depth:]
        split = SPLIT_NAMES[parts[0].lower()] if has_split else None
        rank = SPLIT_ORDER.index(split) if split else 0
        records.append((rank, parts[-2], "/".join(parts), full, split))
    records.sort()
    class_names = sorted({r[1] for r in records})
    index = {c: i for i, c in enumerate(class_names)}
    return load.from_files(
        tree,
        [r[3] for r in records],
        labels=[index[r[1]] for r in records],
        class_names=class_names,
        ids=[r[2] for r in records],
        official_split=[r[4] for r in records] if has_split else None,
        mode=mode,
        info={"source": str(source)},
    )


@register_dataset("folder", kind="single-label", default_source=None, generic=True)
def build_folder(load: Load, *, mode: str = "auto") -> ImageDataset:
    """Any root/<class>/<image> folder or .tar.gz; root/<train|val|test>/... gives the official split."""
    return load_class_folder(load, load.require_source(), mode=mode)


@register_dataset(
    "brain-mri",
    kind="single-label",
    default_source="brain-tumor-mri/brain_tumor_mri_224.tar.gz",
    classes=4,
    images=7019,
)
def build_brain_mri(load: Load) -> ImageDataset:
    """Brain tumour MRI (Kaggle): Training/ and Testing/ class folders, grey scans converted to RGB."""
    return load_class_folder(load, load.require_source(), mode="RGB")
