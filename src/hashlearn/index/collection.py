"""Collections on disk: append-only code segments + SQLite metadata, checksummed and crash-safe.

Layout of a collection directory (format version 2)::

    collection.sqlite   meta(key, value): format, format_version, bits, next_seg, and root (optional:
                            the absolute folder that the items' relative paths are relative to)
                        segments(seg, file, rows): rows = committed codes in the segment file
                        batches(seg, start, rows, sha256): the sha256 of every committed run of rows
                            (each ``add`` writes one per segment it touches and 65,536 rows; so does
                            ``compact``); the batches of a segment tile its rows ``0 .. rows`` exactly
                        items(id, seg, row, path, label, added): one row per live code
    seg-000000.codes    packed codes, ceil(bits/8) bytes each, appended, memory-mapped to read

Segment numbers only grow (``next_seg``), and a file name is never reused for other bytes once
committed: ``add`` appends to the newest segment (up to ``SEGMENT_MAX_BYTES``) or starts one;
``compact`` and ``repair`` write new segments and retire the old ones.

How ``add`` stays atomic: it validates everything first, then, holding SQLite's write lock, it
(0) checks every segment's length and the sha256 of the segment it appends to, refusing a damaged
collection, (1) cuts that segment back to its committed length (dropping a torn tail a killed
writer may have left), (2) appends the codes and ``fsync``\\ s them, (3) inserts the items, the
batch checksums and the segments' new row counts in one transaction (``synchronous=FULL``). A kill
before (3) commits leaves bytes past the committed length, which readers never look at; a kill
after leaves the whole batch. ``remove`` is one transaction deleting items.

How ``compact`` (and ``repair``) stay atomic: holding the write lock, they write the live codes
into new segment files numbered from ``next_seg`` (``fsync``\\ ed), then switch in one transaction
(new segments and batches, every item's ``(seg, row)``, ``next_seg``), and only then delete the
old files. A kill before the switch leaves unreferenced files numbered ``>= next_seg``; a kill
after it leaves unreferenced old files below ``next_seg``; the next writer deletes both. A reader
whose snapshot predates a switch may find an old file gone: it retries with a fresh snapshot.

Reading checks every segment's length when the collection is opened (cheap), and ``read`` (so
every search) checks the sha256 of every batch it maps (about 2 GB/s), so damaged bytes are an
error, never an answer. ``verify`` checks everything; ``repair`` drops the damaged batches.

Format 1 collections (no ``batches``, no ``next_seg``) open and read as before (lengths checked;
there are no checksums to check); the first ``add``, ``compact`` or ``repair`` upgrades them to
format 2 in its own transaction, checksumming the bytes as they are then.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashlearn.errors import HashlearnError, InputError, NotFoundError

FORMAT = "hashlearn-collection"
FORMAT_VERSION = 2
DB_NAME = "collection.sqlite"
SEGMENT_MAX_BYTES = 64 * 1024 * 1024  # an add re-hashes the segment it appends to: at most ~30 ms
CHECKSUM_ROWS = 1 << 16  # rows per checksummed batch at most (what repair drops at once)
LOCK_TIMEOUT = 5.0  # seconds a writer waits for another writer's lock
BUILD_MARKER = ".hashlearn-building"  # inside a temporary build folder: the pid that builds it
_SEG_FILE = re.compile(r"seg-(\d{6,})\.codes")
_BUILD_FILES = re.compile(rf"{re.escape(DB_NAME)}(-wal|-shm|-journal)?|seg-\d{{6,}}\.codes|{re.escape(BUILD_MARKER)}")


class DamagedCollectionError(HashlearnError):
    """A collection whose files no longer match what it committed (truncated, missing, changed)."""


class CollectionLockedError(HashlearnError):
    """Another writer held the collection's write lock for longer than the lock timeout."""


class ReadOnlyCollectionError(HashlearnError):
    """A write to a collection on a read-only folder (or opened read-only)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(buf) -> str:
    return hashlib.sha256(buf).hexdigest()


def _db_error(path: Path, exc: sqlite3.DatabaseError, timeout: float | None = None) -> HashlearnError:
    """One-line error for an SQLite failure: locked, read-only, full, or a damaged database."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    msg = str(exc)
    db = Path(path) / DB_NAME
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in msg:
        wait = f" for {timeout:g} s" if timeout is not None else ""
        return CollectionLockedError(
            f"{path}: locked by another writer (waited{wait}); try again when it has finished, or raise --lock-timeout"
        )
    if name.startswith("SQLITE_READONLY"):
        return ReadOnlyCollectionError(f"{path}: read-only here; cannot write to the collection")
    if name.startswith("SQLITE_FULL"):
        return HashlearnError(f"{path}: disk full while writing the collection")
    if name.startswith("SQLITE_CANTOPEN"):
        return HashlearnError(f"{db}: cannot open the database ({msg})")
    if name.startswith("SQLITE_IOERR"):
        return HashlearnError(f"{db}: I/O error ({msg})")
    return DamagedCollectionError(
        f"{db}: damaged collection database ({msg}); restore it from a copy or rebuild the collection"
    )


