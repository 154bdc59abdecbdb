"""DSRH (spec §5): the graded triples, the NDCG-weighted hinge and bit balance on hand-made
multi-label examples, the 2σ(·) − 1 codes, the two-tap skip connection, and a tiny training run on
multi-hot labels through the one trainer."""

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hashlearn.data import ImageDataset, Split
from hashlearn.errors import InputError
from hashlearn.methods import get_method
from hashlearn.methods.base import Batch, MethodOutput, total_loss
from hashlearn.methods.dsrh import DSRH, ideal_dcg
from hashlearn.methods.miners import AllTripletsMiner, GradedTripletMiner, graded_relevance

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config  # noqa: E402

# three images, three labels: r_01 = 2, r_02 = 1, r_12 = 1
LABELS = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
# 2-bit relaxed codes: d_01 = ½(2 − 0) = 1, d_02 = ½(2 + 0.5) = 1.25, d_12 = ½(2 − 0) = 1
CODES = torch.tensor([[0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]])
Z = 3 + 1 / math.log2(3)  # ideal DCG of queries 0 and 1: (2² − 1)/log2 2 + (2¹ − 1)/log2 3


def parts_of(method, codes=CODES, labels=LABELS):
    return method.loss(MethodOutput(codes=codes), Batch(labels=labels, index=torch.arange(len(labels))))


def test_graded_relevance_counts_shared_labels():
    assert graded_relevance(LABELS, LABELS).tolist() == [[2, 2, 1], [2, 3, 1], [1, 1, 1]]
    assert graded_relevance(torch.tensor([0, 1, 0]), torch.tensor([0, 1])).tolist() == [[1, 0], [0, 1], [1, 0]]


def test_graded_miner_yields_every_more_relevant_before_less_relevant_triple():
    q, i, j = GradedTripletMiner()(CODES, LABELS)
    # query 0: x1 (r=2) above x2 (r=1); query 1: x0 (r=2) above x2 (r=1); query 2: x0, x1 both r=1
    assert list(zip(q.tolist(), i.tolist(), j.tolist(), strict=True)) == [(0, 1, 2), (1, 0, 2)]


def test_graded_miner_on_class_ids_gives_the_binary_triplets():
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    codes = torch.zeros(6, 4)
    graded = set(zip(*(t.tolist() for t in GradedTripletMiner()(codes, labels)), strict=True))
    binary = set(zip(*(t.tolist() for t in AllTripletsMiner()(codes, labels)), strict=True))
    assert graded == binary and len(graded) == 3 * (2 * 3) + 2 * (1 * 4)  # class 0: 2 pos × 3 neg per anchor


def test_loss_parts_are_the_spec_formula_on_a_hand_example():
    parts = parts_of(DSRH(bits=2))
    assert list(parts) == ["ranking", "balance"]
    # ω = (2² − 2¹)/Z for both triples; hinges 1 + d_01 − d_02 = 0.75 and 1 + d_10 − d_12 = 1
    assert parts["ranking"].item() == pytest.approx(2 / Z * (0.75 + 1.0))
    # mean code (1/6, −1/6): (α/2)·(1/36 + 1/36)
    assert parts["balance"].item() == pytest.approx(1 / 36)
    assert parts_of(DSRH(bits=2, reduction="mean"))["ranking"].item() == pytest.approx(2 / Z * 1.75 / 3)
    assert parts_of(DSRH(bits=2, normalizer="none"))["ranking"].item() == pytest.approx(2 * 1.75)
    assert parts_of(DSRH(bits=2, normalizer="max"))["ranking"].item() == pytest.approx(1.75)  # Z_q = 2² − 2¹
    assert parts_of(DSRH(bits=2, margin=0.25, alpha=4))["ranking"].item() == pytest.approx(2 / Z * (0.0 + 0.25))
    assert parts_of(DSRH(bits=2, alpha=4))["balance"].item() == pytest.approx(4 / 36)


