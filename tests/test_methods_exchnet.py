"""ADSH and ExchNet (spec §6): the bit-by-bit V update, V in the checkpoint, the two attention
constraints on hand-made maps, the part exchange (same part, same class, only after the alignment
start), asymmetric retrieval through V, and tiny training runs of both methods."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hashlearn.codes import load_codes
from hashlearn.errors import InputError
from hashlearn.methods.adsh import ADSH, adsh_objective, signed_similarity, update_database_codes
from hashlearn.methods.base import Batch, similarity
from hashlearn.methods.exchnet import (
    ExchNet,
    channel_diversity,
    exchange_parts,
    hellinger,
    spatial_diversity,
)
from hashlearn.train.run import asymmetric_database, train
from hashlearn.train.runfolder import load_checkpoint
from test_train_tiny import tiny_config, tiny_dataset, tiny_split

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_problem(seed: int, n: int = 12, k: int = 6, m: int = 5, classes: int = 3, kind: str = "signed"):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    omega = torch.randperm(n, generator=g)[:m]
    U = torch.tanh(2 * torch.randn(m, k, generator=g))
    V = torch.where(torch.rand(n, k, generator=g) < 0.5, 1.0, -1.0)
    S = signed_similarity(similarity(labels[omega], labels), kind)
    return V, U, S, omega


# --- the V step --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["signed", "rebalanced"])
@pytest.mark.parametrize("seed", range(5))
def test_one_bit_by_bit_sweep_never_increases_the_adsh_objective(seed, kind):
    V, U, S, omega = random_problem(seed, kind=kind)
    for gamma in (0.0, 200.0):
        before = float(adsh_objective(V, U, S, omega, gamma, 6))
        after = float(adsh_objective(update_database_codes(V, U, S, omega, gamma, 6), U, S, omega, gamma, 6))
        assert after <= before + 1e-6 * abs(before)


def test_each_column_update_is_the_exact_minimiser_of_that_column():
    """Bit 0 of the sweep: brute force over all 2^n columns, the others fixed."""
    n, k, gamma = 6, 3, 5.0
    V, U, S, omega = random_problem(3, n=n, k=k, m=4)
    new = update_database_codes(V, U, S, omega, gamma, k)
    best, best_col = math.inf, None
    for col in itertools.product((-1.0, 1.0), repeat=n):
        trial = V.clone()
        trial[:, 0] = torch.tensor(col)
        value = float(adsh_objective(trial, U, S, omega, gamma, k))
        if value < best - 1e-9:
            best, best_col = value, torch.tensor(col)
    first = V.clone()
    first[:, 0] = new[:, 0]
    assert float(adsh_objective(first, U, S, omega, gamma, k)) == pytest.approx(best, rel=1e-6)
    assert torch.equal(new[:, 0], best_col)


def test_signed_and_rebalanced_similarity():
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(signed_similarity(s, "signed"), torch.tensor([[1.0, -1.0, -1.0, -1.0]]))
    r = 1 / 3  # Σ s / Σ (1 − s)
    assert torch.allclose(signed_similarity(s, "rebalanced"), torch.tensor([[1.0, -r, -r, -r]]))


def test_the_adsh_loss_is_its_formula():
    method = ADSH(bits=2, gamma=3.0)
    labels = torch.tensor([0, 1, 0])
    method.on_train_start(SimpleNamespace(train_labels=labels, trainer=None))
    V = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    method.codes_state.V = V
    u = torch.tensor([[0.5, -0.5]])
    parts = method.loss(SimpleNamespace(codes=u, extras={}), Batch(labels=torch.tensor([1]), index=torch.tensor([1])))
    S = torch.tensor([[-1.0, 1.0, -1.0]])
    assert float(parts["similarity"]) == pytest.approx(float((u @ V.T - 2 * S).pow(2).sum()) / 3)
    assert float(parts["quantization"]) == pytest.approx(3.0 * float((V[1] - u[0]).pow(2).sum()) / 3)


# --- the constraints ---------------------------------------------------------------------------------
def _maps_from_spatial(dists: list[list[float]], channels: int = 2) -> torch.Tensor:
    """Part maps ``(1, M, D, 2, 2)`` whose channel mean is log p_m (so its softmax is p_m)."""
    logs = torch.log(torch.tensor(dists)).reshape(1, len(dists), 1, 2, 2)
    return logs.expand(1, len(dists), channels, 2, 2).clone()


def test_spatial_diversity_is_one_minus_the_mean_hellinger_distance():
    p1, p2, p3 = [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]
    def h(a, b):
        return math.sqrt(0.5 * sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a, b, strict=True)))

    assert h(p1, p2) == pytest.approx(math.sqrt(0.7) - math.sqrt(0.1))
    assert float(spatial_diversity(_maps_from_spatial([p1, p2]))) == pytest.approx(1 - h(p1, p2), abs=1e-5)
    three = (h(p1, p2) + h(p1, p3) + h(p2, p3)) / 3
    assert float(spatial_diversity(_maps_from_spatial([p1, p2, p3]))) == pytest.approx(1 - three, abs=1e-5)
    assert float(spatial_diversity(_maps_from_spatial([p1, p1]))) == pytest.approx(1.0, abs=1e-5)
    # a batch: the mean over images
    batch = torch.cat([_maps_from_spatial([p1, p2]), _maps_from_spatial([p1, p1])])
    assert float(spatial_diversity(batch)) == pytest.approx(((1 - h(p1, p2)) + 1.0) / 2, abs=1e-5)


def test_channel_diversity_is_a_hinge_on_the_mean_hellinger_distance():
    q1, q2 = [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]
    h12 = math.sqrt(0.5 * 2 * (math.sqrt(0.6) - math.sqrt(0.2)) ** 2)
    parts = torch.log(torch.tensor([[q1, q2]]))
    assert float(hellinger(torch.tensor(q1), torch.tensor(q2))) == pytest.approx(h12, abs=1e-6)
    assert float(channel_diversity(parts, margin=0.4)) == pytest.approx(max(0.0, 0.4 - h12), abs=1e-6)
    assert float(channel_diversity(parts, margin=0.9)) == pytest.approx(0.9 - h12, abs=1e-6)
    same = torch.log(torch.tensor([[q1, q1]]))
    assert float(channel_diversity(same, margin=0.4)) == pytest.approx(0.4, abs=1e-5)


# --- the exchange ------------------------------------------------------------------------------------
def test_exchange_swaps_only_the_same_part_of_the_same_class():
    g = torch.Generator().manual_seed(0)
    parts = torch.randn(8, 3, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    anchors = 100 + torch.arange(3 * 3 * 5, dtype=torch.float32).reshape(3, 3, 5)
    out, mask = exchange_parts(parts, labels, anchors, 0.5, generator=g)
    assert mask.any() and (~mask).any()
    for i in range(8):
        for m in range(3):
            expected = anchors[labels[i], m] if mask[i, m] else parts[i, m]
            assert torch.equal(out[i, m], expected)
    assert torch.equal(exchange_parts(parts, labels, anchors, 0.0)[0], parts)
    assert torch.equal(exchange_parts(parts, labels, anchors, 1.0)[0], anchors[labels])


def _exchnet_state(method, n: int = 12, classes: int = 3, channels: int = 6):
    torch.manual_seed(0)
    labels = torch.arange(n) % classes
    x = torch.randn(n, channels, 2, 2)
    head = method.build_head({"t": channels}, pooled=False)
    state = SimpleNamespace(trainer=None, epoch=1, step=0, train_labels=labels, head=head,
                            head_inputs=lambda: iter([{"t": x[:5]}, {"t": x[5:]}]))
    return state, head, x, labels


def test_the_exchange_and_the_alignment_start_only_after_the_alignment_start():
    method = ExchNet(bits=8, parts=2, width=4, inner_epochs=1, align_start=2, num_samples=12, tap="t")
    state, head, x, labels = _exchnet_state(method)
    method.on_train_start(state)
    batch = Batch(labels=labels, index=torch.arange(len(labels)))
    for epoch in (1, 2, 3):
        state.epoch = epoch
        method.on_epoch_start(state)
        if epoch == 3:  # the anchors: class means of the part features, network in eval mode
            head.eval()
            with torch.no_grad():
                feats = head({"t": x}).extras["parts"]
            means = torch.stack([feats[labels == c].mean(0) for c in range(3)])
            assert torch.allclose(method.anchors, means, atol=1e-6)
        head.train()
        out = head({"t": x})
        parts = method.loss(out, batch)
        if epoch <= 2:
            assert method.anchors is None and "alignment" not in parts and "train_codes" not in out.extras
        else:
            assert "alignment" in parts and "train_codes" in out.extras
            assert not torch.equal(out.extras["train_codes"], out.codes.detach())
        method.on_epoch_end(state)


def test_exchnet_refuses_multi_hot_labels_with_the_exchange_on():
    method = ExchNet(bits=8, tap="t")
    with pytest.raises(InputError, match="one class per image"):
        method.on_train_start(SimpleNamespace(train_labels=torch.eye(4), trainer=None))
    ExchNet(bits=8, tap="t", align_start=None).on_train_start(SimpleNamespace(train_labels=torch.eye(4), trainer=None))


@pytest.mark.parametrize("kwargs", [{"parts": 1}, {"exchange_prob": 1.5}, {"align_start": -1}, {"width": 0}])
def test_exchnet_bad_settings_are_one_line_errors(kwargs):
    with pytest.raises(InputError, match="exchnet"):
        ExchNet(bits=8, **kwargs)


# --- trainer, checkpoint, asymmetric evaluation ---------------------------------------------------------------
def test_asymmetric_database_takes_v_for_the_training_images_only():
    db_signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.int8)
    db_index = np.array([2, 5, 7, 9])
    learned = np.array([[-1, -1], [1, 1]], dtype=np.int8)  # for training images 7 and 2
    out, covered = asymmetric_database(db_signs, db_index, np.array([7, 2]), learned)
    assert covered == 2
    assert np.array_equal(out, [[1, 1], [1, -1], [-1, -1], [-1, -1]])
    assert np.array_equal(db_signs[0], [1, 1])  # the input is left alone


def _tiny_run(tmp_path, method: str, args: str, epochs: int = 3, **sets):
    ds, split = tiny_dataset(), None
    split = tiny_split(ds)
    cfg = tiny_config(method=method, method_args=args, **{"train.epochs": epochs}, **sets)
    metrics = train(cfg, dataset=ds, split=split, out=tmp_path / method, progress=False)[0]
    return ds, split, metrics, tmp_path / method / "8bits"


@pytest.mark.parametrize("method,args", [
    ("adsh", "{num_samples: 32, inner_epochs: 1}"),
    ("exchnet", "{num_samples: 32, inner_epochs: 1, align_start: 1, width: 8}"),
])
def test_tiny_training_with_asymmetric_retrieval_through_v(tmp_path, method, args):
    ds, split, metrics, run_dir = _tiny_run(tmp_path, method, args)
    assert metrics["retrieval"] == "asymmetric"
    assert metrics["database_learned_codes"] == len(split.train)  # tiny: training ⊂ database
    assert "mAP@all" in metrics["symmetric"]
    log = [line for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    V = ckpt["method_state"]["database.V"]
    assert V.shape == (len(split.train), 8) and set(V.unique().tolist()) == {-1.0, 1.0}
    if method == "exchnet":
        assert ckpt["method_state"]["anchors.anchors"].shape == (4, 4, 8)
    db = load_codes(run_dir / "database_codes.npz")
    bits = db.unpacked().astype(np.int8) * 2 - 1
    rows = {d: j for j, d in enumerate(split.database)}
    for i, t in enumerate(split.train):
        assert np.array_equal(bits[rows[t]], V[i].numpy().astype(np.int8))


def test_symmetric_retrieval_reencodes_the_database(tmp_path):
    _, _, metrics, run_dir = _tiny_run(tmp_path, "adsh", "{num_samples: 32, inner_epochs: 1}", epochs=1,
                                       **{"eval.retrieval": "symmetric"})
    assert metrics["retrieval"] == "symmetric" and "symmetric" not in metrics
    _, _, dpsh, _ = _tiny_run(tmp_path, "dpsh", "{}", epochs=1)
    assert dpsh["retrieval"] == "symmetric"  # auto: a method without learned database codes


def test_asymmetric_retrieval_needs_a_method_that_learns_database_codes(tmp_path):
    with pytest.raises(InputError, match="learns the database codes"):
        _tiny_run(tmp_path, "dpsh", "{}", epochs=1, **{"eval.retrieval": "asymmetric"})


def test_steps_run_over_the_sample_and_v_is_restored_on_resume(tmp_path):
    ds, split = tiny_dataset(), None
    split = tiny_split(ds)
    seen = []

    class Watched(ADSH):
        def on_batch_end(self, state, batch, out):
            seen.append((state.epoch, set(batch.index.tolist()), set(self.codes_state.omega.tolist())))
            super().on_batch_end(state, batch, out)

    from hashlearn.train.model import FitJob, new_hasher

    cfg = tiny_config(method="adsh", method_args="{num_samples: 32, inner_epochs: 2}", **{"train.epochs": 2})
    hasher = new_hasher(cfg, 1, 8)
    hasher.deep_method.__class__ = Watched
    parts = {k: getattr(split, k) for k in ("query", "train", "val", "database")}
    hasher.fit(FitJob(ds, parts, tmp_path / "r", progress=False))
    assert seen and all(idx <= omega and len(omega) == 32 for _, idx, omega in seen)
    assert len({frozenset(o) for _, _, o in seen}) == 1  # one outer iteration: one Ω over both epochs
    first = hasher.deep_method.state_dict()
    # a new run resumes from the checkpoint: the same V, Ω and U
    again = new_hasher(cfg, 1, 8)
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    again.deep_method.load_state_dict(ckpt["method_state"])
    again.deep_method.on_train_start(SimpleNamespace(train_labels=torch.as_tensor(ds.labels[split.train]),
                                                     trainer=None))
    restored = again.deep_method.state_dict()
    assert set(restored) == set(first) >= {"database.V", "database.omega", "database.U", "database.outer"}
    assert all(torch.equal(restored[k], first[k]) for k in first)


def test_adsh_heads_and_bad_settings():
    x = {"pool": torch.randn(4, 10)}
    linear = ADSH(bits=6).build_head({"pool": 10}, pooled=True)
    mlp = ADSH(bits=6, head="mlp", mid_channels=5).build_head({"pool": 10}, pooled=True)
    assert isinstance(linear.fc, torch.nn.Linear) and not isinstance(mlp.fc, torch.nn.Linear)
    for head in (linear, mlp):
        u = head(x).codes.detach()
        assert u.shape == (4, 6) and float(u.abs().max()) < 1  # tanh codes
    for kwargs in ({"head": "conv"}, {"num_samples": 0}, {"gamma": -1}, {"similarity": "cosine"}):
        with pytest.raises(InputError, match="adsh"):
            ADSH(bits=6, **kwargs)
    assert "head" not in ExchNet(bits=6).hparams()  # ExchNet builds its own head


@pytest.mark.slow
def test_two_processes_fill_u_from_both_ranks(tmp_path):
    """Data parallel: each rank steps over its half of every global batch, and U_Ω gets the rows of both
    (all-gathered), so V's update sees every sampled image stepped over; Ω and V come from the seed."""
    import sys

    from test_train_distributed import ARGS, _free_port, _run

    args = [a if a != "dpsh" else "adsh" for a in ARGS]
    args += ["--set", "method_args={num_samples: 90, inner_epochs: 2}"]
    out = tmp_path / "two"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
          "--master-port", str(_free_port()), "-m", "hashlearn", *args, "--out", str(out)], tmp_path, out=out)
    state = torch.load(out / "16bits/checkpoint.pt", weights_only=True)["method_state"]
    stepped = (90 // 30) * 30  # global batches of 30 over Ω: every sampled image, both epochs
    assert len(state["database.omega"]) == 90
    assert int((state["database.U"].abs().sum(dim=1) > 0).sum()) == stepped
    assert set(state["database.V"].unique().tolist()) == {-1.0, 1.0}
