"""Near-duplicate groups in a folder of images: encode every image, then exact Hamming range search.

:func:`find_duplicates` is ``hashlearn duplicates`` as a function:

1. list the image files of the folder (extensions of :data:`hashlearn.data.images.IMAGE_EXTENSIONS`,
   hidden files and folders skipped; subfolders only with ``recursive``);
2. encode them with a hasher (the shipped model ``default``, another shipped model, or a run folder)
   through :func:`hashlearn.train.encode_files` — the one decoder (:func:`hashlearn.data.read_image`:
   EXIF orientation, the pixel limit ``$HASHLEARN_MAX_IMAGE_PIXELS``); an unreadable file is skipped
   and reported with its reason, never fatal. Codes are cached per model (:class:`CodeCache`, under
   ``$HASHLEARN_CACHE/duplicates``), so a second run encodes only new or changed files;
3. one :meth:`hashlearn.index.HammingIndex.range_search` of every code against all codes within the
   radius, and the connected components of that graph (single linkage: two images share a group when
   a chain of images, each within the radius of the next, joins them). Components of two or more
   images are the groups.

Nothing is written into the folder, and no file is moved, changed or deleted: the only files written
are the cache and the reports the user names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashlearn.errors import InputError, NotFoundError

#: the cache file format (``CodeCache``)
CACHE_FORMAT = "hashlearn-duplicate-codes/1"


@dataclass
class Group:
    """One group of near-duplicates: ``members`` index :attr:`DuplicateReport.files`; ``distances`` are
    each member's Hamming distance to the first member (0 for itself)."""

    members: list[int]
    distances: list[int]

    @property
    def max_distance(self) -> int:
        return max(self.distances)


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found. ``files`` are the encoded images (paths relative to
    ``folder``), ``skipped`` the unreadable ones as ``(relative path, reason)``."""

    folder: Path
    model: str
    method: str
    bits: int
    fingerprint: str
    threshold: int
    files: list[str]
    skipped: list[tuple[str, str]]
    groups: list[Group]
    encoded: int = 0
    cached: int = 0
    subfolders_not_searched: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``--json`` document (see ``hashlearn duplicates --help``)."""
        return {
            "folder": str(self.folder),
            "model": self.model,
            "method": self.method,
            "bits": self.bits,
            "model_fingerprint": self.fingerprint,
            "threshold": self.threshold,
            "images": len(self.files),
            "encoded": self.encoded,
            "cached": self.cached,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "subfolders_not_searched": self.subfolders_not_searched,
            "groups": [
                {"size": len(g.members), "max_distance": g.max_distance,
                 "files": [{"path": self.files[m], "distance": d} for m, d in zip(g.members, g.distances, strict=True)]}
                for g in self.groups
            ],
        }


# -- listing ----------------------------------------------------------------------------------------------------

def list_images(folder: Path, recursive: bool = False) -> tuple[list[str], int]:
    """``(relative POSIX paths of the image files, sorted; subfolders holding files that were not searched)``.

    Hidden files and folders (``.name``) are skipped, as the dataset loaders do."""
    from hashlearn.data.images import is_image_name

    paths: list[str] = []
    unsearched = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        if not recursive and rel_dir != ".":
            unsearched += 1
            dirnames[:] = []
            continue
        for name in filenames:
            if not name.startswith(".") and is_image_name(name):
                paths.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(paths), unsearched


# -- the code cache ---------------------------------------------------------------------------------------------

