"""What the HTTP API serves: one trained run, one collection, one in-memory index.

:class:`Service` loads the run once (:func:`hashlearn.train.load_run`), opens the collection
(:class:`hashlearn.index.Collection`, the crash-safe store) and keeps a :class:`HammingIndex`
(``auto``) of its codes. Two :class:`~hashlearn.serve.workers.BatchWorker` threads own them:

* ``encode`` — the model: images decoded by the one decoder
  (:func:`hashlearn.data.images.decode_image`, its pixel limit, the run's image size and channels)
  are encoded in micro-batches;
* ``store`` — the collection and the index: searches with the same ``k`` run as one batch; item
  look-ups, adds and removals run alone, in order.

Consistency: ``add`` and ``remove`` go to the collection first (durable on return, atomic) and
then to the index, on the same thread, so a search never sees an item the collection has not
committed. Writes by other processes (another worker of ``--workers N``, ``hashlearn index add``)
are noticed before each search by the collection's :meth:`~Collection.data_version`, which makes
the index reload from the collection.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.serve.metrics import Metrics
from hashlearn.serve.workers import BatchWorker

TOKEN_ENV = "HASHLEARN_TOKEN"
MIB = 1024 * 1024
PARALLEL_CODES = 1 << 20  # searches comparing fewer codes x queries run on one numba thread (~1 ms of scan)


@dataclass
class ServeSettings:
    """Settings of ``hashlearn serve`` (each one is a command-line option of the same name)."""

    run: str
    collection: str
    uploads: str | None = None  # where POST /items keeps uploaded images; default COLLECTION/uploads
    token: str | None = None  # None: read $HASHLEARN_TOKEN; "" or unset: read-only
    max_upload_bytes: int = 16 * MIB  # one request's body
    max_pixels: int | None = None  # per image; None: the decoder's limit ($HASHLEARN_MAX_IMAGE_PIXELS, 100 M)
    max_k: int = 1000
    max_files: int = 32  # images (or codes) per request
    max_batch: int = 32  # jobs per micro-batch
    batch_wait_ms: float = 3.0  # how long a forming batch waits for announced requests
    threads: int | None = None  # torch threads; None: leave torch's default
    thumbnail_px: int = 128
    extra: dict = field(default_factory=dict)

    def resolved_token(self) -> str | None:
        token = os.environ.get(TOKEN_ENV) if self.token is None else self.token
        return token or None

    def check(self) -> None:
        for name in ("max_upload_bytes", "max_k", "max_files", "max_batch", "thumbnail_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name.replace('_', '-')}: must be a positive whole number, got {value!r}")
        if not 0 <= float(self.batch_wait_ms) <= 1000:
            raise InputError(f"batch-wait-ms: must be between 0 and 1000, got {self.batch_wait_ms!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads: must be a positive whole number, got {self.threads!r}")
        from hashlearn.data.images import max_image_pixels

        max_image_pixels(self.max_pixels)


def code_hex(row: np.ndarray) -> str:
    return bytes(np.asarray(row, dtype=np.uint8)).hex()


def parse_code(text: str, bits: int, where: str) -> np.ndarray:
    """A packed code from its hex string (``ceil(bits/8)`` bytes, most significant bit first)."""
    nbytes = (bits + 7) // 8
    if not isinstance(text, str) or len(text) != 2 * nbytes:
        got = len(text) if isinstance(text, str) else type(text).__name__
        raise InputError(f"{where}: expected {2 * nbytes} hex digits ({bits} bits, packed), got {got}")
    try:
        row = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    except ValueError:
        raise InputError(f"{where}: not a hex string ({text[:20]!r})") from None
    pad = nbytes * 8 - bits
    if pad and int(row[-1]) & ((1 << pad) - 1):
        raise InputError(f"{where}: the last {pad} bits are padding past {bits} bits and must be 0")
    return row


def _extension(data: bytes) -> str:
    """A file extension for uploaded image bytes, from their magic number."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return ".webp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    return ".img"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Service:
    """The run, the collection, the index and their worker threads (see the module docstring)."""

    def __init__(self, settings: ServeSettings):
        from hashlearn.train import load_run

        settings.check()
        self.settings = settings
        self.token = settings.resolved_token()
        self.metrics = Metrics()
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        self.hasher = load_run(settings.run)
        self.run_metrics = self._read_run_metrics()
        self.uploads = Path(settings.uploads) if settings.uploads else Path(settings.collection) / "uploads"
        self._thumbs: collections.OrderedDict = collections.OrderedDict()
        self._thumbs_lock = threading.Lock()
        wait = settings.batch_wait_ms / 1000
        self.encoder = BatchWorker("encode", settings.max_batch, wait,
                                   on_batch=lambda n: self.metrics.observe_batch("encode", n))
        self.store = BatchWorker("search", settings.max_batch, wait,
                                 on_batch=lambda n: self.metrics.observe_batch("search", n))
        self.coll = None
        self.index = None
        self._version = None
        self.items = 0
        try:
            self.store.call(self._open).result()
            self._warm_up()
        except BaseException:
            self.close()
            raise

    def _warm_up(self) -> None:
        """Encode one blank image and run one search now, so that the first request does not pay for
        loading compiled kernels (numba, torch) — seconds on a busy machine."""
        size, channels = self.hasher.image_size, self.hasher.channels
        code = self.encode(np.zeros((size, size, channels), np.uint8)).result()
        if self.items:
            self.search(code, 1, None).result()

    # -- lifetime -----------------------------------------------------------------------------
    def _read_run_metrics(self) -> dict:
        import json

        if Path(self.hasher.run_dir).is_file():  # a model file from hashlearn export carries its metrics
            from hashlearn.train.export import model_file_metrics

            return model_file_metrics(self.hasher.run_dir)
        path = Path(self.hasher.run_dir) / "metrics.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def _open(self) -> None:
        from hashlearn.index.collection import Collection

        # without a token nothing is ever written: SQLite read-only (mode=ro), so a read-only service can
        # also serve a collection on a read-only folder
        self.coll = Collection.open(self.settings.collection, readonly=True if self.read_only else None)
        if self.coll.bits != self.hasher.bits:
            raise InputError(
                f"collection {self.settings.collection} holds {self.coll.bits}-bit codes, but the run "
                f"{self.settings.run} makes {self.hasher.bits}-bit codes"
            )
        self._reload()

    def _reload(self) -> None:
        from hashlearn.index.hamming import HammingIndex

        self._version = self.coll.data_version()
        packed, ids = self.coll.read()
        index = HammingIndex(self.coll.bits, method="auto")
        index.add(packed, ids)
        self.index = index
        self.items = len(index)

    def _sync(self) -> None:
        """Reload the index when another process changed the collection since we last looked."""
        if self.coll.data_version() != self._version:
            self._reload()

    def close(self) -> None:
        """Close the collection (on the thread that opened it: SQLite connections belong to one thread)
        and stop the workers. Safe to call twice."""
        if self.coll is not None:
            coll, self.coll = self.coll, None
            try:
                self.store.call(coll.close).result(10)
            except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                pass
        for worker in (self.encoder, self.store):
            worker.stop()

    @property
    def read_only(self) -> bool:
        return self.token is None

    @property
    def bits(self) -> int:
        return self.hasher.bits

    # -- images -------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str) -> np.ndarray:
        """An uploaded image as the run's encoder takes it (the one decoder, the run's size and
        channels); :class:`InputError` for anything that is not a readable image within the limits."""
        from hashlearn.data.images import decode_image

        if not data:
            raise InputError(f"image {name} is empty (0 bytes)")
        mode = "L" if self.hasher.channels == 1 else "RGB"
        return decode_image(data, name=name, size=self.hasher.image_size, mode=mode,
                            max_pixels=self.settings.max_pixels)

    def _encode_batch(self, key, images: list) -> list:
        packed = self.hasher.encode(np.stack(images))
        return list(packed)

    def encode(self, image: np.ndarray):
        """A future of the packed code of one decoded image (encoded with whatever else is waiting)."""
        return self.encoder.batch(self._encode_batch, "encode", image)

    def thumbnail(self, item_id: int) -> bytes:
        """PNG bytes of item ``item_id``'s image, at most ``thumbnail_px`` on a side (cached)."""
        from PIL import Image

        from hashlearn.data.images import decode_image, is_grey_image

        path = self.store.call(self._item_path, item_id).result()
        key = (item_id, path)
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise NotFoundError(f"item {item_id}: its image is not readable on the server ({exc.strerror})") from None
        try:
            mode = "L" if is_grey_image(data) else "RGB"
            array = decode_image(data, name=f"of item {item_id}", mode=mode, max_pixels=self.settings.max_pixels)
        except InputError as exc:
            raise NotFoundError(f"item {item_id}: no thumbnail ({exc})") from None
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        image.thumbnail((self.settings.thumbnail_px, self.settings.thumbnail_px))
        out = io.BytesIO()
        image.save(out, format="PNG")
        png = out.getvalue()
        with self._thumbs_lock:
            self._thumbs[key] = png
            while len(self._thumbs) > 1024:
                self._thumbs.popitem(last=False)
        return png

    def save_upload(self, data: bytes) -> str:
        """Keep uploaded image bytes under the uploads folder (content-addressed, written to a temporary
        name, ``fsync``\\ ed and renamed), so the item's thumbnail survives the server; returns the path."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        target = self.uploads / (hashlib.sha256(data).hexdigest()[:32] + _extension(data))
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(self.uploads)
        return str(target.resolve())

    # -- on the store thread ------------------------------------------------------------------
    def _item_path(self, item_id: int) -> str:
        meta = self.coll.metadata([item_id]).get(item_id)
        if meta is None:
            raise NotFoundError(f"no item with id {item_id} in the collection")
        if not meta["path"]:
            raise NotFoundError(f"item {item_id} has no image path")
        return self.coll.resolve_path(meta["path"])

    def _describe(self, ids, meta: dict) -> list[dict]:
        codes = self.index.codes_of(ids)
        out = []
        for i, code in zip(ids, codes, strict=True):
            m = meta[int(i)]
            out.append({
                "id": int(i),
                "label": m["label"],
                "path": m["path"],
                "added": m["added"],
                "code": code_hex(code),
                "thumbnail_url": f"/items/{int(i)}/thumbnail",
            })
        return out

    def _item(self, item_id: int) -> dict:
        self._sync()
        meta = self.coll.metadata([item_id])
        if item_id not in meta:
            raise NotFoundError(f"no item with id {item_id} in the collection")
        return self._describe([item_id], meta)[0]

    def item(self, item_id: int):
        return self.store.call(self._item, item_id)

    def _page(self, offset: int, limit: int) -> dict:
        self._sync()
        ids = self.index.ids[offset:offset + limit]
        meta = self.coll.metadata(ids)
        ids = [int(i) for i in ids if int(i) in meta]
        return {"total": len(self.index), "offset": offset, "limit": limit, "items": self._describe(ids, meta)}

    def page(self, offset: int, limit: int):
        return self.store.call(self._page, offset, limit)

    def _search_batch(self, key, queries: list) -> list:
        """``queries``: ``[(packed code, radius or None)]``, all with the same ``k = key``."""
        import numba

        k = key
        self._sync()
        # a parallel region costs a wake-up of every numba thread (on a busy machine, a time slice each):
        # for a small collection one thread answers sooner; numba's thread count is per calling thread
        numba.set_num_threads(1 if len(self.index) * len(queries) < PARALLEL_CODES else numba.config.NUMBA_NUM_THREADS)
        packed = np.stack([q for q, _ in queries])
        dist, ids, info = self.index.search_ties(packed, k)
        method = self.index.last_method
        keep = []
        for row, (_, radius) in enumerate(queries):
            ok = ids[row] >= 0
            if radius is not None:
                ok &= dist[row] <= radius
            keep.append(ok)
        shown = np.unique(np.concatenate([ids[r][keep[r]] for r in range(len(queries))]))
        meta = self.coll.metadata(shown)
        out = []
        for row, (code, radius) in enumerate(queries):
            d, i = dist[row][keep[row]], ids[row][keep[row]]
            results = []
            for dd, ii in zip(d, i, strict=True):
                m = meta.get(int(ii), {"label": None, "path": None})
                results.append({
                    "id": int(ii),
                    "distance": int(dd),
                    "label": m["label"],
                    "path": m["path"],
                    "thumbnail_url": f"/items/{int(ii)}/thumbnail",
                })
            if len(i) == 0:
                kth, tied_at, tied_in = -1, 0, 0
            elif len(i) == int((ids[row] >= 0).sum()):
                kth = int(info["kth_distance"][row])
                tied_at, tied_in = int(info["tied_at_kth"][row]), int(info["tied_in_results"][row])
            else:
                # cut by the radius below the k-th distance: every code closer than that distance is
                # among the k results, so the group at the last shown distance is shown whole
                kth = int(d[-1])
                tied_at = tied_in = int((d == kth).sum())
            out.append({
                "k": k,
                "radius": radius,
                "code": code_hex(code),
                "results": results,
                "kth_distance": kth,
                "tied_at_kth": tied_at,
                "tied_in_results": tied_in,
                "collection_size": len(self.index),
                "index_method": method,
            })
        return out

    def search(self, code: np.ndarray, k: int, radius: int | None):
        """A future of one query's answer (run with the other waiting queries of the same ``k``)."""
        return self.store.batch(self._search_batch, int(k), (np.asarray(code, dtype=np.uint8), radius))

    def _add(self, packed: np.ndarray, paths: list, labels: list | None) -> list[dict]:
        self._sync()
        ids = self.coll.add(packed, paths=paths, labels=labels)  # durable and atomic on return
        if self.coll.data_version() != self._version:  # another process committed too: read it all
            self._reload()
        else:  # our own commit leaves data_version as it was
            self.index.add(packed, ids)
        self.items = len(self.index)
        return self._describe([int(i) for i in ids], self.coll.metadata(ids))

    def add(self, packed: np.ndarray, paths: list, labels: list | None):
        return self.store.call(self._add, packed, paths, labels)

    def _remove(self, item_id: int) -> int:
        self._sync()
        if not self.coll.remove([item_id]):
            raise NotFoundError(f"no item with id {item_id} in the collection")
        if self.coll.data_version() != self._version:
            self._reload()
        else:
            self.index.remove([item_id])
        self.items = len(self.index)
        with self._thumbs_lock:
            for key in [key for key in self._thumbs if key[0] == item_id]:
                del self._thumbs[key]
        return self.items

    def remove(self, item_id: int):
        return self.store.call(self._remove, item_id)

    def _count(self) -> int:
        self._sync()
        return len(self.index)

    def count(self):
        return self.store.call(self._count)

    # -- descriptions -------------------------------------------------------------------------
    def stats(self, items: int) -> dict:
        m = self.run_metrics
        figures = {key: m[key] for key in ("mAP@all", "mAP@1000", "P@r2", "R@r2", "F1@r2", "P@10", "P@100",
                                           "P@1000", "chance_mAP@all", "val_mAP") if key in m}
        curves = m.get("curves") or {}
        return {
            "items": items,
            "bits": self.bits,
            "method": self.hasher.method,
            "kind": self.hasher.kind,
            "run": str(self.hasher.run_dir),
            "fingerprint": self.hasher.fingerprint,
            "dataset": m.get("dataset"),
            "protocol": m.get("protocol"),
            "backbone": m.get("backbone"),
            "image_size": self.hasher.image_size,
            "channels": self.hasher.channels,
            "n_query": m.get("n_query"),
            "n_db": m.get("n_db"),
            "metrics": figures,
            "pr_curve": {k: curves[k] for k in ("pr_radius", "pr_precision", "pr_recall") if k in curves} or None,
            "index_method": self.index.method if self.index is not None else None,
            "last_index_method": self.index.last_method if self.index is not None else None,
            "read_only": self.read_only,
            "limits": {
                "max_k": self.settings.max_k,
                "max_files": self.settings.max_files,
                "max_upload_bytes": self.settings.max_upload_bytes,
                "max_pixels": self._max_pixels(),
            },
        }

    def _max_pixels(self) -> int:
        from hashlearn.data.images import max_image_pixels

        return max_image_pixels(self.settings.max_pixels)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """``(HTTP status, one-line message)`` for an error raised while answering a request."""
    from hashlearn.index.collection import ReadOnlyCollectionError

    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # the first kind that matches; any other HashlearnError (a locked or damaged collection, ...) is 503
    statuses = ((NotFoundError, 404), (InputError, 400), (ReadOnlyCollectionError, 403), (HashlearnError, 503))
    for kind, status in statuses:
        if isinstance(exc, kind):
            return status, msg
    return 500, "internal error (a bug; the server's log has the traceback)"
