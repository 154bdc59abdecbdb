"""FAISS and Milvus adapters: round trips keep codes and ids; distances equal hashlearn's."""

import warnings

import numpy as np
import pytest

from hashlearn.index import HammingIndex, adapters

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install hashlearn[faiss])")


@pytest.fixture
def index():
    rng = np.random.default_rng(0)
    idx = HammingIndex(36)  # not a multiple of 8: FAISS sees 40 bits with zero padding
    idx.add(rng.integers(0, 2, (500, 36)), ids=rng.permutation(5000)[:500])
    return idx


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_round_trip_gives_identical_codes_and_ids(index, kind, tmp_path):
    adapters.write_faiss(index, tmp_path / "x.index", kind=kind)
    back = adapters.read_faiss(tmp_path / "x.index", bits=36)
    np.testing.assert_array_equal(back.ids, index.ids)
    np.testing.assert_array_equal(back.codes(), index.codes())


def test_faiss_distances_equal_hashlearn(index):
    q = np.random.default_rng(1).integers(0, 2, (10, 36))
    fx = adapters.to_faiss(index, "flat")
    fd, fi = fx.search(np.packbits(q, axis=1), 20)
    hd, hi = index.search(q, 20)
    np.testing.assert_array_equal(fd, hd)
    assert set(fi[:, 0]) <= set(index.ids)


def test_plain_faiss_flat_imports_with_positional_ids():
    fx = faiss.IndexBinaryFlat(16)
    codes = np.arange(20, dtype=np.uint8).reshape(10, 2)
    fx.add(codes)
    back = adapters.from_faiss(fx)
    np.testing.assert_array_equal(back.codes(), codes)
    np.testing.assert_array_equal(back.ids, np.arange(10))


def test_missing_extra_is_named(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name in ("faiss", "pymilvus"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(adapters.HashlearnError, match=r"hashlearn\[faiss\]"):
        adapters.to_faiss(HammingIndex(8))
    with pytest.raises(adapters.HashlearnError, match=r"hashlearn\[milvus\]"):
        adapters.MilvusStore("x.db", "c", 8)


def test_milvus_lite_refuses_ivf_with_a_clear_error(tmp_path):
    pytest.importorskip("pymilvus", reason="pymilvus not installed (pip install hashlearn[milvus])")
    with pytest.raises(adapters.InputError, match="supports only BIN_FLAT"):
        adapters.MilvusStore(str(tmp_path / "codes.db"), "codes", 36, index_type="BIN_IVF_FLAT")


def test_milvus_lite_distances_equal_hashlearn(index, tmp_path):
    pytest.importorskip("pymilvus", reason="pymilvus not installed (pip install hashlearn[milvus])")
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed (pip install hashlearn[milvus])")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = adapters.MilvusStore(str(tmp_path / "codes.db"), "codes", 36)
    store.add(index.codes(), index.ids)
    assert store.count() == len(index)
    q = np.random.default_rng(2).integers(0, 2, (5, 36))
    md, mi = store.search(q, 15)
    hd, hi = index.search(q, 15)
    np.testing.assert_array_equal(md, hd)
    # same distance for the id Milvus returned
    codes = dict(zip(index.ids.tolist(), index.codes(), strict=True))
    for r in range(len(q)):
        for c in range(15):
            want = np.unpackbits(np.packbits(q[r]) ^ codes[int(mi[r, c])]).sum()
            assert md[r, c] == want
    store.remove(index.ids[:10])
    assert store.count() == len(index) - 10
    store.close()
