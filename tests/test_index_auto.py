"""``method="auto"``: the cost model and the decision a search makes with its queries."""

import numpy as np

from hashlearn.index import HammingIndex
from hashlearn.index.hamming import estimate_costs, pick_method


def noisy_copies(rng, n, centres):
    """Packed codes: copies of ``centres`` (packed), each bit flipped with probability 1/8."""
    c, nbytes = centres, centres.shape[1]
    noise = rng.integers(0, 256, (3, n, nbytes), dtype=np.uint8)
    return c[rng.integers(0, len(c), n)] ^ (noise[0] & noise[1] & noise[2])


def test_decision_from_synthetic_costs():
    assert pick_method({"linear_ns": 1e6, "mih_ns": 2e5}) == "mih"
    assert pick_method({"linear_ns": 1e6, "mih_ns": 5e6}) == "flat"
    # near neighbours (small k-th distance, few candidates) make MIH cheap; far ones make it dear
    near = estimate_costs(1_000_000, 64, 100, kth_distance=6, candidates=5_000)
    far = estimate_costs(1_000_000, 64, 100, kth_distance=18, candidates=50_000)
    assert pick_method(near) == "mih" and pick_method(far) == "flat"
    # without a measured k-th distance, uniform codes are assumed: long codes scan
    assert pick_method(estimate_costs(1_000_000, 256, 100)) == "flat"
    # the verified candidates are part of the cost: crowded buckets make MIH lose
    assert pick_method(estimate_costs(1_000_000, 64, 100, kth_distance=6, candidates=500_000)) == "flat"


def test_auto_picks_mih_for_large_clustered_and_flat_for_uniform_or_small():
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (100, 8), dtype=np.uint8)
    big = HammingIndex(64)
    big.add(noisy_copies(rng, 300_000, centres))
    q = noisy_copies(rng, 50, centres)
    assert big.choose_method(k=100, queries=q) == "mih"
    assert big.choose_method(k=100) == "flat"  # without queries: uniform codes assumed
    uniform = HammingIndex(64)
    uniform.add(rng.integers(0, 256, (300_000, 8), dtype=np.uint8))
    assert uniform.choose_method(k=100, queries=rng.integers(0, 256, (50, 8), dtype=np.uint8)) == "flat"
    small = HammingIndex(64)
    small.add(noisy_copies(rng, 10_000, centres))
    dist, ids = small.search(q, 10)
    assert small.last_method == "flat"


def test_search_records_the_method_it_used_and_stays_exact():
    rng = np.random.default_rng(2)
    centres = rng.integers(0, 256, (100, 4), dtype=np.uint8)
    db = noisy_copies(rng, 100_000, centres)
    q = noisy_copies(rng, 20, centres)
    auto = HammingIndex(32)
    auto.add(db)
    d, i = auto.search(q, 50)
    assert auto.last_method == auto.choose_method(k=50, queries=q)
    other = HammingIndex(32, method="flat" if auto.last_method == "mih" else "mih")
    other.add(db)
    d2, i2 = other.search(q, 50)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(i, i2)
