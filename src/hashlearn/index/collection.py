"""Collections on disk: append-only code segments + SQLite metadata, crash-safe.

Layout of a collection directory (format version 1)::

    collection.sqlite   meta(key, value): format, format_version, bits
                        segments(seg, file, rows): rows = committed codes in the segment file
                        items(id, seg, row, path, label, added): one row per live code
    seg-000000.codes    packed codes, ceil(bits/8) bytes each, appended, memory-mapped to read

How ``add`` stays atomic: it validates everything first, then, holding SQLite's write lock,
(1) cuts the segment file back to its committed length (dropping a torn tail a killed writer may
have left), (2) appends the codes and ``fsync``\\ s them, (3) inserts the items and the segment's new
row count in one transaction (``synchronous=FULL``). A kill before (3) commits leaves bytes past
the committed length, which readers never look at; a kill after leaves the whole batch. So once
``add`` returns, its codes survive a kill -9, and no partial batch is ever visible. ``remove`` is
one transaction deleting items (the bytes stay in the segment; ``compact`` is not needed for
correctness).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from hashlearn.errors import InputError, NotFoundError

FORMAT = "hashlearn-collection"
FORMAT_VERSION = 1
DB_NAME = "collection.sqlite"
SEGMENT_MAX_BYTES = 256 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Collection:
    """Binary codes with ids and metadata (path, label, time added) in a directory."""

    def __init__(self, path, *, _conn: sqlite3.Connection, bits: int):
        self.path = Path(path)
        self.bits = bits
        self.nbytes = (bits + 7) // 8
        self._conn = _conn

    # -- opening ------------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path / DB_NAME, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def create(cls, path, bits: int, exist_ok: bool = False) -> Collection:
        """Create an empty collection of ``bits``-bit codes in directory ``path``."""
        from hashlearn.index.hamming import _check_bits

        bits = _check_bits(bits)
        path = Path(path)
        if (path / DB_NAME).exists():
            if exist_ok:
                coll = cls.open(path)
                if coll.bits != bits:
                    raise InputError(f"{path}: existing collection has {coll.bits}-bit codes, not {bits}")
                return coll
            raise InputError(f"{path}: a collection already exists there")
        path.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE segments (seg INTEGER PRIMARY KEY, file TEXT NOT NULL, rows INTEGER NOT NULL)")
        conn.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, seg INTEGER NOT NULL, row INTEGER NOT NULL,"
            " path TEXT, label TEXT, added REAL NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", FORMAT), ("format_version", str(FORMAT_VERSION)), ("bits", str(bits))],
        )
        conn.execute("COMMIT")
        _fsync_dir(path)
        return cls(path, _conn=conn, bits=bits)

    @classmethod
    def open(cls, path) -> Collection:
        """Open an existing collection (a killed writer's torn tail is ignored)."""
        path = Path(path)
        if not (path / DB_NAME).exists():
            raise NotFoundError(f"no hashlearn collection at {path} (missing {DB_NAME})")
        conn = cls._connect(path)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{path}: not a hashlearn collection ({exc})") from None
        if meta.get("format") != FORMAT:
            raise InputError(f"{path}: not a hashlearn collection")
        version = int(meta.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise InputError(f"{path}: collection format {version} is newer than this hashlearn ({FORMAT_VERSION})")
        return cls(path, _conn=conn, bits=int(meta["bits"]))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ------------------------------------------------------------------------------
    def add(self, codes, ids=None, paths=None, labels=None) -> np.ndarray:
        """Append codes (packed or ``0/1``/``±1``) with optional ids, paths and labels.

        Atomic and durable: on return the codes survive a crash; on error nothing changed.
        Returns the ids.
        """
        from hashlearn.codes import as_packed
        from hashlearn.index.hamming import check_ids

        arr = np.asarray(codes)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"codes: expected numeric binary codes, got dtype {arr.dtype}")
        packed, _ = as_packed(arr, self.bits, name="codes")
        n = len(packed)
        if ids is not None:
            ids = check_ids(ids, n)
        for name, values in (("paths", paths), ("labels", labels)):
            if values is not None and len(values) != n:
                raise InputError(f"{name}: {len(values)} values for {n} codes")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if ids is None:
                (top,) = conn.execute("SELECT COALESCE(MAX(id), -1) FROM items").fetchone()
                ids = np.arange(top + 1, top + 1 + n, dtype=np.int64)
            else:
                dup = self._existing(ids)
                if dup:
                    raise InputError(f"ids already in the collection: {dup[:5]}")
            if n == 0:
                conn.execute("ROLLBACK")
                return ids
            seg, file, rows = self._writable_segment(n)
            seg_path = self.path / file
            with open(seg_path, "r+b" if seg_path.exists() else "w+b") as f:
                f.truncate(rows * self.nbytes)  # drop a torn tail left by a killed writer
                f.seek(rows * self.nbytes)
                f.write(np.ascontiguousarray(packed).tobytes())
                f.flush()
                os.fsync(f.fileno())
            now = time.time()
            conn.executemany(
                "INSERT INTO items (id, seg, row, path, label, added) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (
                        int(ids[i]),
                        seg,
                        rows + i,
                        None if paths is None else str(paths[i]),
                        None if labels is None else str(labels[i]),
                        now,
                    )
                    for i in range(n)
                ),
            )
            conn.execute("UPDATE segments SET rows = ? WHERE seg = ?", (rows + n, seg))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return ids

    def _existing(self, ids: np.ndarray) -> list[int]:
        found: list[int] = []
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            q = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found += [r[0] for r in self._conn.execute(q, chunk)]
        return sorted(found)

    def _writable_segment(self, n: int) -> tuple[int, str, int]:
        row = self._conn.execute("SELECT seg, file, rows FROM segments ORDER BY seg DESC LIMIT 1").fetchone()
        if row is not None and (row[2] + n) * self.nbytes <= SEGMENT_MAX_BYTES:
            return row
        seg = 0 if row is None else row[0] + 1
        file = f"seg-{seg:06d}.codes"
        (self.path / file).write_bytes(b"")
        _fsync_dir(self.path)
        self._conn.execute("INSERT INTO segments (seg, file, rows) VALUES (?, ?, 0)", (seg, file))
        return seg, file, 0

    def remove(self, ids) -> int:
        """Remove codes by id, atomically; returns how many existed."""
        ids = np.asarray(ids).ravel()
        if ids.size and ids.dtype.kind not in "iu":
            raise InputError(f"ids: must be integers, got dtype {ids.dtype}")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start : start + 500]]
                cur = conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return removed

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def _segment_arrays(self) -> dict[int, np.ndarray]:
        arrays = {}
        for seg, file, rows in self._conn.execute("SELECT seg, file, rows FROM segments"):
            if rows == 0:
                arrays[seg] = np.zeros((0, self.nbytes), dtype=np.uint8)
                continue
            arrays[seg] = np.memmap(self.path / file, dtype=np.uint8, mode="r", shape=(rows, self.nbytes))
        return arrays

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """``(packed codes, ids)`` of every live code, in increasing id order."""
        self._conn.execute("BEGIN")  # one consistent snapshot of items and segments
        try:
            rows = np.array(self._conn.execute("SELECT id, seg, row FROM items ORDER BY id").fetchall(), dtype=np.int64)
            arrays = self._segment_arrays()
        finally:
            self._conn.execute("COMMIT")
        packed = np.zeros((len(rows), self.nbytes), dtype=np.uint8)
        if len(rows) == 0:
            return packed, np.zeros(0, dtype=np.int64)
        for seg, arr in arrays.items():
            sel = rows[:, 1] == seg
            if sel.any():
                packed[sel] = arr[rows[sel, 2]]
        return packed, rows[:, 0].copy()

    def metadata(self, ids) -> dict[int, dict]:
        """``{id: {"path", "label", "added"}}`` for the given ids that exist."""
        out = {}
        ids = [int(i) for i in np.asarray(ids).ravel() if int(i) >= 0]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id, path, label, added FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            for i, path, label, added in self._conn.execute(q, chunk):
                out[i] = {"path": path, "label": label, "added": added}
        return out

    def to_index(self, method: str = "auto", **kwargs):
        """A :class:`HammingIndex` over the live codes."""
        from hashlearn.index.hamming import HammingIndex

        packed, ids = self.read()
        index = HammingIndex(self.bits, method=method, **kwargs)
        index.add(packed, ids)
        return index

    def info(self) -> dict:
        segs = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM segments").fetchone()
        n = len(self)
        return {
            "path": str(self.path),
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "count": n,
            "segments": segs[0],
            "rows_written": segs[1],
            "removed_rows": segs[1] - n,
        }
