"""Adapters: FAISS binary indexes (faiss-cpu) and Milvus (pymilvus; milvus-lite or a cluster).

Bit order: hashlearn packs bit ``j`` of a code MSB-first into byte ``j // 8``; FAISS and Milvus take
the same bytes as they are. Hamming distance does not depend on the order of bits, and the bytes
are never reordered, so a round trip gives back identical codes and ids. FAISS and Milvus need
a multiple of 8 bits: a code of ``bits`` bits is stored as ``8 * ceil(bits / 8)`` bits whose
padding bits are zero, which leaves every distance unchanged.
"""

from __future__ import annotations

import numpy as np

from hashlearn.errors import HashlearnError, InputError


def _faiss():
    try:
        import faiss
    except ImportError:
        raise HashlearnError("FAISS is not installed: pip install hashlearn[faiss]") from None
    return faiss


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise HashlearnError("pymilvus is not installed: pip install hashlearn[milvus]") from None
    return pymilvus


# -- FAISS ------------------------------------------------------------------------------------
def to_faiss(index, kind: str = "flat", nlist: int | None = None, hnsw_m: int = 16):
    """A FAISS binary index holding the codes and ids of a :class:`HammingIndex`.

    ``kind``: ``flat`` (``IndexBinaryFlat``), ``hnsw`` (``IndexBinaryHNSW``) — both wrapped in
    ``IndexBinaryIDMap`` to keep ids — or ``ivf`` (``IndexBinaryIVF``, trained on the codes,
    ids stored natively).
    """
    faiss = _faiss()
    packed, ids = index.codes(), np.ascontiguousarray(index.ids, dtype=np.int64)
    d = packed.shape[1] * 8
    if kind == "flat":
        out = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(d))
    elif kind == "hnsw":
        out = faiss.IndexBinaryIDMap(faiss.IndexBinaryHNSW(d, hnsw_m))
    elif kind == "ivf":
        nlist = nlist or max(1, min(4096, int(np.sqrt(max(len(packed), 1)))))
        out = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, nlist)
        if len(packed):
            out.train(packed)
    else:
        raise InputError(f"unknown FAISS index kind {kind!r}; expected flat, hnsw or ivf")
    if len(packed):
        out.add_with_ids(packed, ids)
    return out


def from_faiss(faiss_index, bits: int | None = None):
    """A :class:`HammingIndex` with the codes and ids of a FAISS binary index.

    Reads ``IndexBinaryFlat``/``IndexBinaryHNSW`` (optionally inside ``IndexBinaryIDMap``) and
    ``IndexBinaryIVF``. ``bits`` defaults to the FAISS dimension.
    """
    faiss = _faiss()
    from hashlearn.index.hamming import HammingIndex

    idx = faiss_index
    ids = None
    if isinstance(idx, faiss.IndexBinaryIDMap):
        ids = faiss.vector_to_array(idx.id_map).astype(np.int64)
        idx = faiss.downcast_IndexBinary(idx.index)
    else:
        idx = faiss.downcast_IndexBinary(idx)
    nbytes = idx.code_size
    if isinstance(idx, faiss.IndexBinaryIVF):
        invlists = idx.invlists
        codes, list_ids = [], []
        for lst in range(idx.nlist):
            size = invlists.list_size(lst)
            if size == 0:
                continue
            codes.append(faiss.rev_swig_ptr(invlists.get_codes(lst), size * nbytes).copy().reshape(size, nbytes))
            list_ids.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy().astype(np.int64))
        packed = np.concatenate(codes) if codes else np.zeros((0, nbytes), dtype=np.uint8)
        ids = np.concatenate(list_ids) if list_ids else np.zeros(0, dtype=np.int64)
    else:
        if isinstance(idx, faiss.IndexBinaryHNSW):
            idx = faiss.downcast_IndexBinary(idx.storage)
        packed = faiss.vector_to_array(idx.xb).reshape(-1, nbytes) if idx.ntotal else np.zeros((0, nbytes), np.uint8)
        if ids is None:
            ids = np.arange(idx.ntotal, dtype=np.int64)
    out = HammingIndex(bits or nbytes * 8)
    out.add(packed, ids)
    return out


