"""The deep baselines of the zoo (HashNet, DHN, DSH, DCH, CSQ, DSDH, GreedyHash, OrthoHash, IDHN):
each loss on a hand-made example against its paper's formula computed here with plain numpy, the
pieces each paper adds (HashNet's β continuation, CSQ's and OrthoHash's centres, DSDH's discrete
step), and one tiny end-to-end ``train`` per method."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hashlearn.errors import InputError
from hashlearn.methods import get_method
from hashlearn.methods.base import Batch, MethodOutput
from hashlearn.methods.centres import hadamard, hash_centres, multilabel_centres, orthogonal_centres
from hashlearn.methods.hashnet import beta_at
from hashlearn.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

# a hand-made batch: 4 images, 3 bits, classes 0, 0, 1, 2
U = np.array([[0.9, -0.2, 0.4], [0.7, 0.1, 0.8], [-0.5, 0.6, -0.3], [0.2, -0.9, -0.6]])
LABELS = np.array([0, 0, 1, 2])
S = (LABELS[:, None] == LABELS[None, :]).astype(float)
OFF = ~np.eye(4, dtype=bool)  # pairs i != j


def run_loss(name, u=U, labels=LABELS, train_labels=None, **args):
    method = get_method(name)(bits=u.shape[1], **args)
    labels_t = torch.as_tensor(labels)
    state = SimpleNamespace(step=0, epoch=1, train_labels=torch.as_tensor(train_labels if train_labels is not None
                                                                          else labels),
                            encode_train=lambda: torch.as_tensor(u, dtype=torch.float32), method_state={})
    method.on_train_start(state)
    out = MethodOutput(codes=torch.tensor(u, dtype=torch.float64))
    parts = method.loss(out, Batch(labels=labels_t, index=torch.arange(len(u))))
    return method, {k: float(v) for k, v in parts.items()}


def softplus(x):
    return np.log1p(np.exp(x))


# --- HashNet ------------------------------------------------------------------------------------------

def test_hashnet_loss_is_the_weighted_likelihood_of_the_paper():
    k = 3
    alpha = 10 / k
    theta = alpha * U @ U.T
    ell = softplus(theta) - S * theta
    n_all, n_sim = OFF.sum(), (S * OFF).sum()
    w = np.where(S > 0, n_all / n_sim, n_all / (n_all - n_sim))  # |S|/|S_1| and |S|/|S_0|
    expected = (w * ell)[OFF].sum() / (2 * n_all)
    _, parts = run_loss("hashnet")
    assert list(parts) == ["likelihood"]
    assert parts["likelihood"] == pytest.approx(expected, rel=1e-9)
    _, plain = run_loss("hashnet", balance=False, alpha=0.5)
    theta_half = 0.5 * (U @ U.T)
    ell_half = softplus(theta_half) - S * theta_half
    assert plain["likelihood"] == pytest.approx(ell_half[OFF].mean(), rel=1e-9)


def test_hashnet_beta_continuation_follows_the_schedule():
    # β_t = (1 + 0.005 t)^0.5, raised every 200 iterations (t = the last multiple of 200 reached)
    assert beta_at(1) == 1.0 and beta_at(199) == 1.0
    assert beta_at(200) == pytest.approx(math.sqrt(2.0)) and beta_at(399) == pytest.approx(math.sqrt(2.0))
    assert beta_at(400) == pytest.approx(math.sqrt(3.0))
    assert beta_at(1000, beta_init=2.0, gamma=0.01, power=1.0, step=10) == pytest.approx(2.0 * 11.0)
    method = get_method("hashnet")(bits=4)
    head = method.build_head({"pool": 5}, pooled=True)
    state = SimpleNamespace(step=0, train_labels=torch.arange(4))
    method.on_train_start(state)
    assert head.beta == 1.0
    state.step = 199  # the trainer counted 199 steps: the coming iteration is the 200th
    method.on_batch_end(state, Batch(labels=torch.arange(4), index=torch.arange(4)),
                        MethodOutput(codes=torch.zeros(4, 4)))
    assert head.beta == pytest.approx(math.sqrt(2.0))
    x = torch.randn(3, 5)
    z = head.fc(x)
    assert torch.allclose(head({"pool": x}).codes, torch.tanh(math.sqrt(2.0) * z))
    state.step = 599  # a resumed run: on_train_start restores β from the step count
    fresh = get_method("hashnet")(bits=4)
    fresh_head = fresh.build_head({"pool": 5}, pooled=True)
    fresh.on_train_start(state)
    assert fresh_head.beta == pytest.approx(math.sqrt(4.0))


# --- DHN ----------------------------------------------------------------------------------------------

def test_dhn_loss_is_likelihood_plus_log_cosh_quantization():
    theta = 0.5 * U @ U.T
    likelihood = (softplus(theta) - S * theta)[OFF].mean()
    quantization = 0.1 * np.log(np.cosh(np.abs(U) - 1)).mean()
    _, parts = run_loss("dhn")
    assert parts == pytest.approx({"likelihood": likelihood, "quantization": quantization}, rel=1e-9)
    _, big = run_loss("dhn", u=np.array([[400.0, -300.0], [1.0, 2.0]]), labels=np.array([0, 1]))
    assert math.isfinite(big["quantization"])  # log cosh of large values does not overflow


# --- DSH ----------------------------------------------------------------------------------------------

def test_dsh_loss_is_contrastive_with_margin_2k_plus_regulariser():
    u = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1])
    # by hand: ‖u0−u1‖² = 2 (similar: ½·2 = 1), ‖u0−u2‖² = 1 and ‖u1−u2‖² = 1 (dissimilar, m = 4: ½·3 = 1.5)
    contrastive = (2 * 1.0 + 4 * 1.5) / 6  # mean over the 6 ordered pairs
    # ‖|u|−1‖₁ = 1, 1, 0 → per pair r_i + r_j: (0,1) 2, (0,2) 1, (1,2) 1 → mean 4/3; α = 0.01
    regulariser = 0.01 * 4 / 3
    _, parts = run_loss("dsh", u=u, labels=labels)
    assert parts == pytest.approx({"contrastive": contrastive, "regulariser": regulariser}, rel=1e-9)


# --- DCH ----------------------------------------------------------------------------------------------

def test_dch_loss_is_weighted_cauchy_cross_entropy_plus_cauchy_quantization():
    k, gamma, lam = 3, 20.0, 0.1
    norms = np.linalg.norm(U, axis=1)
    d = k / 2 * (1 - (U @ U.T) / np.outer(norms, norms))
    p = gamma / (gamma + d)  # the Cauchy probability of similarity
    with np.errstate(divide="ignore", invalid="ignore"):  # the diagonal (d = 0) is not a pair
        ce = -(S * np.log(p) + (1 - S) * np.log(1 - p))
    cauchy = 0.5 * ce[OFF & (S > 0)].mean() + 0.5 * ce[OFF & (S == 0)].mean()
    a = np.abs(U)
    d_q = k / 2 * (1 - a.sum(1) / (np.linalg.norm(a, axis=1) * np.sqrt(k)))
    quantization = lam * np.log(1 + d_q / gamma).mean()
    _, parts = run_loss("dch")
    assert parts == pytest.approx({"cauchy": cauchy, "quantization": quantization}, rel=1e-6)


# --- CSQ ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [12, 16, 32, 48, 64])
def test_hadamard_centres_are_pm1_and_at_least_half_the_bits_apart(bits):
    H = hadamard(bits)
    assert H is not None and np.array_equal(H @ H.T, bits * np.eye(bits))
    centres = hash_centres(2 * bits, bits).numpy()
    assert set(np.unique(centres)) == {-1.0, 1.0}
    d = (bits - centres @ centres.T) / 2
    assert d[~np.eye(2 * bits, dtype=bool)].min() >= bits / 2


def test_csq_uses_bernoulli_centres_beyond_2k_classes_and_for_code_lengths_without_hadamard():
    centres = hash_centres(40, 16, seed=3).numpy()  # 40 > 2·16
    assert centres.shape == (40, 16) and set(np.unique(centres)) == {-1.0, 1.0}
    assert np.array_equal(centres, hash_centres(40, 16, seed=3).numpy())  # seeded
    assert hadamard(28) is None
    centres = hash_centres(10, 28, seed=0).numpy()
    d = (28 - centres @ centres.T)[~np.eye(10, dtype=bool)] / 2
    assert d.min() > 28 / 4 and d.mean() >= 28 / 2  # the acceptance test of Algorithm 1
    with pytest.raises(InputError, match="csq: no Hadamard centres"):
        hash_centres(5, 28, kind="hadamard")


def test_csq_multilabel_centre_is_the_sign_of_the_sum_with_ties_broken():
    centres = torch.tensor([[1.0, 1, -1, -1], [1.0, -1, 1, -1], [1.0, -1, -1, 1]])
    tie = torch.tensor([-1.0, -1, 1, 1])
    labels = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 1]])
    expected = torch.tensor([[1.0, -1, 1, -1], [1.0, -1, -1, -1], [1.0, -1, -1, 1]])
    assert torch.equal(multilabel_centres(labels, centres, tie), expected)


def test_csq_loss_is_central_bce_plus_quantization():
    u = np.tanh(U * 2)
    method, parts = run_loss("csq", u=u)
    c = hash_centres(3, 3, seed=0).numpy()[LABELS]  # 3 bits: no Hadamard matrix → Bernoulli centres
    assert np.array_equal(method.targets(torch.as_tensor(LABELS)).numpy(), c)
    p, t = (u + 1) / 2, (c + 1) / 2
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    quantization = 1e-4 * ((np.abs(u) - 1) ** 2).mean()
    assert parts == pytest.approx({"central": bce, "quantization": quantization}, rel=1e-6)


# --- DSDH ---------------------------------------------------------------------------------------------

def test_dsdh_b_step_never_increases_its_objective():
    from hashlearn.methods.shallow_supervised import dcc_b_step, discrete_objective, ridge_w

    rng = np.random.default_rng(0)
    n, k, c = 60, 8, 5
    Y = np.eye(c)[rng.integers(0, c, n)]
    U_ = rng.standard_normal((n, k))
    B = np.where(rng.standard_normal((n, k)) >= 0, 1.0, -1.0)
    mu, nu, eta = 1.0, 0.1, 55.0
    B0 = B.copy()
    W = ridge_w(B, Y, nu / mu)
    # the W-step is the exact minimiser: the gradient of μ‖Y − BW‖² + ν‖W‖² vanishes there
    assert np.allclose(-2 * mu * B.T @ (Y - B @ W) + 2 * nu * W, 0, atol=1e-8)
    before = discrete_objective(B, W, U_, Y, mu, nu, eta)
    for _ in range(3):
        for d in range(k):  # one bit at a time: never up
            B_next = B.copy()
            rest = np.arange(k) != d
            q = mu * Y @ W[d] + eta * U_[:, d] - mu * B[:, rest] @ (W[rest] @ W[d])
            B_next[:, d] = np.where(q >= 0, 1.0, -1.0)
            assert discrete_objective(B_next, W, U_, Y, mu, nu, eta) <= discrete_objective(B, W, U_, Y, mu, nu,
                                                                                          eta) + 1e-9
            B = B_next
    after = discrete_objective(B, W, U_, Y, mu, nu, eta)
    assert after < before
    assert np.array_equal(dcc_b_step(B0, W, U_, Y, mu, eta, sweeps=3), B)  # the library's step is this one


def test_dsdh_epoch_end_runs_the_discrete_step_and_the_loss_uses_b():
    torch.manual_seed(0)
    n, k = 8, 4
    u = torch.randn(n, k)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    method = get_method("dsdh")(bits=k, pairs="batch")
    state = SimpleNamespace(step=0, epoch=1, train_labels=labels, encode_train=lambda: u, method_state={})
    method.on_train_start(state)
    assert torch.equal(method.state_dict()["B"], torch.where(u >= 0, 1.0, -1.0))
    method.on_epoch_end(state)
    trace = method.objective_trace
    assert len(trace) == 10 and all(b <= a + 1e-6 for a, b in zip(trace, trace[1:], strict=False))
    B = method.state_dict()["B"]
    parts = method.loss(MethodOutput(codes=u[:4].double()), Batch(labels=labels[:4], index=torch.arange(4)))
    un, lab = u[:4].double().numpy(), labels[:4].numpy()
    s = (lab[:, None] == lab[None, :]).astype(float)
    theta = 0.5 * un @ un.T
    off = ~np.eye(4, dtype=bool)
    assert float(parts["likelihood"]) == pytest.approx((softplus(theta) - s * theta)[off].mean(), rel=1e-9)
    quantization = 55.0 * ((B[:4].double().numpy() - un) ** 2).sum(1).mean() / n  # η Σ‖b − u‖² / N, per image
    assert float(parts["quantization"]) == pytest.approx(quantization, rel=1e-6)


# --- GreedyHash ---------------------------------------------------------------------------------------

def test_greedyhash_sign_forward_identity_backward_and_its_loss():
    from hashlearn.methods.greedyhash import sign_straight_through

    h = torch.tensor([[0.5, -2.0, 0.0]], requires_grad=True)
    b = sign_straight_through(h)
    assert torch.equal(b, torch.tensor([[1.0, -1.0, 1.0]]))
    (b * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert torch.equal(h.grad, torch.tensor([[1.0, 2.0, 3.0]]))  # straight through

    method = get_method("greedyhash")(bits=3, classes=3)
    head = method.build_head({"pool": 3}, pooled=True)
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(3))
        head.fc.bias.zero_()
        head.classifier.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]]))
    x = torch.tensor(U, dtype=torch.float32)
    with torch.no_grad():
        parts = method.loss(head({"pool": x}), Batch(labels=torch.as_tensor(LABELS), index=torch.arange(4)))
    logits = np.where(U >= 0, 1.0, -1.0) * np.array([1.0, 1.0, 2.0])
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_p[np.arange(4), LABELS].mean()
    penalty = 0.1 * (np.abs(np.abs(U) - 1) ** 3).mean()
    assert float(parts["classification"]) == pytest.approx(ce, rel=1e-6)
    assert float(parts["penalty"]) == pytest.approx(penalty, rel=1e-6)


def test_greedyhash_without_classes_says_so():
    with pytest.raises(InputError, match="greedyhash: classes"):
        get_method("greedyhash")(bits=8).build_head({"pool": 4}, pooled=True)


# --- OrthoHash ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("classes", "bits"), [(10, 16), (10, 12), (21, 48), (64, 64)])
def test_orthohash_codebook_is_orthogonal(classes, bits):
    O = orthogonal_centres(classes, bits).numpy()
    assert set(np.unique(O)) == {-1.0, 1.0}
    assert np.array_equal(O @ O.T, bits * np.eye(classes))


def test_orthohash_loss_is_the_cosine_margin_cross_entropy():
    s, m = 8.0, 0.2
    u = np.array([[0.9, -0.2, 0.4, 0.1], [0.7, 0.1, 0.8, -0.3], [-0.5, 0.6, -0.3, 0.2], [0.2, -0.9, -0.6, 0.4]])
    method, parts = run_loss("orthohash", u=u)
    O = orthogonal_centres(3, 4).numpy()
    cos = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (O / 2).T
    logits = s * (cos - m * np.eye(3)[LABELS])
    ce = -(logits[np.arange(4), LABELS] - np.log(np.exp(logits).sum(1))).mean()
    assert list(parts) == ["cosine_ce"] and parts["cosine_ce"] == pytest.approx(ce, rel=1e-6)
    # multi-label: margin at every positive label, label-smoothed target y / Σy; the quantization term when asked
    y = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    _, parts = run_loss("orthohash", u=u, labels=y, quantization=0.5)
    logits = s * (cos - m * y)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -((y / y.sum(1, keepdims=True)) * log_p).sum(1).mean()
    b = np.where(u >= 0, 1.0, -1.0)
    quantization = 0.5 * (1 - (u * b).sum(1) / (np.linalg.norm(u, axis=1) * 2)).mean()
    assert parts == pytest.approx({"cosine_ce": ce, "quantization": quantization}, rel=1e-6)


# --- IDHN ---------------------------------------------------------------------------------------------

def test_idhn_graded_similarity_and_its_two_pair_losses():
    k = 3
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]])
    ny = y / np.linalg.norm(y, axis=1, keepdims=True)
    s = ny @ ny.T  # cosine of the label vectors: 1/√2 for rows 0 and 1, 1 for rows 0 and 3, 0 for disjoint
    assert s[0, 1] == pytest.approx(1 / math.sqrt(2)) and s[0, 3] == pytest.approx(1.0) and s[0, 2] == 0
    u = U / (1 + np.abs(U))  # softsign codes
    ip = u @ u.T
    theta = 5.0 / k * ip
    hard = ((s < 0.01) | (s > 0.99)) & OFF
    soft = ~((s < 0.01) | (s > 0.99)) & OFF
    likelihood = (softplus(theta) - s * theta)[hard].sum() / OFF.sum()
    squared = (0.1 * k * ((ip + k) / (2 * k) - s) ** 2)[soft].sum() / OFF.sum()
    quantization = 0.1 * np.abs(np.abs(u) - 1).mean()
    _, parts = run_loss("idhn", u=u, labels=y)
    assert soft.sum() == 4  # (0,1), (1,0), (1,3), (3,1)
    assert parts == pytest.approx({"likelihood": likelihood, "soft": squared, "quantization": quantization},
                                  rel=1e-6)


# --- one tiny end-to-end run per method ---------------------------------------------------------------

ZOO = ["hashnet", "dhn", "dsh", "dch", "csq", "dsdh", "greedyhash", "orthohash", "idhn"]


@pytest.mark.parametrize("name", ZOO)
def test_each_trains_end_to_end_on_tiny_data(name, tmp_path):
    ds = tiny_dataset()
    split = tiny_split(ds)
    overrides = {"method": name, "train.epochs": 1}
    if name == "greedyhash":
        overrides["method_args"] = "{classes: 4}"
    train(tiny_config(**overrides), dataset=ds, split=split, out=tmp_path)
    run = tmp_path / "8bits"
    (record,) = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert record["loss"] == pytest.approx(sum(record["parts"].values()), rel=1e-5)
    assert all(math.isfinite(v) for v in record["parts"].values())
    assert (run / "query_codes.npz").exists()
    if name == "dsdh":  # its discrete codes are checkpointed with the run
        state = torch.load(run / "checkpoint.pt", weights_only=True)["method_state"]
        assert state["B"].shape == (len(split.train), 8) and set(state["B"].unique().tolist()) == {-1.0, 1.0}


BAD = [
    ("hashnet", {"beta_step": 0}, "beta_step"),
    ("hashnet", {"alpha": -1}, "alpha"),
    ("hashnet", {"balance": "yes"}, "balance"),
    ("dhn", {"lam": "much"}, "lam"),
    ("dsh", {"margin": -2}, "margin"),
    ("dch", {"gamma": 0}, "gamma"),
    ("csq", {"centres": "gauss"}, "centres"),
    ("csq", {"classes": 1}, "classes"),
    ("dsdh", {"dcc_iters": 0}, "dcc_iters"),
    ("dsdh", {"pairs": "some"}, "pairs"),
    ("greedyhash", {"alpha": float("nan")}, "alpha"),
    ("orthohash", {"codebook": "random"}, "codebook"),
    ("orthohash", {"m": -0.1}, "m"),
    ("idhn", {"beta": None}, "beta"),
]


@pytest.mark.parametrize(("name", "args", "argument"), BAD, ids=[f"{n}-{a}" for n, _, a in BAD])
def test_a_bad_argument_is_one_line_naming_it(name, args, argument):
    with pytest.raises(InputError, match=rf"^{name}: {argument} ") as exc:
        get_method(name)(bits=8, **args)
    assert "\n" not in str(exc.value)


def test_methods_with_class_centres_need_on_train_start():
    for name in ("csq", "orthohash"):
        method = get_method(name)(bits=8)
        with pytest.raises(InputError, match=f"^{name}: the"):
            method.loss(MethodOutput(codes=torch.zeros(2, 8)), Batch(labels=torch.tensor([0, 1]),
                                                                     index=torch.arange(2)))
