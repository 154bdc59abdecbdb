"""Single-query latency: ``auto`` decides once per index state, and the database-split scan for fewer
queries than threads returns exactly what the one-thread scan returns."""

import numba
import numpy as np
import pytest

from hashlearn.codes._kernels import to_words
from hashlearn.index import HammingIndex
from hashlearn.index._scan import count_split, knn_scan, knn_scan_split, range_count, split_parts
from hashlearn.index._scan_kernels import knn_scan_n, range_scan_n


def clustered(rng, n, nbytes, centres=50, flip=3):
    c = rng.integers(0, 256, (centres, nbytes), dtype=np.uint8)
    noise = np.bitwise_and.reduce(rng.integers(0, 256, (flip, n, nbytes), dtype=np.uint8), axis=0)
    return c[rng.integers(0, centres, n)] ^ noise


@pytest.mark.parametrize("bits", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_split_scan_equals_the_one_thread_scan_with_ties(bits, parts):
    rng = np.random.default_rng(bits)
    db = rng.integers(0, 256, (5_001, bits // 8), dtype=np.uint8)
    db[100:400] = db[0]  # a tie group that straddles the slices' borders when split
    db[3000:3100] = db[0]
    dw = to_words(db)
    qw = to_words(np.concatenate([db[:1], db[:1] ^ 1, rng.integers(0, 256, (1, bits // 8), dtype=np.uint8)]))
    for k in (1, 7, 100, 450, 5_001):
        got = knn_scan_split(qw, dw, k, bits, parts)
        want = knn_scan_n(qw, dw, k, bits, 1, 1024)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), k
    for radius in (0, 1, bits // 2 - 3, bits // 2, bits):
        ref = range_scan_n(qw, dw, radius, bits, 1, 1024, np.zeros(4, np.int64), np.empty(0, np.int32),
                           np.empty(0, np.int64))
        assert np.array_equal(count_split(qw, dw, radius, parts), ref), radius
    # positions where the first query's own code sits: distance 0, in position order
    d, p = knn_scan_split(qw[:1], dw, 401, bits, parts)
    assert d[0, :401].tolist() == [0] * 401 and p[0].tolist() == [0, *range(100, 400), *range(3000, 3100)]


def test_a_single_query_on_two_threads_uses_the_split_scan():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        assert split_parts(1, 100_000) == 2  # one query: the database split between the two threads
        assert split_parts(2, 100_000) == 1 and split_parts(1, 1000) == 1  # the specialised scalar loop
        assert split_parts(3, 100_000) == 0  # query blocks: the vector kernels
        rng = np.random.default_rng(1)
        db = clustered(rng, 100_000, 8)
        dw, qw = to_words(db), to_words(db[:1] ^ 3)
        d, p = knn_scan(qw, dw, 100, 64)
        want = knn_scan_n(qw, dw, 100, 64, 1, 1024)
        assert np.array_equal(d, want[0]) and np.array_equal(p, want[1])
        assert np.array_equal(range_count(qw, dw, 5, 64),
                              range_scan_n(qw, dw, 5, 64, 1, 1024, np.zeros(2, np.int64), np.empty(0, np.int32),
                                           np.empty(0, np.int64)))
    finally:
        numba.set_num_threads(before)


def test_auto_estimates_once_for_many_single_queries_and_stays_exact():
    rng = np.random.default_rng(2)
    db = clustered(rng, 40_000, 4)
    auto, flat = HammingIndex(32), HammingIndex(32, method="flat")
    auto.add(db)
    flat.add(db)
    queries = clustered(np.random.default_rng(2), 30, 4)  # the database's centres: its query distribution
    for q in queries:
        d, i = auto.search(q[None, :], 10)
        fd, fi = flat.search(q[None, :], 10)
        assert np.array_equal(d, fd) and np.array_equal(i, fi)
    assert auto.auto_decisions == 1
    auto.search(queries[:3], 25)  # another k: its own choice
    assert auto.auto_decisions == 2
    auto.count_within(queries[:1], 4)
    auto.count_within(queries[1:2], 4)  # the same radius: decided already
    assert auto.auto_decisions == 3


def test_auto_decides_again_when_the_index_grows_or_the_queries_drift():
    rng = np.random.default_rng(4)
    db = clustered(rng, 40_000, 8, centres=20, flip=4)
    auto = HammingIndex(64)
    auto.add(db)
    near = clustered(np.random.default_rng(4), 20, 8, centres=20, flip=4)  # the same centres: near neighbours
    auto.search(near[:1], 10)
    assert auto.auto_decisions == 1
    auto.add(db[:2_000] ^ 1)  # +5 %: the choice stands
    auto.search(near[1:2], 10)
    assert auto.auto_decisions == 1
    auto.add(db[:3_000] ^ 2)  # +12.5 % since the choice: decided again
    auto.search(near[2:3], 10)
    assert auto.auto_decisions == 2
    far = np.random.default_rng(5).integers(0, 256, (10, 8), dtype=np.uint8)  # uniform: 10th neighbour far away
    for q in far:
        auto.search(q[None, :], 10)
    assert auto.auto_decisions >= 3  # the k-th distances drifted from the assumed one
    for q in near[3:13]:  # the estimate made with far queries fits them; near ones drift it back
        auto.search(q[None, :], 10)
    after = auto.auto_decisions
    assert after >= 4
    auto.reset()
    auto.add(db)
    auto.search(near[:1], 10)
    assert auto.auto_decisions == after + 1  # reset forgets every choice


def test_choose_method_still_estimates_from_what_it_is_given():
    rng = np.random.default_rng(0)
    db = clustered(rng, 300_000, 8, centres=100, flip=3)
    q = clustered(np.random.default_rng(0), 50, 8, centres=100, flip=3)
    big = HammingIndex(64)
    big.add(db[:20_000])
    big.search(q[:1], 100)
    big.add(db[20_000:])
    assert big.choose_method(k=100) == "flat"  # no queries: uniform codes assumed, whatever a search chose