def write_faiss(index, path, kind: str = "flat") -> None:
    """Export a :class:`HammingIndex` to a FAISS binary index file."""
    _faiss().write_index_binary(to_faiss(index, kind), str(path))


def read_faiss(path, bits: int | None = None):
    """Import a FAISS binary index file as a :class:`HammingIndex`."""
    return from_faiss(_faiss().read_index_binary(str(path)), bits)


# -- Milvus -----------------------------------------------------------------------------------
class MilvusStore:
    """Binary codes in a Milvus collection (``BINARY_VECTOR``, metric ``HAMMING``).

    ``uri`` is a local file for milvus-lite (``"codes.db"``) or a server/cluster address
    (``"http://host:19530"``); the same code serves both. ``index_type``: ``BIN_FLAT`` (exact)
    or ``BIN_IVF_FLAT`` (``nlist``, searched with ``nprobe``).
    """

    def __init__(self, uri: str, collection: str, bits: int, index_type: str = "BIN_FLAT", nlist: int = 128, **kw):
        pymilvus = _pymilvus()
        if index_type not in ("BIN_FLAT", "BIN_IVF_FLAT"):
            raise InputError(f"index_type must be BIN_FLAT or BIN_IVF_FLAT, got {index_type!r}")
        self.bits = int(bits)
        self.dim = 8 * ((self.bits + 7) // 8)
        self.collection = collection
        self.index_type = index_type
        local = "://" not in str(uri)
        if local and index_type != "BIN_FLAT":
            # milvus-lite 2.5: "invalid index type: BIN_IVF_FLAT, local mode only support BIN_FLAT"
            raise InputError(
                f"milvus-lite (a local file URI) supports only BIN_FLAT; {index_type} needs a Milvus server"
            )
        self.client = pymilvus.MilvusClient(uri=str(uri), **kw)
        if not self.client.has_collection(collection):
            schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
            schema.add_field("code", pymilvus.DataType.BINARY_VECTOR, dim=self.dim)
            params = self.client.prepare_index_params()
            extra = {"nlist": nlist} if index_type == "BIN_IVF_FLAT" else {}
            params.add_index(field_name="code", index_type=index_type, metric_type="HAMMING", params=extra)
            self.client.create_collection(collection, schema=schema, index_params=params)
        self.client.load_collection(collection)

    def add(self, codes, ids) -> None:
        from hashlearn.codes import as_packed
        from hashlearn.index.hamming import check_ids

        packed, _ = as_packed(codes, self.bits, name="codes")
        ids = check_ids(ids, len(packed))
        rows = [{"id": int(i), "code": packed[r].tobytes()} for r, i in enumerate(ids)]
        for a in range(0, len(rows), 5000):
            self.client.insert(self.collection, rows[a : a + 5000])
        self.client.flush(self.collection)

    def remove(self, ids) -> None:
        self.client.delete(self.collection, ids=[int(i) for i in np.asarray(ids).ravel()])

    def search(self, queries, k: int, nprobe: int = 16):
        """``(distances int32 (nq, k), ids int64 (nq, k))``; missing results are ``-1``."""
        from hashlearn.codes import as_packed

        packed, _ = as_packed(queries, self.bits, name="queries")
        params = {"metric_type": "HAMMING", "params": {"nprobe": nprobe} if self.index_type == "BIN_IVF_FLAT" else {}}
        res = self.client.search(
            self.collection, data=[q.tobytes() for q in packed], anns_field="code", limit=int(k), search_params=params
        )
        dist = np.full((len(packed), k), -1, dtype=np.int32)
        ids = np.full((len(packed), k), -1, dtype=np.int64)
        for r, hits in enumerate(res):
            for c, hit in enumerate(hits[:k]):
                dist[r, c] = int(round(hit["distance"]))
                ids[r, c] = int(hit["id"])
        return dist, ids

    def count(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def close(self) -> None:
        self.client.close()
