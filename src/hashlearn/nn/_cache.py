"""Plumbing shared by the on-disk caches of :mod:`hashlearn.nn` (pooled features, spatial activations).

* **Keys.** A cache folder is named ``<label>-<hash>``, the hash being the first 16 hex digits of
  the sha256 of its key (a JSON dict of everything the numbers depend on); the manifest stores
  the full key and a reader compares it, so a stale folder is an error, never reused.
* **Chunks.** :class:`ChunkedWriter` pre-allocates each array as a ``.npy`` file in
  ``<folder>.partial/`` and fills it chunk by chunk (rows ``c0:c1``); after each chunk it
  records the chunk's sha256 in ``progress.json`` (written atomically). A killed process
  loses at most the chunk in flight: the next call re-checks the recorded chunks and
  computes only the rest. A lock file keeps two processes off the same partial folder.
  :func:`fill_chunks` is the one loop that computes the pending chunks (progress bar, threads).
* **Finish.** The manifest (key, shapes, dtypes, per-chunk sha256, optionally the sha256 of
  each whole file) is written last and the folder appears with one ``rename``, so a folder
  without ``.partial`` is always complete.
* **Checks.** :func:`read_manifest` rejects a missing or stale manifest; :func:`open_array`
  rejects a missing, truncated or reshaped file; :func:`verify_chunks` / the whole-file
  sha256 reject tampered bytes. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn._atomic import atomic_write_text
from hashlearn._digest import file_digest
from hashlearn.errors import HashlearnError, InputError

JOURNAL = "progress.json"
KEY_FILE = "key.json"
LOCK = ".lock"
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """``$HASHLEARN_CACHE`` or ``~/.cache/hashlearn`` (same rule as :mod:`hashlearn.data`)."""
    try:
        from hashlearn.data import cache_root  # type: ignore[attr-defined]

        return Path(cache_root())
    except ImportError:
        env = os.environ.get("HASHLEARN_CACHE")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "hashlearn"


def safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(root: str | os.PathLike | None, kind: str, label: str, key: dict) -> Path:
    """``<root>/<kind>/<label>-<key hash>`` (root: :func:`default_cache_dir` when ``None``)."""
    base = Path(root) if root is not None else default_cache_dir()
    return base / kind / safe(f"{label}-{key_hash(key)}")


def sha256_array(a: np.ndarray) -> str:
    """sha256 of an array's bytes in C order, read in blocks of about 16 MiB (memmaps stay on disk)."""
    h = hashlib.sha256()
    a = np.ascontiguousarray(a) if not isinstance(a, np.memmap) else a
    flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
    step = max(1, (1 << 24) // max(1, flat[0].nbytes if len(flat) else 1))
    for s in range(0, len(flat), step):
        h.update(np.ascontiguousarray(flat[s:s + step]).tobytes())
    return h.hexdigest()


def dataset_fingerprint(images: np.ndarray, ids: Sequence[Any] | None = None) -> str:
    """sha256 over the image bytes, their shape, and the ids when given."""
    h = hashlib.sha256()
    h.update(repr((tuple(images.shape), str(images.dtype))).encode())
    h.update(sha256_array(images).encode())
    if ids is not None:
        h.update(sha256_array(np.asarray([str(i) for i in ids])).encode())
    return h.hexdigest()


def unpack_data(data: Any, key: str | None) -> tuple[np.ndarray, str, str]:
    """(images, dataset name, content fingerprint) from an ImageDataset-like object or an array."""
    if hasattr(data, "images"):
        images = data.images
        name = key or getattr(data, "name", None) or "dataset"
        content = getattr(data, "content_sha256", None) or getattr(data, "checksum", None)
        if not isinstance(content, str):
            content = dataset_fingerprint(images, getattr(data, "ids", None))
    else:
        images = data
        if not isinstance(images, np.ndarray):
            raise InputError(f"images must be a numpy array or an ImageDataset, got {type(data).__name__}")
        name = key or "array"
        content = dataset_fingerprint(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise InputError(f"{name}: images must be uint8 (N,H,W) or (N,H,W,1|3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise InputError(f"{name}: no images")
    return images, name, content


def rows_sha256(array: np.ndarray, r0: int, r1: int) -> str:
    """sha256 of rows ``r0:r1`` of a C-contiguous array (what the manifests record per chunk)."""
    return hashlib.sha256(np.ascontiguousarray(array[r0:r1]).reshape(-1).view(np.uint8)).hexdigest()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def check_disk_space(folder: Path, needed: int, what: str, more: bool = False, note: str = "") -> None:
    """One-line :class:`HashlearnError` when the file system of ``folder`` has less than ``needed`` bytes free."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise HashlearnError(f"{what} needs {human_bytes(needed)}{' more' if more else ''}{note} but only "
                             f"{human_bytes(free)} is free under {probe}; free space or point cache_dir / "
                             f"$HASHLEARN_CACHE at a larger disk")


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, smoothing=0.05)


class ChunkedWriter:
    """Arrays of ``n`` rows written chunk by chunk into ``<final>.partial/``, resumable, finished atomically.

    ``specs``: ``{name: (file name, shape, dtype)}``, every shape starting with ``n``. With
    ``final=None`` the arrays live in memory and nothing is written (no cache).

    After construction, :attr:`finished` tells whether another process completed ``final``
    while this one waited for the lock (then :meth:`close` and read it). Otherwise fill
    ``arrays[name][c0:c1]`` for each range of :meth:`pending` and :meth:`commit` it; then
    :meth:`finish`.
    """

    def __init__(self, final: Path | None, key: dict, specs: dict[str, tuple[str, tuple[int, ...], Any]],
                 chunk_rows: int, what: str, size_note: str = ""):
        self.final, self.key, self.what = final, key, what
        self.specs = {name: (file, tuple(int(d) for d in shape), np.dtype(dtype))
                      for name, (file, shape, dtype) in specs.items()}
        self.n = next(iter(self.specs.values()))[1][0]
        self.chunk_rows = int(chunk_rows)
        self.chunks = [(c0, min(self.n, c0 + self.chunk_rows)) for c0 in range(0, self.n, self.chunk_rows)]
        self.done: dict[int, dict[str, str]] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.finished = False
        self._lock = None
        if final is None:
            self.arrays = {name: np.empty(shape, dtype) for name, (_, shape, dtype) in self.specs.items()}
            return
        self.partial = final.with_name(final.name + ".partial")
        self.partial.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.partial / LOCK, "a")  # noqa: SIM115 - held until finish/close
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process writing {self.partial} …", file=sys.stderr)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        if final.exists():  # finished by the process this one waited for
            self.finished = True
            (self.partial / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.partial.rmdir()
            return
        self._resume()
        remaining = sum(self._row_bytes(name) * (c1 - c0) for c0, c1 in self.chunks if c0 not in self.done
                        for name in self.specs)
        try:
            check_disk_space(final.parent, remaining, f"{what} {final.name}", more=bool(self.done), note=size_note)
        except HashlearnError:
            if not self.done:
                shutil.rmtree(self.partial, ignore_errors=True)
            self.close()
            raise
        atomic_write_text(self.partial / KEY_FILE, json.dumps(self.key, indent=1, sort_keys=True))
        for name, (file, shape, dtype) in self.specs.items():
            path = self.partial / file
            if path.exists():
                self.arrays[name] = np.load(path, mmap_mode="r+", allow_pickle=False)
            else:
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self._write_journal()

    def _row_bytes(self, name: str) -> int:
        _, shape, dtype = self.specs[name]
        return int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def _wipe(self) -> None:
        for p in self.partial.iterdir():
            if p.name == LOCK:
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _resume(self) -> None:
        """Keep the chunks a previous (killed) run recorded, when everything about them still matches."""
        try:
            same_key = json.loads((self.partial / KEY_FILE).read_text()) == self.key
            journal = json.loads((self.partial / JOURNAL).read_text())
        except (OSError, ValueError):
            self._wipe()
            return
        if not same_key or journal.get("chunk_rows") != self.chunk_rows or journal.get("n") != self.n:
            self._wipe()
            return
        arrays = {}
        for name, (file, shape, dtype) in self.specs.items():
            try:
                arrays[name] = np.load(self.partial / file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                self._wipe()
                return
            if arrays[name].shape != shape or arrays[name].dtype != dtype:
                self._wipe()
                return
        for c0_text, sums in journal.get("done", {}).items():
            c0 = int(c0_text)
            c1 = min(self.n, c0 + self.chunk_rows)
            if (c0, c1) in self.chunks and all(rows_sha256(arrays[k], c0, c1) == sums.get(k) for k in self.specs):
                self.done[c0] = sums

    def _write_journal(self) -> None:
        journal = {"n": self.n, "chunk_rows": self.chunk_rows, "done": {str(k): v for k, v in self.done.items()}}
        atomic_write_text(self.partial / JOURNAL, json.dumps(journal))

    def pending(self) -> list[tuple[int, int]]:
        return [(c0, c1) for c0, c1 in self.chunks if c0 not in self.done]

    def commit(self, c0: int, c1: int) -> None:
        """Record rows ``c0:c1`` of every array as written (their sha256 goes into the journal)."""
        if self.final is None:
            return
        sums = {}
        for name, a in self.arrays.items():
            a.flush()
            sums[name] = rows_sha256(a, c0, c1)
        self.done[c0] = sums
        self._write_journal()

    def finish(self, extra: dict | None = None, whole_file_sha256: bool = False) -> Path | None:
        """Write the manifest and rename the partial folder to ``final`` (in memory: nothing to do)."""
        if self.final is None:
            return None
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{self.what}: chunks {missing[:3]} were not written")
        info = {}
        for name, (file, shape, dtype) in self.specs.items():
            self.arrays[name].flush()
            info[name] = {"file": file, "shape": list(shape), "dtype": dtype.name, "chunk_rows": self.chunk_rows,
                          "chunk_sha256": [self.done[c0][name] for c0, _ in self.chunks]}
            if whole_file_sha256:
                info[name]["sha256"] = file_digest(self.partial / file)
        self.arrays = {}
        manifest = {"key": self.key, "arrays": info, **(extra or {})}
        atomic_write_text(self.partial / MANIFEST, json.dumps(manifest, indent=1))
        for name in (JOURNAL, KEY_FILE, LOCK):
            (self.partial / name).unlink(missing_ok=True)
        os.rename(self.partial, self.final)
        self.close()
        return self.final

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def fill_chunks(writer: ChunkedWriter, compute: Callable[[int, int, Any], None], desc: str, progress: bool,
                num_threads: int | None) -> tuple[int, float]:
    """Fill every pending chunk of ``writer``: ``compute(c0, c1, bar)`` writes rows ``c0:c1`` of its arrays
    (advancing ``bar``, a progress bar or None, per image), then the chunk is committed; torch runs on
    ``num_threads`` threads. A failure releases the writer (its committed chunks stay for a resume).
    Returns ``(images computed, seconds)``."""
    started = time.perf_counter()
    computed = 0
    bar = progress_bar(writer.n, desc, progress)
    if bar is not None:
        bar.update(writer.n - sum(c1 - c0 for c0, c1 in writer.pending()))  # resumed chunks
    try:
        with torch_threads(num_threads):
            for c0, c1 in writer.pending():
                compute(c0, c1, bar)
                writer.commit(c0, c1)
                computed += c1 - c0
    finally:
        if bar is not None:
            bar.close()
        if writer.pending():
            writer.close()
    return computed, time.perf_counter() - started


def read_manifest(folder: Path, expected_key: dict, what: str) -> dict:
    """The manifest of a finished cache folder; a missing, unreadable or stale one is a one-line error."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        raise HashlearnError(f"{what} {folder} has no readable manifest; delete it or pass rebuild=True") from None
    if not isinstance(manifest, dict) or manifest.get("key") != expected_key:
        raise HashlearnError(f"{what} {folder} was made for different settings (stale); delete it or pass "
                             f"rebuild=True")
    return manifest


def _tampered(path: Path, folder: Path, detail: str = "") -> HashlearnError:
    return HashlearnError(f"cache file {path}{detail} is missing or does not match its checksum (tampered or "
                          f"corrupt); delete {folder} or pass rebuild=True")


def open_array(folder: Path, info: dict, mmap: bool) -> np.ndarray:
    """Load (or memory-map, read-only) one array of a manifest, checking file, shape and dtype (no checksum)."""
    path = folder / info["file"]
    if "sha256" in info and not mmap:
        if not path.exists() or file_digest(path) != info["sha256"]:
            raise _tampered(path, folder)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HashlearnError(f"cache file {path} is missing, truncated or corrupt ({str(exc).splitlines()[0]}); "
                             f"delete {folder} or pass rebuild=True") from None
    if list(array.shape) != list(info["shape"]) or array.dtype != np.dtype(info["dtype"]):
        raise HashlearnError(f"cache file {path} holds {array.dtype} {array.shape}, its manifest says "
                             f"{info['dtype']} {tuple(info['shape'])} (tampered); delete {folder} or pass rebuild=True")
    return array


def verify_chunks(folder: Path, info: dict, array: np.ndarray, chunks: Sequence[int] | None = None) -> None:
    """Compare the sha256 of the given chunks (default: all) with the manifest's."""
    rows = int(info["chunk_rows"])
    sums = info["chunk_sha256"]
    for c in range(len(sums)) if chunks is None else chunks:
        c0, c1 = c * rows, min(len(array), (c + 1) * rows)
        if rows_sha256(array, c0, c1) != sums[c]:
            raise _tampered(folder / info["file"], folder, f" (rows {c0}–{c1 - 1})")


@contextlib.contextmanager
def torch_threads(n: int | None):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
