"""The supervised shallow hashers (SDH, KSH, CCA-ITQ): their discrete and spectral steps against the
formulas on hand-made examples, and codes that beat LSH on a separable synthetic set."""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hashlearn.errors import InputError
from hashlearn.eval import evaluate
from hashlearn.methods import METHODS
from hashlearn.methods.shallow import LSH, load_hasher, save_hasher
from hashlearn.methods.shallow_supervised import (
    CCAITQ,
    KSH,
    SDH,
    cca_directions,
    dcc_b_step,
    discrete_objective,
    ksh_bit,
    ridge_w,
)
from hashlearn.train import load_run, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402


def separable(n_per_class=60, classes=4, dims=24, seed=0):
    """Classes separated along 4 directions, hidden under 20 noise dimensions of larger variance
    (the largest-variance directions, which LSH and PCA follow, carry no class)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    X = rng.standard_normal((len(y), dims)) * 3.0
    X[:, :classes] = rng.standard_normal((len(y), classes)) * 0.3
    X[np.arange(len(y)), y] += 2.0
    order = rng.permutation(len(y))
    return X[order], y[order]


def mean_ap(model, X, y, Xq, yq):
    return float(evaluate(model.encode(Xq), model.encode(X), yq, y, topk=("all",)).map["all"])


def test_registered_as_shallow_with_their_papers():
    for name, cls, author in (("sdh", SDH, "Shen"), ("ksh", KSH, "Liu"), ("cca-itq", CCAITQ, "Gong")):
        assert METHODS.get(name) is cls and METHODS.info(name)["kind"] == "shallow"
        assert author in METHODS.info(name)["paper"]


@pytest.mark.parametrize("cls", [SDH, KSH, CCAITQ])
def test_supervised_hashers_beat_lsh_on_a_separable_set(cls):
    X, y = separable()
    Xq, yq = separable(n_per_class=15, seed=1)
    lsh = mean_ap(LSH(bits=16, random_state=0).fit(X), X, y, Xq, yq)
    model = cls(bits=16, random_state=0).fit(X, y)
    supervised = mean_ap(model, X, y, Xq, yq)
    assert supervised > lsh + 0.2, (cls.__name__, supervised, lsh)


@pytest.mark.parametrize("cls", [SDH, KSH, CCAITQ])
def test_fit_needs_labels_and_the_model_file_round_trips(cls, tmp_path):
    X, y = separable(n_per_class=20)
    with pytest.raises(InputError, match="needs the training labels"):
        cls(bits=8).fit(X)
    with pytest.raises(InputError, match="class ids"):
        cls(bits=8).fit(X, y[:-1])
    model = cls(bits=8, random_state=0).fit(X, np.eye(4)[y])  # multi-hot rows work too
    again = load_hasher(save_hasher(model, tmp_path / "model.npz"))
    assert type(again) is cls and np.array_equal(again.encode(X), model.encode(X))


# --- the discrete step SDH and DSDH share ------------------------------------------------------------

def test_ridge_w_and_the_objective_on_a_hand_made_example():
    B = np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    Y = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # BᵀB = [[3, -1], [-1, 3]], + λI (λ = 1) = [[4, -1], [-1, 4]]; BᵀY = [[2, -1], [0, 1]]
    expected = np.linalg.inv(np.array([[4.0, -1.0], [-1.0, 4.0]])) @ np.array([[2.0, -1.0], [0.0, 1.0]])
    W = ridge_w(B, Y, 1.0)
    assert np.allclose(W, expected)
    F = np.array([[0.5, -0.5], [1.0, 0.0], [0.0, 2.0]])
    by_hand = 2.0 * ((Y - B @ W) ** 2).sum() + 0.3 * (W ** 2).sum() + 0.7 * ((B - F) ** 2).sum()
    assert discrete_objective(B, W, F, Y, 2.0, 0.3, 0.7) == pytest.approx(by_hand)


def test_each_dcc_bit_update_is_the_exact_minimiser_over_that_bit():
    rng = np.random.default_rng(1)
    n, k, c = 5, 3, 2
    Y = np.eye(c)[rng.integers(0, c, n)]
    F = rng.standard_normal((n, k))
    W = rng.standard_normal((k, c))
    B = np.where(rng.standard_normal((n, k)) >= 0, 1.0, -1.0)
    mu, nu = 1.0, 0.5
    new = dcc_b_step(B, W, F, Y, mu, nu, sweeps=1)
    # bit 0 alone, by brute force row by row (the rows are independent given the other bits)
    for i in range(n):
        costs = {}
        for v in (-1.0, 1.0):
            row = B[i].copy()
            row[0] = v
            costs[v] = mu * ((Y[i] - row @ W) ** 2).sum() + nu * ((row - F[i]) ** 2).sum()
        best = min(costs, key=costs.get)
        bit0 = dcc_b_step(B, W, F, Y, mu, nu, sweeps=1)  # the first update of the sweep is bit 0
        assert bit0[i, 0] == best or costs[1.0] == costs[-1.0]
    assert discrete_objective(new, W, F, Y, mu, 0.0, nu) <= discrete_objective(B, W, F, Y, mu, 0.0, nu)


def test_sdh_b_steps_never_increase_its_objective():
    X, y = separable(n_per_class=30)
    model = SDH(bits=12, anchors=50, random_state=0).fit(X, y)
    trace = model.objective_
    assert len(trace) == 2 * model.n_iter
    before, after = trace[0::2], trace[1::2]
    assert np.all(after <= before + 1e-9)  # each B-step (DCC) never increases it
    assert after[-1] < before[0]


def test_sdh_features_are_the_rbf_kernel_on_the_anchors_and_a_bias():
    X, y = separable(n_per_class=10)
    model = SDH(bits=4, anchors=7, random_state=0).fit(X, y)
    Xc = X - model.mean_
    d2 = ((Xc[:, None, :] - model.anchors_[None, :, :]) ** 2).sum(-1)
    assert float(model.sigma_) ** 2 == pytest.approx(d2.mean())  # σ² = the mean squared distance to the anchors
    phi = np.exp(-d2 / (2 * d2.mean()))
    assert np.allclose(model.features(Xc), np.hstack([phi, np.ones((len(X), 1))]))
    assert float(SDH(bits=4, anchors=7, sigma=0.4, random_state=0).fit(X, y).sigma_) == 0.4
    assert model.projection_.shape == (8, 4)


# --- KSH ------------------------------------------------------------------------------------------------

def test_ksh_bit_is_no_worse_than_the_spectral_start_and_bits_fit_ks_greedily():
    rng = np.random.default_rng(0)
    K = rng.standard_normal((30, 6))
    y = rng.integers(0, 3, 30)
    S = np.where(y[:, None] == y[None, :], 1.0, -1.0)
    a = ksh_bit(K, 4 * S, gd_iters=50)
    h = np.where(K @ a >= 0, 1.0, -1.0)
    # no sign pattern of K a from random directions does better than the chosen bit by a wide margin
    random_best = max(float(np.where(K @ v >= 0, 1.0, -1.0) @ S @ np.where(K @ v >= 0, 1.0, -1.0))
                      for v in rng.standard_normal((50, 6)))
    assert float(h @ S @ h) >= random_best - 1e-9
    X, labels = separable(n_per_class=25)
    model = KSH(bits=8, anchors=40, n_labelled=100, random_state=0).fit(X, labels)
    lsh = LSH(bits=8, random_state=0).fit(X)
    S_all = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)

    def fit_error(codes):
        H = codes.astype(float)
        return ((H @ H.T - 8 * S_all) ** 2).sum()

    assert fit_error(model.encode(X)) < 0.7 * fit_error(lsh.encode(X))


# --- CCA-ITQ ----------------------------------------------------------------------------------------------

def test_cca_directions_reach_their_canonical_correlations():
    X, y = separable(n_per_class=40)
    Xc = X - X.mean(0)
    Y = np.eye(4)[y]
    W, r = cca_directions(Xc, Y, 3, 1e-8)
    assert np.all(np.diff(r) <= 1e-12) and r[0] > 0.9
    for j in range(3):  # the correlation of X w_j with its best linear prediction from Y is r_j
        z = Xc @ W[:, j]
        Yc = Y - Y.mean(0)
        fitted = Yc @ np.linalg.lstsq(Yc, z, rcond=None)[0]
        assert np.corrcoef(z, fitted)[0, 1] == pytest.approx(r[j], abs=1e-5)
    model = CCAITQ(bits=3, random_state=0).fit(X, y)
    assert np.allclose(model.components_, cca_directions(Xc, Y, 3, 1e-4)[0] * model.correlations_)
    assert np.all(np.diff(model.quantization_loss_) <= 1e-9)  # ITQ's rotation (the one implementation)
    with pytest.raises(InputError, match="exceeds the 24 input dimensions"):
        CCAITQ(bits=30).fit(X, y)


def test_codes_are_pm1_with_the_requested_bits():
    X, y = separable(n_per_class=10)
    for cls, bits in itertools.product((SDH, KSH, CCAITQ), (5, 12)):
        codes = cls(bits=bits, random_state=0).fit(X, y).encode(X[:7])
        assert codes.shape == (7, bits) and codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}


@pytest.mark.parametrize("name", ["sdh", "ksh", "cca-itq"])
def test_trains_from_the_training_command_with_the_split_labels(name, tmp_path):
    ds = tiny_dataset()
    split = tiny_split(ds)
    train(tiny_config(method=name), dataset=ds, split=split, out=tmp_path)
    run = tmp_path / "8bits"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "shallow" and metrics["mAP@all"] > 0.5  # 4 classes: chance is about 0.25
    assert type(load_run(run).model) is METHODS.get(name)
