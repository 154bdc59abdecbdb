"""The evaluator against brute-force references: sklearn, hand-worked fractions, and the
exact average over every order of the tied items."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hashlearn.errors import InputError
from hashlearn.eval import (
    EvalResult,
    acg_at,
    evaluate,
    mean_average_precision,
    ndcg_at,
    precision_at_n,
    precision_recall_curve,
    radius_metrics,
    weighted_map,
)

# ----------------------------------------------------------------------------------------
# helpers


def codes_at_distances(distances, bits=None):
    """One all-zero query and database codes at the given Hamming distances from it."""
    distances = list(distances)
    bits = bits or max(max(distances), 1)
    db = np.zeros((len(distances), bits), dtype=np.int8)
    for i, d in enumerate(distances):
        db[i, :d] = 1
    return np.zeros((1, bits), dtype=np.int8), db


def ranked_metrics(ranked_r, cutoffs, n_grid):
    """Metrics of one ranked list of graded relevance (r = shared labels), straight from the
    definitions, with Fractions where the value is rational."""
    n = len(ranked_r)
    ideal = sorted(ranked_r, reverse=True)
    out = {}
    for R in cutoffs:
        top = ranked_r[:R]
        hits, graded, s_ap, s_w = 0, 0, Fraction(0), Fraction(0)
        for pos, r in enumerate(top, start=1):
            graded += r
            if r > 0:
                hits += 1
                s_ap += Fraction(hits, pos)
                s_w += Fraction(graded, pos)
        dcg = sum((2**r - 1) / math.log2(1 + p) for p, r in enumerate(top, start=1))
        idcg = sum((2**r - 1) / math.log2(1 + p) for p, r in enumerate(ideal[:R], start=1))
        out[("ap", R)] = s_ap / hits if hits else Fraction(0)
        out[("wap", R)] = s_w / hits if hits else Fraction(0)
        out[("has", R)] = hits > 0
        out[("ndcg", R)] = dcg / idcg if idcg > 0 else 0.0
        out[("acg", R)] = Fraction(sum(top), R)
    for N in n_grid:
        out[("rel@", N)] = Fraction(sum(1 for r in ranked_r[:N] if r > 0))
    assert n == len(ranked_r)
    return out


def expected_over_tie_orders(distances, graded_r, cutoffs, n_grid):
    """Average of ranked_metrics over every order of every tie group (brute force)."""
    groups = [[i for i in range(len(distances)) if distances[i] == d] for d in sorted(set(distances))]
    per_order = []
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [i for p in perms for i in p]
        per_order.append(ranked_metrics([graded_r[i] for i in order], cutoffs, n_grid))
    keys = per_order[0].keys()
    mean = {}
    for k in keys:
        if k[0] == "has":
            mean[k] = any(o[k] for o in per_order)
        else:
            mean[k] = sum(o[k] for o in per_order) / len(per_order)
    return mean


def index_order(distances, graded_r, cutoffs, n_grid):
    order = np.argsort(np.asarray(distances), kind="stable")
    return ranked_metrics([graded_r[i] for i in order], cutoffs, n_grid)


# ----------------------------------------------------------------------------------------
# hand-worked cases


def test_two_tied_items_one_relevant_expected_ap_is_three_quarters():
    q, db = codes_at_distances([0, 0], bits=4)
    res = evaluate(q, db, [1], [1, 0], topk=("all",))
    assert res.map["all"] == pytest.approx(0.75, abs=1e-15)  # orders: AP 1 or 1/2
    res = evaluate(q, db, [1], [1, 0], topk=("all",), ties="index")
    assert res.map["all"] == 1.0
    res = evaluate(q, db, [1], [0, 1], topk=("all",), ties="index")
    assert res.map["all"] == 0.5


def test_three_tied_two_relevant_is_29_over_36():
    # relevant positions {1,2}: 1; {1,3}: 5/6; {2,3}: 7/12 → mean 29/36
    q, db = codes_at_distances([3, 3, 3], bits=4)
    res = evaluate(q, db, [0], [0, 0, 1], topk=("all",))
    assert res.map["all"] == pytest.approx(29 / 36, abs=1e-15)


def test_cutoff_splitting_a_tie_group_averages_over_the_relevant_count():
    q, db = codes_at_distances([0, 0], bits=2)
    # R = 1: half the orders put the relevant item first (AP 1), half leave the top 1 empty (AP 0)
    res = evaluate(q, db, [1], [1, 0], topk=(1,))
    assert res.map[1] == pytest.approx(0.5, abs=1e-15)
    # still counted, not skipped: some order has a relevant item in the top 1
    assert evaluate(q, db, [1], [1, 0], topk=(1,), skip_empty=True).map[1] == pytest.approx(0.5, abs=1e-15)


def test_cutoff_split_hand_fraction():
    # distances: one relevant at 0, then a group of 3 at 1 with 1 relevant; R = 2
    # top 2 = [rel, X], X relevant w.p. 1/3 → AP = 1 (both relevant: (1 + 1)/2) or 1 → 1
    # make the first item non-relevant instead: top 2 = [non, X]: X rel w.p. 1/3 → AP 1/2, else 0
    q, db = codes_at_distances([0, 1, 1, 1], bits=2)
    res = evaluate(q, db, [1], [0, 1, 0, 0], topk=(2,))
    assert res.map[2] == pytest.approx(1 / 6, abs=1e-15)
    # precision@2 expectation: (0 + 1/3) / 2
    _, prec, _ = precision_at_n(q, db, [1], [0, 1, 0, 0], n=(2,))
    assert prec[0] == pytest.approx(1 / 6, abs=1e-15)


def test_map_at_all_counts_the_last_item():
    q, db = codes_at_distances([0, 1, 2])
    # the only relevant item is ranked last: AP = 1/3 (an evaluator that drops item N gives 0)
    assert mean_average_precision(q, db, [1], [0, 0, 1], topk=("all",)) == {"all": pytest.approx(1 / 3)}


def test_cutoff_larger_than_database_is_clipped_and_equals_all():
    q, db = codes_at_distances([0, 1, 2])
    res = evaluate(q, db, [1], [0, 1, 1], topk=(10, "all"))
    assert res.map[10] == res.map["all"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res.cutoffs == {10: 3, "all": 3}


def test_query_without_relevant_in_top_r_scores_zero_or_is_skipped():
    q0, db = codes_at_distances([0, 1, 2, 3])
    queries = np.vstack([q0, q0])
    db_labels = [1, 0, 0, 2]
    # query 0 (label 1): AP@2 = 1; query 1 (label 2): nothing relevant in the top 2
    res = evaluate(queries, db, [1, 2], db_labels, topk=(2, "all"))
    assert res.map[2] == pytest.approx(0.5)
    assert res.map["all"] == pytest.approx((1 + 1 / 4) / 2)
    skipped = evaluate(queries, db, [1, 2], db_labels, topk=(2, "all"), skip_empty=True)
    assert skipped.map[2] == pytest.approx(1.0)
    assert skipped.queries_scored == {2: 1, "all": 2}
    assert skipped.map["all"] == pytest.approx((1 + 1 / 4) / 2)


def test_radius_metrics_hand_case_and_empty_retrieval_has_precision_zero():
    q0, db = codes_at_distances([0, 1, 2, 3, 5], bits=8)
    labels = [1, 0, 1, 1, 0]
    out = radius_metrics(q0, db, [1], labels, radius=2)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    # a query far from everything retrieves nothing within radius 2: precision 0, recall 0
    far = np.ones((1, 8), dtype=np.int8)
    out = radius_metrics(far, db, [1], labels, radius=2)
    assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # the two queries together: the mean over queries
    res = evaluate(np.vstack([q0, far]), db, [1, 1], labels, radius=2)
    assert res["P@r2"] == pytest.approx(1 / 3)
    radii, prec, rec = precision_recall_curve(q0, db, [1], labels)
    assert radii.tolist() == list(range(9))
    assert prec.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4, 3 / 4, 3 / 5, 3 / 5, 3 / 5, 3 / 5])
    assert rec.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1])


def test_ndcg_acg_weighted_map_hand_example():
    # query labels {0,1}; A shares 2 labels (distance 0), B none (1), C one (2)
    q, db = codes_at_distances([0, 1, 2])
    ql = np.array([[1, 1, 0]])
    dl = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0]])
    ndcg = ndcg_at(q, db, ql, dl, p=(2, 3))
    assert ndcg[3] == pytest.approx((3 + 1 / 2) / (3 + 1 / math.log2(3)))
    assert ndcg[2] == pytest.approx(3 / (3 + 1 / math.log2(3)))
    assert acg_at(q, db, ql, dl, p=(1, 3)) == {1: pytest.approx(2.0), 3: pytest.approx(1.0)}
    # relevant at positions 1 and 3: (ACG@1 + ACG@3) / 2 = (2 + 1) / 2
    assert weighted_map(q, db, ql, dl, topk=("all",)) == {"all": pytest.approx(1.5)}
    res = evaluate(q, db, ql, dl, topk=(3,))
    assert res.multi_label and res.graded
    assert {"NDCG@3", "ACG@3", "wmAP@3", "mAP@3"} <= set(res.metrics())


def test_weighted_map_equals_map_for_single_label():
    rng = np.random.default_rng(3)
    q, db = rng.integers(0, 2, (20, 8)), rng.integers(0, 2, (200, 8))
    ql, dl = rng.integers(0, 3, 20), rng.integers(0, 3, 200)
    res = evaluate(q, db, ql, dl, topk=(7, 50, "all"), graded=True)
    for t in (7, 50, "all"):
        assert res.wmap[t] == pytest.approx(res.map[t], rel=1e-12)


# ----------------------------------------------------------------------------------------
# brute force


def test_no_ties_matches_sklearn_average_precision():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 40))
        distances = rng.permutation(n)
        q, db = codes_at_distances(distances, bits=n)
        dl = rng.integers(0, 2, n)
        if dl.sum() == 0:
            dl[0] = 1
        for ties in ("expected", "index"):
            ours = evaluate(q, db, [1], dl, topk=("all",), ties=ties).map["all"]
            assert ours == pytest.approx(average_precision_score(dl, -distances), rel=1e-12), trial


def test_many_queries_match_sklearn_without_ties():
    # 64-bit random codes over 30 items: ties are possible, so use index ties and a stable order
    rng = np.random.default_rng(1)
    q, db = rng.integers(0, 2, (40, 64)), rng.integers(0, 2, (30, 64))
    ql, dl = rng.integers(0, 3, 40), rng.integers(0, 3, 30)
    res = evaluate(q, db, ql, dl, topk=("all",), ties="index")
    dist = (q[:, None, :] != db[None, :, :]).sum(-1)
    aps = []
    for i in range(40):
        order = np.argsort(dist[i], kind="stable")
        rel = (dl[order] == ql[i]).astype(int)
        # strictly decreasing scores in the stable order → sklearn sees no ties
        aps.append(average_precision_score(rel, -np.arange(30)) if rel.any() else 0.0)
    assert res.map["all"] == pytest.approx(np.mean(aps), rel=1e-12)


def _check_against_enumeration(distances, graded_r, cutoffs, multi_label, rng):
    bits = max(max(distances), 1)
    q, db = codes_at_distances(distances, bits=bits)
    n = len(distances)
    if multi_label:
        n_labels = 4
        ql = np.array([[1, 1, 1, 0]])
        dl = np.zeros((n, n_labels), dtype=np.uint8)
        for i, r in enumerate(graded_r):
            dl[i, :r] = 1  # r shared labels
            dl[i, 3] = rng.integers(0, 2)  # a label the query lacks
    else:
        ql = [1]
        dl = np.array(graded_r)
    grid = list(range(1, n + 1))
    ref = expected_over_tie_orders(distances, graded_r, cutoffs, grid)
    ref_index = index_order(distances, graded_r, cutoffs, grid)
    for ties, want in (("expected", ref), ("index", ref_index)):
        for skip in (False, True):
            res = evaluate(q, db, ql, dl, topk=cutoffs, ties=ties, skip_empty=skip, graded=True, curve_n=grid)
            for R in cutoffs:
                if skip and not want[("has", R)]:
                    assert res.queries_scored[R] == 0 and res.map[R] == 0.0
                    continue
                assert res.map[R] == pytest.approx(float(want[("ap", R)]), rel=1e-12, abs=1e-15), (ties, R)
                assert res.wmap[R] == pytest.approx(float(want[("wap", R)]), rel=1e-12, abs=1e-15), (ties, R)
                assert res.ndcg[R] == pytest.approx(float(want[("ndcg", R)]), rel=1e-12, abs=1e-15), (ties, R)
                assert res.acg[R] == pytest.approx(float(want[("acg", R)]), rel=1e-12, abs=1e-15), (ties, R)
            prec = [float(want[("rel@", N)]) / N for N in grid]
            assert res.precision_at_n == pytest.approx(prec, rel=1e-12, abs=1e-15), ties


@pytest.mark.parametrize("seed", range(25))
def test_expected_ties_equal_the_average_over_all_orders_single_label(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    distances = rng.integers(0, 3, n).tolist()  # few distinct distances → big tie groups
    rel = rng.integers(0, 2, n).tolist()
    cutoffs = sorted({int(c) for c in rng.integers(1, n + 1, 3)})
    _check_against_enumeration(distances, rel, cutoffs, False, rng)


@pytest.mark.parametrize("seed", range(25))
def test_expected_ties_equal_the_average_over_all_orders_multi_label(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 8))
    distances = rng.integers(0, 3, n).tolist()
    graded = rng.integers(0, 4, n).tolist()  # 0..3 shared labels
    cutoffs = sorted({int(c) for c in rng.integers(1, n + 1, 3)})
    _check_against_enumeration(distances, graded, cutoffs, True, rng)


def test_large_tie_group_agrees_with_simulation():
    # a 150-item tie group (past the direct-sum threshold, so the harmonic-number shortcut is
    # used) after 70 items; cutoffs inside it, at its end, and at N: compare with Monte Carlo
    rng = np.random.default_rng(7)
    distances = [0] * 70 + [1] * 150 + [2] * 30
    rel = rng.integers(0, 2, len(distances))
    q, db = codes_at_distances(distances, bits=2)
    res = evaluate(q, db, [1], rel, topk=(100, 220, "all"))
    sims = {100: [], 220: [], 250: []}
    for _ in range(3000):
        order = np.concatenate([rng.permutation(np.arange(a, b)) for a, b in ((0, 70), (70, 220), (220, 250))])
        for R in sims:
            r = rel[order][:R]
            hits = np.cumsum(r)
            sims[R].append((hits / np.arange(1, R + 1))[r == 1].sum() / max(r.sum(), 1))
    for R, key in ((100, 100), (220, 220), (250, "all")):
        sem = np.std(sims[R]) / np.sqrt(len(sims[R]))
        assert res.map[key] == pytest.approx(np.mean(sims[R]), abs=4 * sem + 1e-12), R


def test_expected_ties_do_not_depend_on_database_order():
    rng = np.random.default_rng(5)
    q, db = rng.integers(0, 2, (30, 6)), rng.integers(0, 2, (300, 6))
    ql, dl = rng.integers(0, 3, 30), rng.integers(0, 3, 300)
    perm = rng.permutation(300)
    a = evaluate(q, db, ql, dl, topk=(10, 100, "all"))
    b = evaluate(q, db[perm], ql, dl[perm], topk=(10, 100, "all"))
    for t in (10, 100, "all"):
        assert a.map[t] == pytest.approx(b.map[t], rel=1e-12)
    c = evaluate(q, db, ql, dl, topk=(10,), ties="index")
    d = evaluate(q, db[perm], ql, dl[perm], topk=(10,), ties="index")
    assert c.map[10] != d.map[10]  # 6-bit codes: ties everywhere, index order matters


# ----------------------------------------------------------------------------------------
# inputs, chunking, result object


def brute_force_all(q, db, ql, dl, R):
    """AP@R with index ties, straight loops (independent of the kernels)."""
    dist = (np.asarray(q)[:, None, :] != np.asarray(db)[None, :, :]).sum(-1)
    aps = []
    for i in range(len(q)):
        order = np.argsort(dist[i], kind="stable")[:R]
        if np.ndim(ql) == 1:
            rel = (np.asarray(dl)[order] == ql[i]).astype(int)
        else:
            rel = ((np.asarray(dl)[order] @ np.asarray(ql)[i]) > 0).astype(int)
        hits = np.cumsum(rel)
        aps.append((hits / np.arange(1, len(rel) + 1))[rel == 1].sum() / rel.sum() if rel.any() else 0.0)
    return float(np.mean(aps))


def test_multi_label_over_64_labels_and_multi_word_codes():
    rng = np.random.default_rng(11)
    q, db = rng.integers(0, 2, (25, 100)), rng.integers(0, 2, (120, 100))
    ql = (rng.random((25, 70)) < 0.03).astype(np.uint8)
    dl = (rng.random((120, 70)) < 0.03).astype(np.uint8)
    res = evaluate(q, db, ql, dl, topk=(10, "all"), ties="index")
    assert res.map[10] == pytest.approx(brute_force_all(q, db, ql, dl, 10), rel=1e-12)
    assert res.map["all"] == pytest.approx(brute_force_all(q, db, ql, dl, 120), rel=1e-12)


def test_packed_pm1_and_01_inputs_agree():
    rng = np.random.default_rng(2)
    q01, d01 = rng.integers(0, 2, (10, 12)), rng.integers(0, 2, (50, 12))
    ql, dl = rng.integers(0, 2, 10), rng.integers(0, 2, 50)
    a = evaluate(q01, d01, ql, dl)
    b = evaluate(q01 * 2 - 1, d01 * 2 - 1, ql, dl)
    c = evaluate(np.packbits(q01.astype(np.uint8), axis=1), np.packbits(d01.astype(np.uint8), axis=1), ql, dl, bits=12)
    assert a.map == b.map == c.map
    assert a.bits == c.bits == 12


def test_chunking_over_queries_gives_the_same_result(monkeypatch):
    import hashlearn.eval.metrics as metrics

    rng = np.random.default_rng(4)
    q, db = rng.integers(0, 2, (37, 16)), rng.integers(0, 2, (90, 16))
    ql, dl = rng.integers(0, 4, 37), rng.integers(0, 4, 90)
    full = evaluate(q, db, ql, dl, topk=(5, "all"))
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 8)
    chunked = evaluate(q, db, ql, dl, topk=(5, "all"))
    assert chunked.map == pytest.approx(full.map, rel=1e-12)
    assert chunked.pr_precision == pytest.approx(full.pr_precision, rel=1e-12)
    assert brute_force_all(q, db, ql, dl, 5) == pytest.approx(evaluate(q, db, ql, dl, topk=(5,), ties="index").map[5])


def test_result_object_has_settings_and_json_keys():
    rng = np.random.default_rng(6)
    q, db = rng.integers(0, 2, (10, 8)), rng.integers(0, 2, (40, 8))
    res = evaluate(q, db, rng.integers(0, 2, 10), rng.integers(0, 2, 40), topk="20,all")
    assert isinstance(res, EvalResult)
    d = res.to_dict()
    for key in ("mAP@20", "mAP@all", "P@r2", "R@r2", "F1@r2", "bits", "n_query", "n_db", "ties", "relevance", "R"):
        assert key in d
    assert d["R"] == {"20": 20, "all": 40}
    assert res["mAP@all"] == res.map["all"]
    assert "| mAP@20 |" in res.to_markdown()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ties": "random"}, "ties"),
        ({"topk": "0"}, "topk"),
        ({"topk": "abc"}, "topk"),
        ({"radius": -1}, "radius"),
    ],
)
def test_bad_settings_raise_one_line_input_errors(kwargs, message):
    q, db = codes_at_distances([0, 1])
    with pytest.raises(InputError, match=message):
        evaluate(q, db, [0], [0, 1], **kwargs)


def test_bad_inputs_raise_input_errors():
    q, db = codes_at_distances([0, 1], bits=4)
    with pytest.raises(InputError, match="bit-length mismatch"):
        evaluate(q, db[:, :3], [0], [0, 1])
    with pytest.raises(InputError, match="database labels: 3 labels for 2"):
        evaluate(q, db, [0], [0, 1, 1])
    with pytest.raises(InputError, match="label kinds differ"):
        evaluate(q, db, [0], [[0, 1], [1, 0]])
    with pytest.raises(InputError, match="multi-hot labels must be 0/1"):
        evaluate(q, db, [[0, 2]], [[0, 1], [1, 0]])
    with pytest.raises(InputError, match="binary"):
        evaluate(q + 0.5, db, [0], [0, 1])