def loop_formula(codes, labels, margin, alpha):
    """The spec's F written out with loops over (q, i, j), straight from §5."""
    h, y = codes.double().numpy(), labels.double().numpy()
    n, k = h.shape
    ranking = 0.0
    for q in range(n):
        others = [x for x in range(n) if x != q]
        r = {x: float(y[q] @ y[x]) for x in others}
        z = sum((2 ** g - 1) / math.log2(1 + pos) for pos, g in enumerate(sorted(r.values(), reverse=True), 1))
        for i, j in itertools.permutations(others, 2):
            if r[i] > r[j]:
                d_i, d_j = 0.5 * (k - h[q] @ h[i]), 0.5 * (k - h[q] @ h[j])
                ranking += (2 ** r[i] - 2 ** r[j]) / z * max(0.0, margin + d_i - d_j)
    return ranking, alpha / 2 * float((h.mean(axis=0) ** 2).sum())


def test_loss_matches_the_loop_formula_on_random_multi_hot_labels():
    g = torch.Generator().manual_seed(3)
    labels = (torch.rand(10, 5, generator=g) < 0.4).long()
    codes = torch.rand(10, 6, generator=g) * 2 - 1
    parts = parts_of(DSRH(bits=6, margin=2.0, alpha=0.5), codes, labels)
    ranking, balance = loop_formula(codes, labels, 2.0, 0.5)
    assert ranking > 0 and parts["ranking"].item() == pytest.approx(ranking, rel=1e-5)
    assert parts["balance"].item() == pytest.approx(balance, rel=1e-5)


def test_no_triple_gives_a_zero_that_still_backpropagates():
    codes = CODES.clone().requires_grad_(True)
    parts = parts_of(DSRH(bits=2), codes, torch.tensor([[1, 0], [1, 0], [1, 0]]))
    assert parts["ranking"].item() == 0.0
    total_loss(parts).backward()
    assert codes.grad is not None


def test_ideal_dcg_sorts_the_valid_items():
    r = torch.tensor([[0.0, 2.0, 1.0, 3.0]])
    valid = torch.tensor([[True, True, True, False]])
    assert ideal_dcg(r, valid).item() == pytest.approx(3 + 1 / math.log2(3))


def test_codes_are_two_sigmoid_minus_one_of_the_hash_layer_on_both_taps():
    torch.manual_seed(0)
    method = DSRH(bits=5)
    head = method.build_head({"stage5": 4, "stage7": 3}, pooled=False)
    maps = {"stage5": torch.randn(6, 4, 3, 3) * 3, "stage7": torch.randn(6, 3, 2, 2) * 3}
    codes = head(maps).codes
    logits = head.fc(torch.cat([maps["stage5"].mean(dim=(2, 3)), maps["stage7"].mean(dim=(2, 3))], dim=1))
    assert head.fc.in_features == 7
    assert torch.allclose(codes, 2 * torch.sigmoid(logits) - 1)
    assert (codes.abs() < 1).all() and (codes.abs() > 0).any()
    assert torch.equal(codes >= 0, logits >= 0)  # sgn of the relaxed code is the test code


def test_the_skip_connection_reads_two_taps():
    assert DSRH(bits=8).taps(["stage3", "stage5", "stage7"]) == ["stage5", "stage7"]
    assert DSRH(bits=8, taps=["stage6", "pool"]).taps(["stage3", "stage5", "stage7"]) == ["stage6", "pool"]
    head = DSRH(bits=4).build_head({"a": 3, "b": 2}, pooled=True)
    a, b = torch.randn(5, 3, requires_grad=True), torch.randn(5, 2, requires_grad=True)
    head({"a": a, "b": b}).codes.sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    for bad in (["stage7"], ["stage7", "stage7"], ["a", "b", "c"]):
        with pytest.raises(InputError, match="two different backbone taps"):
            DSRH(bits=8, taps=bad)
    with pytest.raises(InputError, match="dsrh: margin"):
        DSRH(bits=8, margin=-1)
    with pytest.raises(InputError, match="dsrh: normalizer"):
        DSRH(bits=8, normalizer="dcg")


def test_the_real_backbone_gives_the_last_two_default_taps():
    from hashlearn.nn import create_backbone

    backbone = create_backbone("efficientnet_lite0", weights=None, taps=None)
    taps = get_method("dsrh")(bits=16).taps(list(backbone.default_taps))
    assert taps == list(backbone.default_taps[-2:]) == ["stage5", "stage7"]