def _guarded(method):
    """Turn an ``sqlite3.DatabaseError`` escaping ``method`` into a one-line :class:`HashlearnError`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            self._rollback_quietly()
            raise _db_error(self.path, exc, self.lock_timeout) from None

    return wrapper


@dataclass(frozen=True)
class Damage:
    """Rows ``start .. start + rows`` of segment ``seg`` (file ``file``) that cannot be trusted."""

    seg: int
    file: str
    start: int
    rows: int
    problem: str
    missing: bool = False  # the file is gone (maybe retired by a compaction after our snapshot)

    def describe(self) -> str:
        return f"{self.file} rows {self.start}-{self.start + self.rows - 1}: {self.problem}"


class _Snapshot:
    """Segments and batches as one read transaction saw them."""

    def __init__(self, segments, batches):
        self.segments = segments  # [(seg, file, rows)]
        self.batches = batches  # {seg: [(start, rows, sha256)] sorted by start} or None (format 1)


class Collection:
    """Binary codes with ids and metadata (path, label, time added) in a directory."""

    def __init__(
        self,
        path,
        *,
        _conn: sqlite3.Connection,
        bits: int,
        version: int = FORMAT_VERSION,
        readonly: bool = False,
        lock_timeout: float = LOCK_TIMEOUT,
    ):
        self.path = Path(path)
        self.bits = bits
        self.nbytes = (bits + 7) // 8
        self.version = version
        self.readonly = readonly
        self.lock_timeout = lock_timeout
        self._conn = _conn

    # -- opening ------------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path, readonly: bool, lock_timeout: float) -> sqlite3.Connection:
        db = path / DB_NAME
        if not readonly:
            conn = sqlite3.connect(db, timeout=lock_timeout, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA cell_size_check=ON")  # notice more damaged pages as they are read
            except BaseException:
                conn.close()
                raise
            return conn
        uri = db.absolute().as_uri()
        conn = None
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=lock_timeout, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            conn.execute("PRAGMA cell_size_check=ON")
            return conn
        except sqlite3.OperationalError as exc:
            if conn is not None:
                conn.close()
            if not (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_CANTOPEN"):
                raise
        # A read-only folder: SQLite cannot create the WAL index (-shm) it needs. Without a write-ahead
        # log holding changes, the database file alone is the whole truth: open it as immutable.
        wal = path / (DB_NAME + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise ReadOnlyCollectionError(
                f"{path}: on a read-only folder with unmerged changes in {wal.name}; "
                "open it once where it is writable (any hashlearn index command merges them)"
            )
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        conn.execute("PRAGMA cell_size_check=ON")
        return conn

    @staticmethod
    def _init_schema(conn: sqlite3.Connection, bits: int, root: str | None = None) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE segments (seg INTEGER PRIMARY KEY, file TEXT NOT NULL, rows INTEGER NOT NULL)")
        conn.execute(_BATCHES_DDL)
        conn.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, seg INTEGER NOT NULL, row INTEGER NOT NULL,"
            " path TEXT, label TEXT, added REAL NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", FORMAT), ("format_version", str(FORMAT_VERSION)), ("bits", str(bits)), ("next_seg", "0")]
            + ([("root", root)] if root is not None else []),
        )
        conn.execute("COMMIT")

    @classmethod
    def create(cls, path, bits: int, exist_ok: bool = False, *, lock_timeout: float = LOCK_TIMEOUT) -> Collection:
        """Create an empty collection of ``bits``-bit codes in directory ``path`` (see :meth:`build`)."""
        from hashlearn.index.hamming import _check_bits

        bits = _check_bits(bits)
        path = Path(path)
        if (path / DB_NAME).exists():
            if exist_ok:
                coll = cls.open(path, lock_timeout=lock_timeout)
                if coll.bits != bits:
                    coll.close()
                    raise InputError(f"{path}: existing collection has {coll.bits}-bit codes, not {bits}")
                return coll
            raise InputError(f"{path}: a collection already exists there")
        return cls.build(path, bits, lock_timeout=lock_timeout)

    @classmethod
    def build(
        cls,
        path,
        bits: int,
        codes=None,
        ids=None,
        paths=None,
        labels=None,
        *,
        root=None,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> Collection:
        """Create a collection at ``path`` holding ``codes`` (optional), all or nothing.

        ``root``: the folder that relative ``paths`` are relative to, recorded (absolute) so that
        :meth:`resolve_path` finds the images from anywhere; without it relative paths are taken
        from the current folder of whoever reads them.

        ``path`` must not exist, or be an empty folder (not the current folder). The collection is
        built in a temporary sibling folder ``.NAME.building-PID`` and renamed into place at the end,
        so a failure (or a kill) never touches ``path`` and never deletes anything that was there.
        A later build removes the temporary folders of dead builds of the same name; only folders
        provably left by a build (that name, a dead pid, the pid's marker file, only collection files)
        are ever deleted.
        """
        from hashlearn.index.hamming import _check_bits

        bits = _check_bits(bits)
        root = _abs_root(root)
        target = _out_target(path)
        tmp = target.parent / f".{target.name}.building-{os.getpid()}"
        made: list[Path] = []
        own_tmp = False
        try:
            try:
                made = _makedirs(target.parent)
                _remove_stale_builds(target.parent, target.name)
                tmp.mkdir()
                own_tmp = True
                with open(tmp / BUILD_MARKER, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                raise HashlearnError(f"{path}: cannot create a collection there ({exc.strerror or exc})") from None
            with _sqlite_errors(tmp, lock_timeout):
                conn = cls._connect(tmp, False, lock_timeout)
            coll = cls(tmp, _conn=conn, bits=bits, lock_timeout=lock_timeout)
            try:
                with _sqlite_errors(tmp, lock_timeout):
                    cls._init_schema(conn, bits, root)
                if codes is not None:
                    coll.add(codes, ids=ids, paths=paths, labels=labels)
            finally:
                coll.close()
            _fsync_dir(tmp)
            try:
                os.rename(tmp, target)  # replaces target only if it is an empty folder
            except OSError as exc:
                raise InputError(f"{path}: cannot put the new collection there ({exc.strerror})") from None
            own_tmp = False
        except BaseException:
            if own_tmp:
                try:
                    _delete_build_folder(tmp)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
        (target / BUILD_MARKER).unlink(missing_ok=True)
        _fsync_dir(target)
        _fsync_dir(target.parent)
        return cls.open(path, lock_timeout=lock_timeout)

    @classmethod
    def open(
        cls, path, *, readonly: bool | None = None, check: bool = True, lock_timeout: float = LOCK_TIMEOUT
    ) -> Collection:
        """Open an existing collection.

        ``readonly``: ``None`` opens read-write where the folder is writable and read-only elsewhere;
        ``True`` never writes (SQLite ``mode=ro``; ``immutable=1`` on read-only media); ``False``
        refuses a read-only folder. ``check`` refuses a collection whose segment files are shorter
        than what it committed (or missing): one line naming the segment. ``lock_timeout``: seconds
        a writer waits for another writer.
        """
        path = Path(path)
        db = path / DB_NAME
        if path.exists() and not path.is_dir():
            raise InputError(f"{path}: not a hashlearn collection (a file, not a folder)")
        if not db.is_file():
            raise NotFoundError(f"no hashlearn collection at {path} (missing {DB_NAME})")
        writable = os.access(path, os.W_OK) and os.access(db, os.W_OK)
        if readonly is None:
            readonly = not writable
        elif not readonly and not writable:
            raise ReadOnlyCollectionError(f"{path}: read-only here; cannot write to the collection")
        with _sqlite_errors(path, lock_timeout):
            conn = cls._connect(path, bool(readonly), lock_timeout)
        try:
            with _sqlite_errors(path, lock_timeout):
                bits, version = cls._read_meta(path, conn)
            coll = cls(path, _conn=conn, bits=bits, version=version, readonly=bool(readonly), lock_timeout=lock_timeout)
            if check:
                coll.check()
        except BaseException:
            conn.close()
            raise
        return coll

    @staticmethod
    def _read_meta(path: Path, conn: sqlite3.Connection) -> tuple[int, int]:
        from hashlearn.index.hamming import MAX_BITS, MIN_BITS

        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise InputError(f"{path}: not a hashlearn collection ({exc})") from None
            raise
        if meta.get("format") != FORMAT:
            raise InputError(f"{path}: not a hashlearn collection")
        try:
            version = int(meta.get("format_version", 0))
            bits = int(meta["bits"])
        except (KeyError, ValueError):
            raise DamagedCollectionError(f"{path}: damaged collection metadata (format_version or bits)") from None
        if version > FORMAT_VERSION:
            raise InputError(f"{path}: collection format {version} is newer than this hashlearn ({FORMAT_VERSION})")
        if version < 1 or not MIN_BITS <= bits <= MAX_BITS or (version >= 2 and "next_seg" not in meta):
            raise DamagedCollectionError(f"{path}: damaged collection metadata (format {version}, {bits} bits)")
        return bits, version

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- snapshots and damage -----------------------------------------------------------------
    def _load_snapshot(self) -> _Snapshot:
        conn = self._conn
        segments = conn.execute("SELECT seg, file, rows FROM segments ORDER BY seg").fetchall()
        batches = None
        if self._has_batches():
            batches = {seg: [] for seg, _, _ in segments}
            for seg, start, rows, sha in conn.execute(
                "SELECT seg, start, rows, sha256 FROM batches ORDER BY seg, start"
            ):
                batches.setdefault(seg, []).append((start, rows, sha))
        return _Snapshot(segments, batches)

    def _has_batches(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'").fetchone()
        return row is not None

    def _segment_view(self, file: str, rows: int) -> tuple[np.ndarray, int]:
        """``(bytes, rows present)``: the committed bytes of a segment that its file still holds (all
        ``rows`` unless it was truncated), memory-mapped. ``FileNotFoundError`` when it is gone."""
        size = os.stat(self.path / file).st_size
        have = min(rows, size // self.nbytes)
        if have == 0:
            return np.zeros(0, dtype=np.uint8), 0
        return np.memmap(self.path / file, dtype=np.uint8, mode="r", shape=(have * self.nbytes,)), have

    def _damage(self, snap: _Snapshot, checksums: bool, views: dict | None = None) -> list[Damage]:
        """Everything wrong with the segments of ``snap``: missing or short files, rows no batch
        covers, and (with ``checksums``) batches whose bytes changed. ``views`` collects the mapped
        segments (only their intact rows, for a truncated one)."""
        found: list[Damage] = []
        nb = self.nbytes
        for seg, file, rows in snap.segments:
            if not _SEG_FILE.fullmatch(file):
                found.append(Damage(seg, file, 0, rows, "not a segment file name"))
                continue
            try:
                view, have = self._segment_view(file, rows)
            except FileNotFoundError:
                if rows:
                    found.append(Damage(seg, file, 0, rows, f"file missing ({rows} committed rows)", missing=True))
                continue
            if views is not None:
                views[seg] = view
            batches = None if snap.batches is None else snap.batches.get(seg, [])
            if have < rows:
                problem = f"truncated: the file holds {have} of {rows} committed rows"
                if batches is None:
                    found.append(Damage(seg, file, have, rows - have, problem))
                else:
                    found += [Damage(seg, file, b0, n, problem) for b0, n, _ in batches if b0 + n > have]
            if batches is None:
                continue
            found += self._uncovered(seg, file, rows, batches)
            if checksums:
                for b0, n, sha in batches:
                    if 0 <= b0 and n > 0 and b0 + n <= have and _sha256(view[b0 * nb : (b0 + n) * nb]) != sha:
                        found.append(Damage(seg, file, b0, n, "checksum mismatch (the bytes changed)"))
        return found

    @staticmethod
    def _uncovered(seg: int, file: str, rows: int, batches) -> list[Damage]:
        """Rows of a segment that no batch covers exactly once (damaged metadata)."""
        found, pos = [], 0
        for start, n, _ in batches:
            if start > pos:
                found.append(Damage(seg, file, pos, start - pos, "rows without a checksum"))
            if start < pos or n <= 0 or start + n > rows:
                found.append(Damage(seg, file, start, max(n, 1), "batch record overlaps or runs past the segment"))
            pos = max(pos, start + n)
        if pos < rows:
            found.append(Damage(seg, file, pos, rows - pos, "rows without a checksum"))
        return found

    def _consistent(self, compute):
        """Run ``compute(snapshot)`` inside one read transaction. A segment file found missing may
        have been retired by a compaction that committed after the snapshot: then retry with a
        fresh one (the files of the newest snapshot are never deleted while it is the newest)."""
        result = None
        for _ in range(5):
            self._conn.execute("BEGIN")
            try:
                snap = self._load_snapshot()
                result = compute(snap)
            finally:
                self._conn.execute("COMMIT")
            damage = result[0] if isinstance(result, tuple) else result
            if not any(d.missing for d in damage):
                return result
            if self._load_snapshot().segments == snap.segments:
                return result
        return result

    def _raise_damage(self, damage: list[Damage]) -> None:
        if damage:
            more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
            raise DamagedCollectionError(
                f"{self.path}: damaged collection: {damage[0].describe()}{more}; "
                "`hashlearn index verify` lists the damage, `hashlearn index repair` drops it"
            )

    @_guarded
    def check(self) -> None:
        """Refuse (:class:`DamagedCollectionError`) a collection whose segment files are missing or
        shorter than their committed rows. Cheap: file sizes only."""
        self._raise_damage(self._consistent(lambda snap: self._damage(snap, checksums=False)))

    @_guarded
    def verify(self) -> dict:
        """Check everything: SQLite's own integrity check, every segment's length, every batch's
        sha256, and that every item points at a committed row. Returns ``{"sound", "problems",
        "affected_codes", "segments", "batches", "rows", "codes", "checksums"}``; never raises for
        damage it can describe."""
        problems: list[str] = []
        problems += [f"{DB_NAME}: {line}" for line in self._sqlite_problems()]

        def compute(snap):
            return self._damage(snap, checksums=True), snap, self._dangling_items(), len(self)

        damage, snap, dangling, count = self._consistent(compute)
        affected = 0
        for d in damage:
            live = self._live_in(d)
            affected += live
            problems.append(f"{d.describe()} ({live} live codes)")
        if dangling:
            affected += dangling
            problems.append(f"{DB_NAME}: {dangling} items point at rows no segment holds")
        nbatches = sum(len(b) for b in snap.batches.values()) if snap.batches is not None else 0
        return {
            "path": str(self.path),
            "sound": not problems,
            "problems": problems,
            "affected_codes": affected,
            "codes": count,
            "segments": len(snap.segments),
            "batches": nbatches,
            "rows": sum(r for _, _, r in snap.segments),
            "checksums": snap.batches is not None,
        }

    def _sqlite_problems(self) -> list[str]:
        """SQLite's ``quick_check`` (every page and record, not the indexes' contents), as one-line
        messages; empty when sound."""
        lines = [r[0] for r in self._conn.execute("PRAGMA quick_check(20)").fetchall()]
        text = " ".join(" ".join(lines).split())
        return [] if lines == ["ok"] else [text.replace("*** in database main *** ", "")]

    def _live_in(self, d: Damage) -> int:
        return self._conn.execute(
            "SELECT COUNT(*) FROM items WHERE seg = ? AND row >= ? AND row < ?", (d.seg, d.start, d.start + d.rows)
        ).fetchone()[0]

    def _dangling_items(self) -> int:
        return self._conn.execute(
            "SELECT COUNT(*) FROM items AS i LEFT JOIN segments AS s ON i.seg = s.seg"
            " WHERE s.seg IS NULL OR i.row < 0 OR i.row >= s.rows"
        ).fetchone()[0]

    # -- writing ------------------------------------------------------------------------------
    def _begin_write(self, upgrade: bool) -> None:
        """Take the write lock (``BEGIN IMMEDIATE``) and re-read the format; with ``upgrade`` a
        format 1 collection is upgraded to format 2 inside this transaction."""
        if self.readonly:
            raise ReadOnlyCollectionError(f"{self.path}: opened read-only; cannot write to the collection")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            bits, version = self._read_meta(self.path, self._conn)
            if bits != self.bits:
                raise DamagedCollectionError(f"{self.path}: the collection's bits changed ({self.bits} -> {bits})")
            self.version = version
            if version == 1 and upgrade:
                self._upgrade_v1()
        except BaseException:
            self._rollback_quietly()
            raise

    def _upgrade_v1(self) -> None:
        """Format 1 → 2, inside the caller's write transaction: one checksummed batch per segment
        (the bytes as they are now: format 1 had nothing to check them against) and ``next_seg``."""
        snap = self._load_snapshot()
        self._raise_damage(self._damage(snap, checksums=False))
        conn = self._conn
        conn.execute(_BATCHES_DDL)
        for seg, file, rows in snap.segments:
            if rows:
                view, _ = self._segment_view(file, rows)
                conn.execute("INSERT INTO batches VALUES (?, 0, ?, ?)", (seg, rows, _sha256(view)))
        top = max((seg for seg, _, _ in snap.segments), default=-1)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_seg', ?)", (str(top + 1),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
        self.version = FORMAT_VERSION

    def _next_seg(self) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key = 'next_seg'").fetchone()[0])

    def _remove_stray_files(self, snap: _Snapshot) -> None:
        """Delete segment files no committed state refers to (call holding the write lock): files
        ``>= next_seg`` written by a killed add or compaction, and files below it that a
        compaction retired (a reader still on an older snapshot retries, see :meth:`_consistent`)."""
        live = {file for _, file, _ in snap.segments}
        removed = False
        for entry in os.scandir(self.path):
            if _SEG_FILE.fullmatch(entry.name) and entry.name not in live and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed = True
        if removed:
            _fsync_dir(self.path)

    @_guarded
    def add(self, codes, ids=None, paths=None, labels=None, *, root=None) -> np.ndarray:
        """Append codes (packed or ``0/1``/``±1``) with optional ids, paths and labels.

        ``root``: the folder that relative ``paths`` are relative to. When it is not the collection's
        recorded :attr:`root`, relative paths are stored made absolute against it.

        Atomic and durable: on return the codes survive a crash; on error nothing changed.
        Refuses a damaged collection (segment lengths, and the checksums of the segment it appends
        to). Returns the ids.
        """
        from hashlearn.codes import as_packed
        from hashlearn.index.hamming import MAX_ID, check_ids

        arr = np.asarray(codes)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"codes: expected numeric binary codes, got dtype {arr.dtype}")
        packed, _ = as_packed(arr, self.bits, name="codes")
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        n = len(packed)
        if ids is not None:
            ids = check_ids(ids, n)
        for name, values in (("paths", paths), ("labels", labels)):
            if values is not None and len(values) != n:
                raise InputError(f"{name}: {len(values)} values for {n} codes")
        root = _abs_root(root)
        if paths is not None and root is not None and root != self.root:
            paths = [p if os.path.isabs(str(p)) else os.path.normpath(os.path.join(root, str(p))) for p in paths]
        conn = self._conn
        self._begin_write(upgrade=True)
        try:
            if ids is None:
                (top,) = conn.execute("SELECT COALESCE(MAX(id), -1) FROM items").fetchone()
                if top + n > MAX_ID:
                    raise InputError(f"ids: no {n} free ids after the largest id {top} (ids end at 2**63-1)")
                ids = np.arange(top + 1, top + 1 + n, dtype=np.int64)
            else:
                dup = self._existing(ids)
                if dup:
                    raise InputError(f"ids already in the collection: {dup[:5]}")
            if n == 0:
                conn.execute("ROLLBACK")
                return ids
            snap = self._load_snapshot()
            self._raise_damage(self._damage(snap, checksums=False))
            self._remove_stray_files(snap)
            now = time.time()
            cap = max(1, SEGMENT_MAX_BYTES // self.nbytes)
            pos = 0
            last = snap.segments[-1] if snap.segments else None
            while pos < n:
                if last is not None and last[2] < cap:
                    seg, file, rows = last
                    if rows:  # never append to bytes that no longer match their checksums
                        one = _Snapshot([last], {seg: snap.batches.get(seg, [])})
                        self._raise_damage(self._damage(one, checksums=True))
                else:
                    seg = self._next_seg()
                    file, rows = f"seg-{seg:06d}.codes", 0
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seg'", (str(seg + 1),))
                    conn.execute("INSERT INTO segments (seg, file, rows) VALUES (?, ?, 0)", (seg, file))
                take = min(n - pos, cap - rows) if rows < cap else n - pos
                self._append(seg, file, rows, packed[pos : pos + take], new=rows == 0)
                conn.executemany(
                    "INSERT INTO items (id, seg, row, path, label, added) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        (
                            int(ids[i]),
                            seg,
                            rows + i - pos,
                            None if paths is None else str(paths[i]),
                            None if labels is None else str(labels[i]),
                            now,
                        )
                        for i in range(pos, pos + take)
                    ),
                )
                pos += take
                last = (seg, file, rows + take)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback_quietly()
            raise
        return ids

    def _append(self, seg: int, file: str, rows: int, packed: np.ndarray, new: bool) -> None:
        """Write ``packed`` after the committed ``rows`` of a segment, ``fsync`` it, and record the
        batch and the segment's new length (in the caller's transaction)."""
        seg_path = self.path / file
        data = memoryview(np.ascontiguousarray(packed)).cast("B")  # no copy
        with open(seg_path, "wb" if new else "r+b") as f:
            f.truncate(rows * self.nbytes)  # drop a torn tail left by a killed writer
            f.seek(rows * self.nbytes)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.path)
        step = CHECKSUM_ROWS * self.nbytes
        self._conn.executemany(
            "INSERT INTO batches VALUES (?, ?, ?, ?)",
            [
                (seg, rows + b0 // self.nbytes, min(step, len(data) - b0) // self.nbytes, _sha256(data[b0 : b0 + step]))
                for b0 in range(0, len(data), step)
            ],
        )
        self._conn.execute("UPDATE segments SET rows = ? WHERE seg = ?", (rows + len(packed), seg))

    def _existing(self, ids: np.ndarray) -> list[int]:
        found: list[int] = []
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            q = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found += [r[0] for r in self._conn.execute(q, chunk)]
        return sorted(found)

    @_guarded
    def remove(self, ids) -> int:
        """Remove codes by id, atomically; returns how many existed. Refuses a collection whose
        segments are missing or short, and ids outside ``[0, 2**63-1]``."""
        from hashlearn.index.hamming import check_ids

        ids = check_ids(ids if isinstance(ids, (list, tuple)) else np.asarray(ids).ravel(), unique=False)
        conn = self._conn
        self._begin_write(upgrade=False)
        try:
            self._raise_damage(self._damage(self._load_snapshot(), checksums=False))
            removed = 0
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start : start + 500]]
                cur = conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            self._rollback_quietly()
            raise
        return removed

    @_guarded
    def compact(self) -> dict:
        """Rewrite the live codes into new segments and switch to them atomically, reclaiming removed
        rows and the tails of killed adds. Crash-safe (see the module docstring). Refuses a damaged
        collection (run :meth:`repair`). Returns counts before and after."""
        return self._rewrite(repair=False)

    @_guarded
    def repair(self) -> dict:
        """Drop every batch whose bytes are missing, short or changed (runs of at most 65,536 rows
        written by one ``add`` or ``compact``), with the items that point at them or at
        nothing, then rewrite the rest as :meth:`compact` does. A sound collection is left as it is.
        A damaged SQLite database cannot be repaired (an error). Returns ``{"dropped", "live",
        "damage", ...}``."""
        return self._rewrite(repair=True)

    def _rewrite(self, repair: bool) -> dict:
        conn = self._conn
        if repair:
            quick = self._sqlite_problems()
            if quick:
                raise DamagedCollectionError(
                    f"{self.path / DB_NAME}: the SQLite database itself is damaged ({quick[0]}); repair cannot"
                    " rebuild it: restore it from a copy or rebuild the collection"
                )
        self._begin_write(upgrade=False)
        try:
            snap = self._load_snapshot()
            views: dict[int, np.ndarray] = {}
            damage = self._damage(snap, checksums=True, views=views)
            dangling = self._dangling_items()
            if (damage or dangling) and not repair:
                self._raise_damage(damage)
                raise DamagedCollectionError(
                    f"{self.path}: damaged collection: {dangling} items point at rows no segment holds;"
                    " `hashlearn index repair` drops them"
                )
            items = np.array(conn.execute("SELECT id, seg, row FROM items ORDER BY id").fetchall(), dtype=np.int64)
            items = items.reshape(-1, 3)
            report = {
                "path": str(self.path),
                "segments_before": len(snap.segments),
                "rows_before": sum(r for _, _, r in snap.segments),
                "segment_bytes_before": _files_size(self.path, _SEG_FILE),
                "damage": [d.describe() for d in damage],
                "dropped": 0,
            }
            if repair:
                bad = np.zeros(len(items), dtype=bool)
                rows_of = {seg: rows for seg, _, rows in snap.segments}
                seg_rows = np.array([rows_of.get(int(s), -1) for s in items[:, 1]], dtype=np.int64)
                bad |= (items[:, 2] < 0) | (items[:, 2] >= seg_rows)
                for d in damage:
                    bad |= (items[:, 1] == d.seg) & (items[:, 2] >= d.start) & (items[:, 2] < d.start + d.rows)
                for seg, _, rows in snap.segments:
                    if rows and seg not in views:  # unreadable segment (missing, short, odd name)
                        bad |= items[:, 1] == seg
                if not bad.any() and not damage:
                    conn.execute("ROLLBACK")
                    report.update(live=len(items), segments_after=len(snap.segments), rewritten=False)
                    return report
                drop = items[bad, 0]
                for start in range(0, len(drop), 500):
                    chunk = [int(i) for i in drop[start : start + 500]]
                    conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                report["dropped"] = int(bad.sum())
                items = items[~bad]
            self._remove_stray_files(snap)
            first = (
                self._next_seg() if snap.batches is not None else max((s for s, _, _ in snap.segments), default=-1) + 1
            )
            new_segments, new_batches = self._write_segments(items, views, first)
            if snap.batches is None:  # format 1: the switch upgrades it
                conn.execute(_BATCHES_DDL)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
                self.version = FORMAT_VERSION
            conn.execute("DELETE FROM segments")
            conn.execute("DELETE FROM batches")
            conn.executemany("INSERT INTO segments (seg, file, rows) VALUES (?, ?, ?)", new_segments)
            conn.executemany("INSERT INTO batches VALUES (?, ?, ?, ?)", new_batches)
            cap = max(1, SEGMENT_MAX_BYTES // self.nbytes)
            conn.execute(
                "UPDATE items SET seg = ? + r.rank / ?, row = r.rank % ? FROM"
                " (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS rank FROM items) AS r WHERE items.id = r.id",
                (first, cap, cap),
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_seg', ?)", (str(first + len(new_segments)),))
            conn.execute("COMMIT")
        except BaseException:
            self._rollback_quietly()
            raise
        views.clear()
        for _, file, _ in snap.segments:  # retired: no committed state refers to them any more
            if _SEG_FILE.fullmatch(file):
                (self.path / file).unlink(missing_ok=True)
        _fsync_dir(self.path)
        try:  # shrink the log now if no reader is busy; never wait for one
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
        report.update(
            live=len(items),
            segments_after=len(new_segments),
            segment_bytes_after=_files_size(self.path, _SEG_FILE),
            rewritten=True,
        )
        return report

    def _write_segments(self, items: np.ndarray, views: dict, first: int) -> tuple[list, list]:
        """Write the codes of ``items`` (id, seg, row), in order, into new segment files numbered from
        ``first``; ``fsync`` them. Returns the rows for the ``segments`` and ``batches`` tables."""
        cap = max(1, SEGMENT_MAX_BYTES // self.nbytes)
        new_segments, new_batches = [], []
        for j, begin in enumerate(range(0, len(items), cap)):
            seg = first + j
            file = f"seg-{seg:06d}.codes"
            part = items[begin : begin + cap]
            with open(self.path / file, "wb") as f:
                for b0 in range(0, len(part), CHECKSUM_ROWS):
                    chunk = part[b0 : b0 + CHECKSUM_ROWS]
                    codes = np.empty((len(chunk), self.nbytes), dtype=np.uint8)
                    for s in np.unique(chunk[:, 1]):
                        sel = chunk[:, 1] == s
                        codes[sel] = views[int(s)].reshape(-1, self.nbytes)[chunk[sel, 2]]
                    data = codes.tobytes()
                    f.write(data)
                    new_batches.append((seg, b0, len(chunk), _sha256(data)))
                f.flush()
                os.fsync(f.fileno())
            new_segments.append((seg, file, len(part)))
        _fsync_dir(self.path)
        return new_segments, new_batches

    # -- reading ------------------------------------------------------------------------------
    @_guarded
    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    @_guarded
    def data_version(self) -> int:
        """A number that changes when *another* connection (process) commits a change (SQLite's
        ``PRAGMA data_version``; this object's own writes leave it as it is): how a long-lived reader
        such as ``hashlearn serve`` learns, in microseconds, that its in-memory copy is stale."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    @_guarded
    def read(self, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(packed codes, ids)`` of every live code, in increasing id order.

        With ``verify`` (the default) every batch of every segment is checked against its sha256
        first; damage of any kind is a :class:`DamagedCollectionError`, never wrong codes."""

        def compute(snap):
            views: dict[int, np.ndarray] = {}
            damage = self._damage(snap, checksums=verify, views=views)
            rows = np.array(self._conn.execute("SELECT id, seg, row FROM items ORDER BY id").fetchall(), dtype=np.int64)
            return damage, rows.reshape(-1, 3), views, snap

        damage, rows, views, snap = self._consistent(compute)
        self._raise_damage(damage)
        packed = np.zeros((len(rows), self.nbytes), dtype=np.uint8)
        if len(rows) == 0:
            return packed, np.zeros(0, dtype=np.int64)
        rows_of = {seg: n for seg, _, n in snap.segments}
        done = np.zeros(len(rows), dtype=bool)
        for seg, view in views.items():
            sel = rows[:, 1] == seg
            if sel.any():
                r = rows[sel, 2]
                if r.min() < 0 or r.max() >= rows_of[seg]:
                    break
                packed[sel] = view.reshape(-1, self.nbytes)[r]
                done |= sel
        views.clear()
        if not done.all():
            raise DamagedCollectionError(
                f"{self.path}: damaged collection: {int((~done).sum())} items point at rows no segment holds;"
                " `hashlearn index repair` drops them"
            )
        return packed, rows[:, 0].copy()

    @_guarded
    def metadata(self, ids) -> dict[int, dict]:
        """``{id: {"path", "label", "added"}}`` for the given ids that exist."""
        out = {}
        ids = [int(i) for i in np.asarray(ids).ravel() if 0 <= int(i) < 2**63]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id, path, label, added FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            for i, path, label, added in self._conn.execute(q, chunk):
                out[i] = {"path": path, "label": label, "added": added}
        return out

    @property
    @_guarded
    def root(self) -> str | None:
        """The absolute folder that relative item paths are relative to (recorded by :meth:`build`),
        or ``None`` when none was recorded."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'root'").fetchone()
        return row[0] if row else None

    def resolve_path(self, path: str | None) -> str | None:
        """An item's stored ``path`` as it opens from anywhere: absolute paths as they are, relative
        ones joined to :attr:`root` (left relative to the current folder when no root is recorded)."""
        if path is None or os.path.isabs(path):
            return path
        root = self.root
        return os.path.normpath(os.path.join(root, path)) if root else path

    def to_index(self, method: str = "auto", **kwargs):
        """A :class:`HammingIndex` over the live codes (checksums verified, see :meth:`read`)."""
        from hashlearn.index.hamming import HammingIndex

        packed, ids = self.read()
        index = HammingIndex(self.bits, method=method, **kwargs)
        index.add(packed, ids)
        return index

    @_guarded
    def info(self, checksums: bool = True) -> dict:
        """Counts and sizes, and ``damage``: what checking every segment's length and (with
        ``checksums``, the default; as fast as reading the codes) every batch's sha256 finds.
        :meth:`verify` also checks the SQLite database and the items."""

        def compute(snap):
            return self._damage(snap, checksums=checksums), snap, len(self)

        damage, snap, n = self._consistent(compute)
        written = sum(r for _, _, r in snap.segments)
        return {
            "path": str(self.path),
            "format_version": self.version,
            "bits": self.bits,
            "count": n,
            "root": self.root,
            "segments": len(snap.segments),
            "rows_written": written,
            "removed_rows": written - n,
            "bytes_on_disk": _files_size(self.path),
            "checked": ("lengths, checksums" if snap.batches is not None else "lengths (format 1: no checksums)")
            if checksums
            else "lengths",
            "damage": [d.describe() for d in damage],
        }


_BATCHES_DDL = (
    "CREATE TABLE batches (seg INTEGER NOT NULL, start INTEGER NOT NULL, rows INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL, PRIMARY KEY (seg, start)) WITHOUT ROWID"
)


@contextlib.contextmanager
def _sqlite_errors(path, timeout=None):
    """``with _sqlite_errors(path):`` turns an ``sqlite3.DatabaseError`` into a one-line error."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise _db_error(Path(path), exc, timeout) from None


def _files_size(path: Path, pattern: re.Pattern | None = None) -> int:
    total = 0
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) and (pattern is None or pattern.fullmatch(entry.name)):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def _out_target(path) -> Path:
    """The folder a build will create (symlinks resolved), after refusing what it must not replace."""
    target = Path(os.path.realpath(path))
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise InputError(f"{path}: exists and is not a folder")
        if (target / DB_NAME).exists():
            raise InputError(
                f"{path}: a collection already exists there (add codes with `hashlearn index add`, or choose another"
                " folder)"
            )
        if any(target.iterdir()):
            raise InputError(f"{path}: folder exists and is not empty; build the collection into a new or empty folder")
        cwd = Path.cwd().resolve()
        if target == cwd or target in cwd.parents:
            raise InputError(f"{path}: is the current folder; build into a new folder (e.g. {path}/collection)")
    if target.parent == target:
        raise InputError(f"{path}: cannot build a collection at the root of the file system")
    return target


def _abs_root(root) -> str | None:
    """``root`` as an absolute, normalised folder name (symlinks kept), or ``None``."""
    if root is None:
        return None
    return os.path.normpath(os.path.abspath(os.fspath(root)))


def _makedirs(folder: Path) -> list[Path]:
    """``mkdir -p``; returns the folders it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    try:
        for f in reversed(missing):
            try:
                f.mkdir()
            except FileExistsError:
                continue
            made.append(f)
    except OSError:
        for f in reversed(made):
            f.rmdir()
        raise
    return made


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Delete the temporary folders of builds of ``name`` that died (kill -9, power loss): named
    ``.NAME.building-PID``, PID not running (or our own, from an earlier process with our pid),
    holding the marker with that PID and nothing but collection files. Anything else is left alone."""
    pattern = re.compile(rf"\.{re.escape(name)}\.building-(\d+)")
    for entry in os.scandir(parent):
        m = pattern.fullmatch(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # a build in progress
        folder = Path(entry.path)
        names = [e.name for e in os.scandir(folder)]
        if not names:
            folder.rmdir()  # killed before it wrote its marker: an empty folder of that name
            continue
        try:
            marker = (folder / BUILD_MARKER).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if names == [BUILD_MARKER] and f"{pid}\n".startswith(marker):
            _delete_build_folder(folder)  # killed while writing its marker, before anything else
            continue
        if marker != f"{pid}\n":
            continue
        if all(_BUILD_FILES.fullmatch(n) and (folder / n).is_file() and not (folder / n).is_symlink() for n in names):
            _delete_build_folder(folder)


def _delete_build_folder(folder: Path) -> None:
    """Delete a temporary build folder, its marker last: a kill part-way leaves a folder that is still
    provably a build's (the marker and fewer files, or nothing), which the next build removes."""
    for entry in os.scandir(folder):
        if entry.name != BUILD_MARKER:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    (folder / BUILD_MARKER).unlink(missing_ok=True)
    folder.rmdir()
