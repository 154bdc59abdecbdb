"""The plumbing every dataset builder shares, written once: :class:`Load`.

A builder parses its family's layout (class folders, a CSV, list files, idx files, pickles) into
paths and labels, or into decoded pixels, and hands them to one of two methods:

* :meth:`Load.from_files` — decode image files of a :class:`~hashlearn.data.sources.FileTree`
  (a folder or a ``.tar.gz``) with the one decoder, the skip-bad accounting (an unreadable file
  is an error naming it, or skipped and listed with ``skip_bad``) and the colour mode
  (``"auto"``: grey when every image is single-channel), into the array ``alloc`` supplies
  (memory checked before allocating, or a memmap on disk checked against the free space);
* :meth:`Load.from_arrays` — pixels a builder decoded itself (idx files, pickles, scikit-learn),
  resized by the one rule into the array ``alloc`` supplies (:meth:`Load.from_parts`: the same for
  pixels decoded file by file, ids ``file:i``).

Both keep the labels, ids and official splits aligned with the images that were kept and build
the :class:`ImageDataset` with its provenance (``info["source"]``, ``info["skipped"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.sources import (
    Alloc,
    FileTree,
    alloc_in_memory,
    data_root,
    decode_files,
    detect_mode,
    first_existing,
    resize_array,
)
from hashlearn.errors import InputError, NotFoundError

#: Folder (or list-file) names of official splits, mapped to the split they stand for.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
SPLIT_ORDER = ("train", "val", "test")
#: Colour modes a builder's ``mode`` option takes: ``auto`` = ``L`` when every image is grey, else ``RGB``.
MODES = ("auto", "RGB", "L")


def default_source_of(rel: str | Sequence[str] | None) -> Path | None:
    """The first of the registered default sources ``rel`` that exists under ``$HASHLEARN_DATA``."""
    root = data_root()
    if not rel or root is None:
        return None
    rels = [rel] if isinstance(rel, str) else list(rel)
    return first_existing(root / r for r in rels)


@dataclass
class Load:
    """One request to build dataset ``name``, and the shared plumbing to fulfil it.

    ``source`` is what the user gave (``None``: the registered default, see :meth:`require_source`);
    ``size`` the resize rule's side; ``alloc(shape)`` supplies the image array (a memmap when a
    cache is being written).
    """

    name: str
    source: Path | None = None
    size: int | None = None
    skip_bad: bool = False
    progress: bool = False
    alloc: Alloc = alloc_in_memory
    default_sources: str | Sequence[str] | None = None

    def require_source(self, *extra: Path) -> Path:
        """The source to read: the given one, else the registered default, else the first of ``extra``."""
        found = self.source or default_source_of(self.default_sources) or first_existing(extra)
        if found is None:
            rel = self.default_sources
            rel = rel if isinstance(rel, str) or not rel else rel[0]
            hint = f" or set HASHLEARN_DATA to a folder holding {rel}" if rel else ""
            raise NotFoundError(f"dataset {self.name!r} needs a source: pass source=PATH (--source PATH){hint}")
        return found

    def from_files(
        self,
        tree: FileTree,
        relpaths: list[str],
        *,
        labels: Any,
        class_names: list[str],
        ids: Sequence[str] | None = None,
        official_split: Sequence[str] | None = None,
        mode: str = "RGB",
        info: dict[str, Any] | None = None,
    ) -> ImageDataset:
        """Decode ``relpaths`` of ``tree`` into an :class:`ImageDataset` (see the module docstring).

        ``labels`` (class indices or multi-hot rows), ``ids`` (default: the paths) and
        ``official_split`` are aligned with ``relpaths``; rows of skipped files are dropped.
        ``info`` adds provenance (``source`` defaults to the tree's source).
        """
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        detected = detect_mode(tree, relpaths) if mode == "auto" else None
        images, kept, skipped = decode_files(
            tree,
            relpaths,
            size=self.size,
            mode=detected or mode,
            skip_bad=self.skip_bad,
            progress=self.progress,
            alloc=self.alloc,
            desc=self.name,
        )
        keep = kept.tolist()
        meta: dict[str, Any] = {"source": str(tree.source), **(info or {}), "skipped": skipped}
        if detected:
            meta["detected_mode"] = detected
        return ImageDataset(
            images=images,
            labels=np.asarray(labels)[kept],
            ids=np.array([(relpaths if ids is None else ids)[i] for i in keep]),
            class_names=class_names,
            official_split=None if official_split is None else np.array([official_split[i] for i in keep]),
            name=self.name,
            info=meta,
        )

    def from_arrays(
        self,
        images: np.ndarray,
        *,
        labels: np.ndarray,
        class_names: list[str],
        ids: Sequence[str],
        source: str,
        official_split: Sequence[str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> ImageDataset:
        """Already decoded ``uint8 (N, H, W, C)`` pixels, resized by the one rule into the array ``alloc`` supplies."""
        return ImageDataset(
            images=resize_array(images, self.size, self.alloc, self.progress),
            labels=labels,
            ids=np.array(ids),
            class_names=class_names,
            official_split=None if official_split is None else np.array(official_split),
            name=self.name,
            info={"source": source, **(info or {}), "skipped": []},
        )

    def from_parts(
        self,
        parts: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
        *,
        class_names: list[str],
        source: str,
        info: dict[str, Any] | None = None,
    ) -> ImageDataset:
        """:meth:`from_arrays` of files a builder decoded one by one (CIFAR-10 batches, idx pairs): each part is
        ``(name, official split, uint8 images, class indices)``; image ``i`` of part ``name`` gets the id
        ``"name:i"``."""
        return self.from_arrays(
            np.concatenate([images for _, _, images, _ in parts]),
            labels=np.concatenate([labels.astype(np.int64) for _, _, _, labels in parts]),
            class_names=class_names,
            ids=[f"{name}:{i}" for name, _, images, _ in parts for i in range(len(images))],
            official_split=[split for _, split, images, _ in parts for _ in range(len(images))],
            source=source,
            info=info,
        )


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or :class:`InputError` naming it (a folder, unreadable, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