def tiny_multilabel(n: int = 96, classes: int = 4, seed: int = 0) -> tuple[ImageDataset, Split]:
    """8×8 grey images with one bright row pair per label (1 or 2 labels each), and a split."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, classes), dtype=np.uint8)
    images = rng.integers(0, 60, size=(n, 8, 8, 1)).astype(np.uint8)
    for m in range(n):
        for c in rng.choice(classes, size=1 + m % 2, replace=False):
            labels[m, c] = 1
            images[m, 2 * c : 2 * c + 2, :, 0] += 150
    ds = ImageDataset(images=images, labels=labels, ids=[f"img{i}" for i in range(n)],
                      class_names=[f"c{c}" for c in range(classes)], name="tiny-multilabel")
    order = rng.permutation(n)
    q, v, t = np.sort(order[:16]), np.sort(order[16:28]), np.sort(order[28:76])
    split = Split(query=q, train=t, val=v, database=np.setdiff1d(np.arange(n), q), protocol="tiny", seed=seed,
                  n_images=n, dataset=ds.name)
    return ds, split


def test_tiny_training_on_multi_hot_labels_logs_the_parts_and_graded_metrics(tmp_path):
    from hashlearn.train import train

    ds, split = tiny_multilabel()
    cfg = tiny_config(**{"method": "dsrh", "eval.graded_topk": "[10]"})
    (result,) = train(cfg, dataset=ds, split=split, out=tmp_path)
    run = tmp_path / "8bits"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert set(record["parts"]) == {"ranking", "balance"}
        assert record["loss"] == pytest.approx(sum(record["parts"].values()), rel=1e-6)
        assert record["parts"]["ranking"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["multi_label"] and metrics["topk"] == ["10", "all"]
    for key in ("NDCG@10", "ACG@10", "wmAP@10", "NDCG@all", "ACG@all", "wmAP@all", "mAP@all"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert result["mAP@all"] == metrics["mAP@all"]


def test_the_custom_hinge_gradient_is_autograd_of_the_formula():
    g = torch.Generator().manual_seed(5)
    labels = (torch.rand(9, 4, generator=g) < 0.5).long()
    codes = (torch.rand(9, 5, generator=g) * 2 - 1).requires_grad_(True)
    method = DSRH(bits=5, margin=1.5)
    method.loss(MethodOutput(codes=codes), Batch(labels=labels, index=torch.arange(9)))["ranking"].backward()
    plain = codes.detach().clone().requires_grad_(True)
    omega = method._ranking.weights(plain, labels)
    d = 0.5 * (5 - plain @ plain.T)
    (omega * torch.relu(1.5 + d[:, :, None] - d[:, None, :])).sum().backward()
    assert torch.allclose(codes.grad, plain.grad, atol=1e-6) and plain.grad.abs().sum() > 0


@pytest.mark.slow
def test_one_epoch_on_a_generated_hashnet_list_set(tmp_path):
    """NUS-WIDE / MIRFLICKR come as HashNet list files: a generated one trains DSRH for an epoch."""
    from PIL import Image

    from hashlearn.data.datasets import load_dataset
    from hashlearn.train import train

    rng = np.random.default_rng(0)
    root = tmp_path / "mirflickr"
    (root / "images").mkdir(parents=True)
    lists = {"train": [], "test": [], "database": []}
    for k in range(48):
        y = np.zeros(3, dtype=int)
        y[rng.choice(3, size=1 + k % 2, replace=False)] = 1
        pixels = rng.integers(0, 40, (16, 16, 3)).astype(np.uint8)
        pixels[..., :] += (150 * y).astype(np.uint8)  # colour channels carry the labels
        Image.fromarray(pixels).save(root / f"images/im{k}.jpg")
        line = f"images/im{k}.jpg " + " ".join(map(str, y))
        part = "test" if k < 8 else "train" if k < 36 else "database"
        lists[part].append(line)
    lists["database"] += lists["train"]
    for name, lines in lists.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset("mirflickr", root)
    assert ds.multilabel and len(ds) == 48
    cfg = tiny_config(**{"method": "dsrh", "train.epochs": 1, "protocol": "per-label", "eval.graded_topk": "[5]",
                         "protocol_args": "{query_per_label: 2, train_per_label: 8, val_fraction: 0.25}"})
    (result,) = train(cfg, dataset=ds, out=tmp_path / "run")
    assert result["multi_label"] and result["sizes"]["query"] == 6 and result["sizes"]["train"] == 18
    assert {"NDCG@5", "ACG@5", "wmAP@all", "mAP@all"} <= set(result)