class CodeCache:
    """Codes of image files already encoded by one model, keyed by (absolute path, size, mtime in ns).

    One ``.npz`` per model fingerprint under ``$HASHLEARN_CACHE/duplicates`` (arrays only, read with
    ``allow_pickle=False``, written atomically). A file whose size or modification time changed is
    encoded again. A damaged cache file is ignored and rewritten (it only saves time)."""

    def __init__(self, fingerprint: str, bits: int, root: Path | None = None):
        from hashlearn.data.sources import cache_root

        self.bits = bits
        self.path = (root or cache_root() / "duplicates") / f"{fingerprint[:32]}-{bits}bits.npz"
        self.entries: dict[str, tuple[int, int, np.ndarray]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as f:
                if str(f["format"]) != CACHE_FORMAT or int(f["bits"]) != self.bits:
                    return
                paths, sizes, mtimes, packed = f["paths"], f["sizes"], f["mtimes"], f["packed"]
        except Exception:  # noqa: BLE001 - a damaged cache costs only re-encoding
            return
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape != (len(paths), (self.bits + 7) // 8):
            return
        if not (len(paths) == len(sizes) == len(mtimes)):
            return
        self.entries = {str(p): (int(s), int(m), c) for p, s, m, c in zip(paths, sizes, mtimes, packed, strict=True)}

    @staticmethod
    def stamp(path: Path) -> tuple[str, int, int]:
        st = path.stat()
        return str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)

    def get(self, key: tuple[str, int, int]) -> np.ndarray | None:
        hit = self.entries.get(key[0])
        return hit[2] if hit is not None and hit[:2] == key[1:] else None

    def put(self, key: tuple[str, int, int], code: np.ndarray) -> None:
        self.entries[key[0]] = (key[1], key[2], np.asarray(code, dtype=np.uint8))

    def save(self) -> None:
        from hashlearn._atomic import atomic_target

        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.entries)
        nbytes = (self.bits + 7) // 8
        packed = (np.stack([self.entries[k][2] for k in keys]) if keys else np.zeros((0, nbytes), np.uint8))
        with atomic_target(self.path) as tmp:
            np.savez(tmp, format=np.array(CACHE_FORMAT), bits=np.int64(self.bits), paths=np.array(keys, dtype=str),
                     sizes=np.array([self.entries[k][0] for k in keys], dtype=np.int64),
                     mtimes=np.array([self.entries[k][1] for k in keys], dtype=np.int64), packed=packed)


# -- encoding and grouping --------------------------------------------------------------------------------------

def encode_folder(hasher, folder: Path, relpaths: list[str], *, cache: bool = True, progress: bool = False,
                  batch_size: int = 32):
    """``(packed codes, kept relative paths, skipped [(relative path, reason)], encoded, cached)``."""
    from hashlearn.train.encode import encode_files
    from hashlearn.train.progress import progress_bar

    nbytes = (hasher.bits + 7) // 8
    store = CodeCache(hasher.fingerprint or "unsaved", hasher.bits) if cache and hasher.fingerprint else None
    codes: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    todo: list[tuple[str, tuple]] = []
    for rel in relpaths:
        try:
            key = CodeCache.stamp(folder / rel)
        except OSError as exc:
            skipped.append((rel, f"cannot read: {exc.strerror or exc}"))
            continue
        hit = store.get(key) if store else None
        if hit is not None:
            codes[rel] = hit
        else:
            todo.append((rel, key))
    cached = len(codes)
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in progress_bar(batches, progress, "encoding", unit="batch"):
        by_path = {str(folder / rel): (rel, key) for rel, key in batch}
        packed, kept, bad = encode_files(hasher, list(by_path), skip_bad=True, batch_size=batch_size)
        for path, code in zip(kept, packed, strict=True):
            rel, key = by_path[str(path)]
            codes[rel] = code
            if store:
                store.put(key, code)
        for path, reason in bad:
            skipped.append((by_path[str(path)][0], _short_reason(reason, str(path))))
    if store and len(codes) > cached:
        try:
            store.save()
        except OSError:
            pass  # a read-only cache place only costs time on the next run
    kept_rel = [rel for rel in relpaths if rel in codes]
    packed = np.stack([codes[rel] for rel in kept_rel]) if kept_rel else np.zeros((0, nbytes), np.uint8)
    skipped.sort()
    return packed, kept_rel, skipped, len(codes) - cached, cached


def _short_reason(reason: str, path: str) -> str:
    """The decoder's message without the path it starts with (the report names the file already)."""
    for prefix in (f"cannot read image {path}: ", f"image {path} "):
        if reason.startswith(prefix):
            return reason[len(prefix):]
    return reason


