"""The graded metrics of the one evaluator (spec §0, DSRH §5): ACG@p, NDCG@p and weighted mAP
(AP with P@n replaced by ACG@n), on a hand-computed example with a tie, under both tie rules."""

import math

import numpy as np
import pytest

from hashlearn.eval import evaluate

# query labels {0, 1}; database a {0, 1} (r = 2), b {0} (r = 1), c {2} (r = 0), d {1, 2} (r = 1)
QUERY_LABELS = np.array([[1, 1, 0]])
DB_LABELS = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1]])
# 2-bit codes: Hamming distances a 0, b 1, c 1, d 2 — b and c tie
QUERY_CODES = np.array([[0, 0]])
DB_CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
L3 = 1 / math.log2(3)  # discount of rank 2


def run(ties):
    return evaluate(QUERY_CODES, DB_CODES, QUERY_LABELS, DB_LABELS, topk=(2, 3, "all"), ties=ties)


def test_index_order_breaks_the_tie_by_database_index():
    res = run("index")  # ranking a, b, c, d: r = 2, 1, 0, 1
    assert res.acg[2] == pytest.approx((2 + 1) / 2)
    assert res.acg[3] == pytest.approx((2 + 1 + 0) / 3)
    assert res.acg["all"] == pytest.approx(4 / 4)
    # relevant at ranks 1, 2, 4: ACG@1 = 2, ACG@2 = 1.5, ACG@4 = 1
    assert res.wmap["all"] == pytest.approx((2 + 1.5 + 1) / 3)
    assert res.wmap[2] == pytest.approx((2 + 1.5) / 2)
    ideal3 = 3 + L3 + 1 / 2  # r sorted 2, 1, 1, 0
    assert res.ndcg[2] == pytest.approx(1.0)
    assert res.ndcg[3] == pytest.approx((3 + L3) / ideal3)
    assert res.map["all"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_expected_rule_averages_the_two_orders_of_the_tie():
    res = run("expected")  # a, b, c, d or a, c, b, d, each with probability ½
    assert res.acg[2] == pytest.approx(((2 + 1) / 2 + (2 + 0) / 2) / 2)
    assert res.acg[3] == pytest.approx(1.0)
    # second order: relevant at ranks 1, 3, 4 with ACG 2, 1, 1
    assert res.wmap["all"] == pytest.approx(((2 + 1.5 + 1) / 3 + (2 + 1 + 1) / 3) / 2)
    assert res.wmap[2] == pytest.approx(((2 + 1.5) / 2 + 2 / 1) / 2)
    ideal2, ideal3 = 3 + L3, 3 + L3 + 1 / 2
    assert res.ndcg[2] == pytest.approx((1.0 + 3 / ideal2) / 2)
    assert res.ndcg[3] == pytest.approx(((3 + L3) / ideal3 + (3 + 1 / 2) / ideal3) / 2)
    assert res.map["all"] == pytest.approx(((1 + 1 + 3 / 4) / 3 + (1 + 2 / 3 + 3 / 4) / 3) / 2)


def test_graded_keys_appear_in_the_flat_metrics_for_multi_hot_labels_only():
    metrics = run("expected").metrics()
    for key in ("NDCG@2", "ACG@2", "wmAP@2", "NDCG@all", "ACG@all", "wmAP@all", "mAP@all"):
        assert key in metrics, key
    single = evaluate(QUERY_CODES, DB_CODES, np.array([0]), np.array([0, 0, 1, 1]), topk=(2, "all")).metrics()
    assert "mAP@all" in single and not any(k.startswith(("NDCG", "ACG", "wmAP")) for k in single)
