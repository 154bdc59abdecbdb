"""Reading raw sources: folders or tar archives of files, image decoding loops, locations.

A *source* is a directory or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive; :class:`FileTree`
presents both as ``relative/posix/path → bytes`` so each loader is written once. Archives are
read in one sequential pass (gzip cannot seek cheaply), keeping only the files a loader asks for.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hashlearn.data.images import decode_image, is_grey_image, is_image_name, max_image_pixels, resize_and_crop
from hashlearn.errors import InputError, NotFoundError

#: ``alloc(shape) -> array``: where a loader puts decoded images (``np.empty`` in memory, a
#: ``.npy`` memmap when :func:`hashlearn.data.prepare` writes a cache).
Alloc = Callable[[tuple[int, ...]], np.ndarray]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some, such as tarfile's, span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def alloc_in_memory(shape: tuple[int, ...]) -> np.ndarray:
    """``np.empty(shape, uint8)``, after checking that it fits in the memory available now."""
    need = int(np.prod(shape, dtype=np.float64))
    available = available_memory()
    if available is not None and need > available:
        raise InputError(
            f"decoded images {describe_shape(shape)} need {format_bytes(need)} but only {format_bytes(available)} "
            "of memory is available; use a smaller size (--size) or prepare the dataset into a cache on disk"
        )
    return np.empty(shape, dtype=np.uint8)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``: sizes in messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # not reached


def describe_shape(shape: tuple[int, ...]) -> str:
    """``(N, H, W, C)`` → ``'(60,000 images of 32x32x3 bytes)'``."""
    if len(shape) == 4:
        n, h, w, c = shape
        return f"({n:,} images of {h}x{w}x{c} bytes)"
    return str(tuple(shape))


def data_root() -> Path | None:
    """The shared data folder from ``$HASHLEARN_DATA`` (``None`` when unset)."""
    value = os.environ.get("HASHLEARN_DATA")
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """Where prepared datasets live: ``$HASHLEARN_CACHE`` or ``~/.cache/hashlearn``."""
    value = os.environ.get("HASHLEARN_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "hashlearn"


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def _hidden(relpath: str) -> bool:
    # .ipynb_checkpoints, .DS_Store, macOS resource forks: never data
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/"))


class FileTree:
    """Files of a directory or a tar archive, addressed by relative POSIX path.

    Only files accepted by ``keep(relpath)`` are listed (and, for archives, held in memory).
    Hidden files and folders are always skipped.
    """

    def __init__(self, source: str | Path, keep: Callable[[str], bool] = is_image_name):
        self.source = Path(source)
        self._blobs: dict[str, bytes] | None = None
        if not self.source.exists():
            raise NotFoundError(f"source {self.source} does not exist")
        if self.source.is_dir():
            paths = []
            for dirpath, dirnames, filenames in os.walk(self.source):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel_dir = Path(dirpath).relative_to(self.source).as_posix()
                for f in filenames:
                    rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                    if not _hidden(rel) and keep(rel):
                        paths.append(rel)
            self.paths = sorted(paths)
        elif is_archive(self.source):
            self._blobs = {}
            try:
                with tarfile.open(self.source) as tar:
                    for member in tar:
                        name = member.name.removeprefix("./")
                        if member.isfile() and not _hidden(name) and keep(name):
                            self._blobs[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise InputError(f"cannot read archive {self.source}: {one_line(exc)}") from None
            self.paths = sorted(self._blobs)
        else:
            raise InputError(f"source {self.source} is neither a folder nor a .tar/.tar.gz archive")

    def read(self, relpath: str) -> bytes:
        if self._blobs is not None:
            if relpath not in self._blobs:
                raise InputError(f"cannot read {self.where(relpath)}: no such file")
            return self._blobs[relpath]
        try:
            return (self.source / relpath).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {self.where(relpath)}: {exc.strerror or exc}") from None

    def open(self, relpath: str) -> BinaryIO:
        """A binary file object of ``relpath`` (read lazily for folders), or :class:`InputError`."""
        if self._blobs is not None:
            return io.BytesIO(self.read(relpath))
        try:
            return open(self.source / relpath, "rb")
        except OSError as exc:
            raise InputError(f"cannot read {self.where(relpath)}: {exc.strerror or exc}") from None

    def where(self, relpath: str) -> str:
        """How to name a file in a message: a path, or ``member in archive``."""
        return f"{relpath} in {self.source}" if self._blobs is not None else str(self.source / relpath)

    def __len__(self) -> int:
        return len(self.paths)


def detect_mode(tree: FileTree, relpaths: list[str]) -> str:
    """``"L"`` when every readable image of ``relpaths`` is single-channel (grey), else ``"RGB"``.

    Only headers are read (a folder's files are opened, not read whole). An unreadable header
    does not count either way: decoding reports the file (or skips it with ``skip_bad``).
    """
    seen_grey = False
    for rel in relpaths:
        try:
            with tree.open(rel) as f:
                grey = is_grey_image(f)
        except InputError:
            continue
        if grey is False:
            return "RGB"
        seen_grey = seen_grey or bool(grey)
    return "L" if seen_grey else "RGB"


def decode_files(
    tree: FileTree,
    relpaths: list[str],
    *,
    size: int | None,
    mode: str,
    skip_bad: bool,
    progress: bool,
    alloc: Alloc,
    desc: str = "decoding",
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``relpaths`` into one ``(N, H, W, C)`` array.

    Returns ``(images, kept, skipped)``: ``kept`` indexes ``relpaths`` for the decoded rows,
    ``skipped`` names the unreadable files (only with ``skip_bad``; otherwise the first
    unreadable file raises :class:`InputError` naming it). With ``size=None`` all images must
    have one shape; the first that differs raises, suggesting ``size``. ``max_pixels`` is the
    per-image pixel limit (default: ``$HASHLEARN_MAX_IMAGE_PIXELS`` or 100 megapixels); a larger
    image is unreadable (skipped with ``skip_bad``).
    """
    from tqdm.auto import tqdm

    max_pixels = max_image_pixels(max_pixels)

    images: np.ndarray | None = None
    first = ""
    kept: list[int] = []
    skipped: list[str] = []
    for i, rel in enumerate(tqdm(relpaths, desc=desc, unit="img", disable=not progress, leave=False)):
        try:
            array = decode_image(tree.read(rel), name=tree.where(rel), size=size, mode=mode, max_pixels=max_pixels)
        except InputError:
            if not skip_bad:
                raise
            skipped.append(tree.where(rel))
            continue
        if images is None:
            images, first = alloc((len(relpaths), *array.shape)), rel
        elif array.shape != images.shape[1:]:
            h, w = array.shape[:2]
            h0, w0 = images.shape[1:3]
            raise InputError(
                f"{tree.where(rel)} is {w}x{h} but {first} is {w0}x{h0}; "
                "images of different sizes need size=S (--size S) to resize every image to SxS"
            )
        images[len(kept)] = array
        kept.append(i)
    if images is None:
        raise InputError(f"no readable images in {tree.source}")
    if len(kept) < len(relpaths):
        images = images[: len(kept)]
    return images, np.asarray(kept, dtype=np.int64), skipped


def resize_array(images: np.ndarray, size: int | None, alloc: Alloc, progress: bool = False) -> np.ndarray:
    """Apply the loaders' resize rule to an already-decoded ``(N, H, W, C)`` array."""
    if size is None or images.shape[1:3] == (size, size):
        out = alloc(images.shape)
        out[...] = images
        return out
    from PIL import Image
    from tqdm.auto import tqdm

    out = alloc((len(images), size, size, images.shape[3]))
    for i in tqdm(range(len(images)), desc="resizing", unit="img", disable=not progress, leave=False):
        img = images[i, :, :, 0] if images.shape[3] == 1 else images[i]
        resized = np.asarray(resize_and_crop(Image.fromarray(img), size), dtype=np.uint8)
        out[i] = resized.reshape(size, size, -1)
    return out


def first_existing(candidates: Iterable[Path | None]) -> Path | None:
    for c in candidates:
        if c is not None and c.exists():
            return c
    return None
