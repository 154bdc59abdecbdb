"""Exactness of HammingIndex against brute force, for every method and code length."""

import numpy as np
import pytest

from hashlearn.errors import InputError
from hashlearn.index import HammingIndex, index_factory


def brute_knn(db_bits, ids, q_bits, k):
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(2)
    out_d = np.full((len(q_bits), k), -1)
    out_i = np.full((len(q_bits), k), -1)
    for r in range(len(q_bits)):
        order = np.lexsort((ids, dist[r]))[:k]
        out_d[r, : len(order)] = dist[r, order]
        out_i[r, : len(order)] = ids[order]
    return out_d, out_i


def brute_range(db_bits, ids, q_bits, radius):
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(2)
    runs = []
    for r in range(len(q_bits)):
        order = np.lexsort((ids, dist[r]))
        order = order[dist[r, order] <= radius]
        runs.append((dist[r, order], ids[order]))
    return runs


def clustered(rng, n, bits, centres=5, flip=0.1):
    c = rng.integers(0, 2, (centres, bits))
    x = c[rng.integers(0, centres, n)]
    return x ^ (rng.random((n, bits)) < flip)


@pytest.mark.parametrize("bits", list(range(8, 129, 8)) + [136, 200, 256, 384, 500, 512, 1000, 1024])
@pytest.mark.parametrize("method", ["flat", "mih"])
def test_knn_and_range_match_brute_force(bits, method):
    rng = np.random.default_rng(bits)
    n = 300
    db = clustered(rng, n, bits) if bits % 16 == 0 else rng.integers(0, 2, (n, bits))
    db[50:60] = db[0]  # exact duplicates: ties broken by id
    ids = rng.permutation(10 * n)[:n]  # unsorted, non-contiguous ids
    q = np.concatenate([db[:3], rng.integers(0, 2, (5, bits))])
    index = HammingIndex(bits, method=method)
    index.add(db, ids)
    for k in (1, 7, n + 5):
        dist, got = index.search(q, k)
        want_d, want_i = brute_knn(db, ids, q, k)
        np.testing.assert_array_equal(dist, want_d)
        np.testing.assert_array_equal(got, want_i)
    for radius in (0, bits // 3, bits // 2):
        lims, dist, got = index.range_search(q, radius)
        for r, (wd, wi) in enumerate(brute_range(db, ids, q, radius)):
            np.testing.assert_array_equal(dist[lims[r] : lims[r + 1]], wd)
            np.testing.assert_array_equal(got[lims[r] : lims[r + 1]], wi)


@pytest.mark.parametrize("bits", [64, 120, 192, 256])
def test_flat_scan_across_many_blocks_and_far_codes(bits):
    """Several database blocks with a partial last one, thresholds that settle mid-scan, and
    codes at distance 248-256 from a query (the vector kernels count distances in bytes; 256-bit
    codes saturate at 255)."""
    rng = np.random.default_rng(bits + 1)
    n = 3001
    db = clustered(rng, n, bits, flip=0.2)
    q = np.concatenate([db[:2], rng.integers(0, 2, (3, bits))])
    far = 1 - q[0]  # the complement of query 0, then copies with up to 8 bits put back
    db[100] = far
    for i in range(1, 9):
        db[100 + 200 * i] = far
        db[100 + 200 * i, rng.choice(bits, i, replace=False)] ^= 1
    ids = rng.permutation(n)
    index = HammingIndex(bits, method="flat")
    index.add(db, ids)
    for k in (5, 100, n):
        dist, got = index.search(q, k)
        want_d, want_i = brute_knn(db, ids, q, k)
        np.testing.assert_array_equal(dist, want_d)
        np.testing.assert_array_equal(got, want_i)
    for radius in sorted({0, bits // 4, bits - 9, bits - 2, bits - 1, bits}):
        lims, dist, got = index.range_search(q, radius)
        for r, (wd, wi) in enumerate(brute_range(db, ids, q, radius)):
            np.testing.assert_array_equal(dist[lims[r] : lims[r + 1]], wd)
            np.testing.assert_array_equal(got[lims[r] : lims[r + 1]], wi)
    far_d = index.search(1 - q[:1], n)[0][0]  # from the complement, the farthest codes are last
    assert far_d[-1] == bits


@pytest.mark.parametrize("spec", ["mih:m=3", "mih:m=5,reorder", "mih:reorder"])
def test_mih_options_are_exact(spec):
    rng = np.random.default_rng(1)
    db = clustered(rng, 2000, 64, flip=0.05)
    q = clustered(rng, 20, 64, flip=0.05)
    flat = index_factory(64, "flat")
    flat.add(db)
    mih = index_factory(64, spec)
    mih.add(db)
    for a, b in zip(flat.search(q, 25), mih.search(q, 25), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(flat.range_search(q, 6), mih.range_search(q, 6), strict=True):
        np.testing.assert_array_equal(a, b)


def test_k_larger_than_n_pads_with_minus_one():
    index = HammingIndex(16)
    index.add(np.array([[0] * 16, [1] * 16]), ids=[7, 3])
    dist, ids = index.search(np.array([[0] * 16]), 4)
    np.testing.assert_array_equal(dist, [[0, 16, -1, -1]])
    np.testing.assert_array_equal(ids, [[7, 3, -1, -1]])


def test_ties_are_ordered_by_id_whatever_the_insertion_order():
    index = HammingIndex(8)
    index.add(np.zeros((3, 8), dtype=np.uint8), ids=[30, 10, 20])
    index.add(np.zeros((1, 8), dtype=np.uint8), ids=[5])
    _, ids = index.search(np.zeros((1, 8), dtype=np.uint8), 4)
    np.testing.assert_array_equal(ids, [[5, 10, 20, 30]])


@pytest.mark.parametrize("method", ["auto", "flat", "mih"])
def test_empty_index_and_zero_k(method):
    index = HammingIndex(32, method=method)
    dist, ids = index.search(np.zeros((2, 32)), 3)
    assert dist.shape == (2, 3) and (dist == -1).all() and (ids == -1).all()
    lims, dist, ids = index.range_search(np.zeros((2, 32)), 5)
    np.testing.assert_array_equal(lims, [0, 0, 0])
    index.add(np.ones((4, 32)))
    assert index.search(np.zeros((2, 32)), 0)[0].shape == (2, 0)


def test_radius_zero_finds_exact_copies_only():
    rng = np.random.default_rng(3)
    db = rng.integers(0, 2, (500, 48))
    index = HammingIndex(48, method="mih")
    index.add(db)
    lims, dist, ids = index.range_search(db[[4]], 0)
    np.testing.assert_array_equal(ids, [4])
    np.testing.assert_array_equal(dist, [0])


def test_remove_and_packed_input_and_save_load(tmp_path):
    rng = np.random.default_rng(4)
    db = rng.integers(0, 2, (200, 72))
    packed = np.packbits(db, axis=1)
    index = HammingIndex(72)
    index.add(packed)  # packed uint8 (n, 9)
    assert len(index) == 200
    assert index.remove([0, 1, 999]) == 2
    assert len(index) == 198
    d1, i1 = index.search(db[:5], 10)
    assert 0 not in i1 and 1 not in i1
    index.save(tmp_path / "idx")
    loaded = HammingIndex.load(tmp_path / "idx")
    assert isinstance(loaded._words, np.memmap)
    d2, i2 = loaded.search(db[:5], 10)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(loaded.codes(), packed[2:])


def test_auto_uses_mih_when_neighbours_are_near_and_flat_for_long_codes():
    rng = np.random.default_rng(5)
    db = clustered(rng, 50_000, 32, centres=1000, flip=0.05)  # MIH ~10x faster here
    index = HammingIndex(32)
    index.add(db)
    dist, ids = index.search(db[:3], 10)
    assert index.last_method == "mih"
    flat = HammingIndex(32, method="flat")
    flat.add(db)
    np.testing.assert_array_equal(flat.search(db[:3], 10)[1], ids)
    long = HammingIndex(512)
    long.add(rng.integers(0, 2, (5000, 512)))
    assert long.choose_method(k=10) == "flat"


@pytest.mark.parametrize(
    "codes, message",
    [
        (np.zeros((2, 10)), "width 10 is not 16 bits"),
        (np.full((2, 16), 0.5), "binary"),
        (np.full((2, 16), np.nan), "NaN"),
        (np.array([["a"] * 16]), "dtype"),
        (np.zeros((2, 2), dtype=np.int32), "must be uint8"),
    ],
)
def test_bad_codes_are_rejected(codes, message):
    index = HammingIndex(16)
    with pytest.raises(InputError, match=message):
        index.add(codes)
    assert len(index) == 0


def test_bad_ids_and_arguments_are_rejected():
    index = HammingIndex(16)
    with pytest.raises(InputError, match="duplicate"):
        index.add(np.zeros((2, 16)), ids=[1, 1])
    index.add(np.zeros((2, 16)), ids=[1, 2])
    with pytest.raises(InputError, match="already"):
        index.add(np.zeros((1, 16)), ids=[2])
    with pytest.raises(InputError, match="between 8 and 1024"):
        HammingIndex(4)
    with pytest.raises(InputError, match="unknown"):
        index_factory(16, "ivf")
    with pytest.raises(InputError, match="k must be"):
        index.search(np.zeros((1, 16)), -1)
    assert len(index) == 2