def group_codes(packed: np.ndarray, bits: int, radius: int, method: str = "auto") -> list[list[int]]:
    """Connected components (two or more rows) of the graph linking codes within Hamming ``radius``:
    one exact :meth:`HammingIndex.range_search` of every code against all. Each group is sorted, and the
    groups by their first member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from hashlearn.index import HammingIndex

    n = len(packed)
    if n < 2:
        return []
    index = HammingIndex(bits, method=method)
    index.add(packed)  # ids 0..n-1: row numbers
    lims, _, ids = index.range_search(packed, radius)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims))
    graph = coo_matrix((np.ones(len(ids), dtype=np.int8), (rows, ids)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    order = np.argsort(labels, kind="stable")
    groups: list[list[int]] = []
    start = 0
    for label in range(len(sizes)):
        members = order[start:start + sizes[label]]
        start += sizes[label]
        if len(members) > 1:
            groups.append(sorted(int(m) for m in members))
    groups.sort(key=lambda g: g[0])
    return groups


def _distances_to_first(packed: np.ndarray, members: list[int]) -> list[int]:
    from hashlearn.codes import hamming_distances

    return [int(d) for d in hamming_distances(packed[members[:1]], packed[members])[0]]


# -- the whole job ----------------------------------------------------------------------------------------------

def check_threshold(threshold, bits: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise InputError(f"--threshold must be a whole number of bits, got {threshold!r}")
    if not 0 <= threshold <= bits:
        raise InputError(f"--threshold {threshold} is outside 0..{bits} (the model's code length)")
    return int(threshold)


def default_threshold(hasher) -> int:
    """The model's own ``duplicate_radius`` (its ``run.json``), else an eighth of its bits."""
    value = hasher.info.get("duplicate_radius")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= hasher.bits:
        return value
    return max(1, hasher.bits // 8)


def check_folder(folder) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise NotFoundError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (give the folder that holds the images)")
    return folder


def load_hasher(model: str | None = None, run: str | None = None):
    """``(hasher, its name)``: the run folder ``run``, else the shipped model ``model`` (default: ``default``)."""
    if run is not None:
        from hashlearn.train import load_run

        return load_run(run), str(run)
    from hashlearn.models import DEFAULT_MODEL, load_model

    name = model or DEFAULT_MODEL
    return load_model(name), name


def find_duplicates(folder, *, threshold: int | None = None, model: str | None = None, run: str | None = None,
                    recursive: bool = False, cache: bool = True, progress: bool = False,
                    hasher=None) -> DuplicateReport:
    """Groups of near-duplicate images in ``folder`` (see the module docstring). ``hasher`` (a loaded
    :class:`hashlearn.train.Hasher`) replaces ``model``/``run``."""
    folder = check_folder(folder)
    relpaths, unsearched = list_images(folder, recursive)
    if not relpaths:
        more = f" ({unsearched} subfolders not searched: add --recursive)" if unsearched else ""
        raise InputError(f"{folder}: no image files{more}")
    name = "(given hasher)"
    if hasher is None:
        hasher, name = load_hasher(model, run)
    radius = default_threshold(hasher) if threshold is None else check_threshold(threshold, hasher.bits)
    packed, kept, skipped, encoded, cached = encode_folder(hasher, folder, relpaths, cache=cache, progress=progress)
    if not kept:
        raise InputError(f"{folder}: none of its {len(relpaths)} image files could be read "
                         f"(first: {skipped[0][0]}: {skipped[0][1]})")
    groups = [Group(g, _distances_to_first(packed, g)) for g in group_codes(packed, hasher.bits, radius)]
    return DuplicateReport(folder=folder, model=name, method=hasher.method, bits=hasher.bits,
                           fingerprint=hasher.fingerprint or "", threshold=radius, files=kept, skipped=skipped,
                           groups=groups, encoded=encoded, cached=cached, subfolders_not_searched=unsearched)
