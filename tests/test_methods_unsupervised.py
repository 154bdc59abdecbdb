"""Label-free methods: DSAH (ANC similarity, AND rounds, PIC), BCDH (pair loss, B-steps, pair sources),
SSDH-U, GreedyHash-U, Bi-half, and the trainer hiding labels from them."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hashlearn.errors import InputError
from hashlearn.methods.base import Batch, Method, MethodOutput
from hashlearn.methods.bcdh import (
    BCDH,
    binary_objective,
    closed_form_codes,
    coordinate_descent,
    pair_loss,
)
from hashlearn.methods.bihalf import bihalf
from hashlearn.methods.dsah import (
    DSAH,
    PackedSimilarity,
    anc_neighbours,
    and_update,
    dsah_loss,
    initial_similarity,
    knn_lists,
    pic_weights,
)
from hashlearn.methods.greedyhash import sign_straight_through
from hashlearn.methods.label_free import PooledHead
from hashlearn.methods.pairs import SfMPairs, read_sfm_metadata, synthetic_views
from hashlearn.methods.ssdh_u import distance_thresholds, pseudo_similarity

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- DSAH: the initial similarity ------------------------------------------------------------------------------
# points on a line: a tight group {0, 1, 2}, a looser group {3, 4, 5, 6} and an outlier 7
LINE = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [13.0], [16.0], [30.0]])


def brute_force_anc(x: np.ndarray, k1: int, k2: int, rule: str) -> list[set]:
    """The intended rule written out with Python sets (the reference for the implementation)."""
    n = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    knn = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: (j != i, d[i, j], j))
        knn.append(set(order[:k1]))
    out = []
    for i in range(n):
        overlap = sorted(range(n), key=lambda j: (-len(knn[i] & knn[j]), j))[:k2]
        sets = [knn[j] for j in overlap]
        out.append(set.intersection(*sets) if rule == "intersection" else set.union(*sets))
    return out


def test_knn_lists_put_the_image_first_then_nearest_with_ties_by_index():
    x = np.array([[0.0], [1.0], [-1.0], [5.0]])  # 1 and 2 tie for image 0
    assert knn_lists(x, 3).tolist() == [[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 1, 0]]


@pytest.mark.parametrize("rule", ["intersection", "union"])
@pytest.mark.parametrize("k1,k2", [(3, 2), (3, 3), (4, 2), (2, 3)])
def test_anc_equals_the_intended_rule(rule, k1, k2):
    got = [set(a.tolist()) for a in anc_neighbours(LINE, k1, k2, rule)]
    assert got == brute_force_anc(LINE, k1, k2, rule)


def test_anc_by_hand_on_the_line():
    # K1 = 3: kNN(0) = {0,1,2}, kNN(1) = {1,0,2}, kNN(2) = {2,1,0}, kNN(3) = {3,4,5}, kNN(4) = {4,3,5},
    # kNN(5) = {5,4,3}, kNN(6) = {6,5,4}, kNN(7) = {7,6,5}. K2 = 2: image 6's top-2 by overlap are itself (3) and
    # 5 (|{6,5,4} ∩ {5,4,3}| = 2, ties with 4 broken by index... 4 has overlap 2 too, 4 < 5 → 4):
    # N_I(6) = {6,5,4} ∩ {4,3,5} = {4, 5}; N_U(6) = {3, 4, 5, 6}
    inter = anc_neighbours(LINE, 3, 2, "intersection")
    union = anc_neighbours(LINE, 3, 2, "union")
    assert inter[6].tolist() == [4, 5] and union[6].tolist() == [3, 4, 5, 6]
    assert inter[0].tolist() == [0, 1, 2]
    w = initial_similarity(LINE, 3, 2, "intersection").dense()
    assert w[6, 4] == 1 and w[4, 6] == 1 and w[6, 3] == -1 and w[0, 3] == -1  # symmetric, ±1
    assert torch.equal(w, w.T) and bool((w.diagonal() == 1).all())


def test_intersection_is_within_union():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    inter = anc_neighbours(x, 6, 4, "intersection")
    union = anc_neighbours(x, 6, 4, "union")
    assert all(set(a.tolist()) <= set(b.tolist()) for a, b in zip(inter, union, strict=True))
    assert sum(map(len, inter)) < sum(map(len, union))
    wi, wu = initial_similarity(x, 6, 4, "intersection").dense(), initial_similarity(x, 6, 4, "union").dense()
    assert bool(((wi == 1) <= (wu == 1)).all())


def test_the_intended_rule_differs_from_the_released_code():
    released = initial_similarity(LINE, 3, 2, "released").dense()
    intended = initial_similarity(LINE, 3, 2, "intersection").dense()
    assert torch.equal(released, 2 * torch.eye(len(LINE)) - 1)  # the released generator: no positive at all
    assert int((intended == 1).sum()) > len(LINE)


def test_packed_similarity_is_one_bit_per_pair_and_reads_batch_blocks():
    w = PackedSimilarity(20)
    assert w.nbytes == 20 * 3  # ⌈20/8⌉ bytes per row
    w.set(np.array([0, 3, 17]), np.array([9, 3, 19]))
    dense = w.dense()
    assert dense[0, 9] == dense[9, 0] == 1 and dense[17, 19] == dense[19, 17] == 1 and dense[3, 3] == 1
    assert w.positives() == 5
    idx = torch.tensor([19, 0, 9, 17])
    assert torch.equal(w.block(idx), dense[idx][:, idx])


def test_and_update_adds_positives_above_mean_plus_gamma_std():
    w = PackedSimilarity(4)
    w.set(np.arange(4), np.arange(4))
    w.set(np.array([0]), np.array([1]))
    h = torch.tensor([[1.0, 1.0], [1.0, 0.5], [0.9, 1.0], [-1.0, -1.0]])
    s = h.double() @ h.double().T
    pos = w.dense() == 1
    vals = s[pos]
    gamma = 0.5
    thr = float(vals.mean() + gamma * vals.std())
    before = w.dense().clone()
    mean, std, added = and_update(w, h, gamma)
    assert mean == pytest.approx(float(vals.mean())) and std == pytest.approx(float(vals.std()))
    expected = (before == 1) | (s >= thr)
    assert torch.equal(w.dense() == 1, expected) and added == int(expected.sum() - pos.sum())


def test_pic_weights_match_the_formula():
    c = torch.tensor([[1.0, 0.2], [0.2, 1.0]]) * 0.9
    e = torch.exp(c / 0.5)
    p = e / e.sum()  # one softmax over all four entries
    assert torch.allclose(pic_weights(c, 1, 0.5), -torch.log(p))
    assert torch.allclose(pic_weights(c, 2, 0.5), -torch.log(1 - p))
    assert torch.equal(pic_weights(c, 0, 0.5), torch.ones(2, 2))


def test_dsah_loss_parts_by_hand():
    h = torch.tensor([[0.6, 0.8], [0.8, -0.6], [-0.3, 0.4]])
    w = torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]])
    hn = h / h.norm(dim=1, keepdim=True)
    c = hn @ hn.T
    parts = dsah_loss(h, w, pic=0, alpha=2.0, beta=3.0)
    assert float(parts["similarity"]) == pytest.approx(2.0 * float(((c - w) ** 2).mean()))
    assert float(parts["quantization"]) == pytest.approx(3.0 * float(((torch.sign(h) - hn) ** 2).mean()))
    raw = dsah_loss(h, w, pic=0, beta=1.0, quant_on_raw=True)["quantization"]
    assert float(raw) == pytest.approx(float(((torch.sign(h) - h) ** 2).mean()))


def test_dsah_builds_w_from_the_pretrained_features_and_reads_batch_blocks():
    torch.manual_seed(0)
    x = torch.tensor(LINE, dtype=torch.float32)
    method = DSAH(bits=4, k1=3, k2=2, hidden=0)
    head = method.build_head({"pool": 1}, pooled=True)

    class State:
        epoch = 3

        def head_inputs(self):
            yield {"pool": x[:5]}
            yield {"pool": x[5:]}

        def encode_train(self):
            return head({"pool": x}).codes.detach()

    method.on_train_start(State())
    assert torch.equal(method._w.dense(), initial_similarity(LINE, 3, 2).dense())
    idx = torch.tensor([6, 4, 0])
    out = head({"pool": x[idx]})
    parts = method.loss(out, Batch(labels=None, index=idx))
    assert set(parts) == {"similarity", "quantization"}
    before = method._w.positives()
    method.round_epochs = 3
    method.on_epoch_end(State())  # epoch 3: a round ends → an AND update (only adds)
    assert method._w.positives() >= before
    state = method.state_dict()
    fresh = DSAH(bits=4, k1=3, k2=2, hidden=0)
    fresh.load_state_dict(state)
    fresh.on_train_start(State())  # resumed: keeps the loaded similarity
    assert torch.equal(fresh._w.bits, method._w.bits)


# --- BCDH ------------------------------------------------------------------------------------------------------
def random_pairs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.triu_indices(n, n, offset=1)
    pick = torch.randperm(len(a), generator=g)[: 2 * n]
    s = (torch.rand(len(pick), generator=g) < 0.4).float()
    return a[pick], b[pick], s


@pytest.mark.parametrize("seed", range(6))
def test_one_coordinate_descent_sweep_never_increases_the_objective(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 10, 8
    u = torch.randn(n, k, generator=g)
    a, b, s = random_pairs(n, seed)
    margin, lam = 2.0 * k, [0.0, 0.1, 1.0][seed % 3]
    start = closed_form_codes(u)
    if seed % 2:  # also from a random start
        start = torch.where(torch.rand(n, k, generator=g) < 0.5, 1.0, -1.0)
    before = binary_objective(start, u, a, b, s, margin, lam)
    after_codes = coordinate_descent(u, a, b, s, margin, lam, sweeps=1, b=start)
    assert set(after_codes.unique().tolist()) <= {-1.0, 1.0}
    assert binary_objective(after_codes, u, a, b, s, margin, lam) <= before + 1e-9
    # more sweeps keep going down
    more = coordinate_descent(u, a, b, s, margin, lam, sweeps=3, b=start)
    assert binary_objective(more, u, a, b, s, margin, lam) <= binary_objective(after_codes, u, a, b, s, margin,
                                                                                 lam) + 1e-9


def test_coordinate_descent_finds_a_local_minimum_that_a_flip_cannot_improve():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(6, 4, generator=g)
    a, b, s = random_pairs(6, 1)
    codes = coordinate_descent(u, a, b, s, 8.0, 0.2, sweeps=20)
    best = binary_objective(codes, u, a, b, s, 8.0, 0.2)
    for i in range(6):
        for d in range(4):
            flipped = codes.clone()
            flipped[i, d] = -flipped[i, d]
            assert binary_objective(flipped, u, a, b, s, 8.0, 0.2) >= best - 1e-9


def test_the_closed_form_step_is_the_minimiser():
    u = torch.tensor([[0.3, -1.2, 0.0], [-0.1, 2.0, -0.7]])
    b = closed_form_codes(u)
    best = None
    for bits in range(2 ** 6):  # every ±1 matrix of this shape
        cand = torch.tensor([1.0 if bits >> t & 1 else -1.0 for t in range(6)]).reshape(2, 3)
        value = float((u - cand).pow(2).sum())
        best = value if best is None else min(best, value)
    assert float((u - b).pow(2).sum()) == pytest.approx(best)
    assert b.tolist() == [[1, -1, 1], [-1, 1, -1]]


def test_pair_loss_by_hand():
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])
    a, b, s = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([1.0, 0.0])
    # pair (0,1) similar: ½·4 = 2; pair (0,2) dissimilar, d² = 2 < m = 5: ½·3 = 1.5
    assert float(pair_loss(codes, a, b, s, margin=5.0)) == pytest.approx((2 + 1.5) / 2)


def test_bcdh_parts_and_pair_on_binary():
    torch.manual_seed(0)
    x = torch.randn(8, 6)
    for on_binary in (False, True):
        method = BCDH(bits=4, pair_on_binary=on_binary)
        head = method.build_head({"pool": 6}, pooled=True)
        parts = method.loss(head({"pool": x}), Batch(labels=None, index=torch.arange(8)))
        assert set(parts) == {"pair", "quantization"}
        assert parts["quantization"].requires_grad
    assert not BCDH(bits=4).supervised and BCDH(bits=4, pairs="labels").supervised
    with pytest.raises(InputError, match="sfm_metadata"):
        BCDH(bits=4, pairs="sfm")


# --- pair sources ----------------------------------------------------------------------------------------------
SFM = {"cluster": [0, 0, 0, 1, 1, 2, 2, 2], "qidxs": [0, 3, 5, 5], "pidxs": [1, 4, 6, 7]}


@pytest.mark.parametrize("kind", ["json", "npz", "json-train"])
def test_sfm_metadata_is_read_from_json_or_npz(tmp_path, kind):
    if kind == "npz":
        path = tmp_path / "sfm.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in SFM.items()})
    else:
        path = tmp_path / "sfm.json"
        path.write_text(json.dumps({"train": SFM} if kind == "json-train" else SFM))
    meta = read_sfm_metadata(path)
    assert {k: v.tolist() for k, v in meta.items()} == SFM


def test_sfm_pickle_and_bad_files_are_refused(tmp_path):
    pkl = tmp_path / "retrieval-SfM-120k.pkl"
    pkl.write_bytes(b"\x80\x04N.")  # a pickle: never opened
    with pytest.raises(InputError, match="never unpickles") as err:
        read_sfm_metadata(pkl)
    assert "\n" not in str(err.value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cluster": [0, 1], "qidxs": [0], "pidxs": [5]}))
    with pytest.raises(InputError, match="out of range"):
        read_sfm_metadata(bad)
    bad.write_text(json.dumps({"cluster": [0, 1], "qidxs": [0]}))
    with pytest.raises(InputError, match="pidxs"):
        read_sfm_metadata(bad)


def test_sfm_pairs_positive_partner_and_negatives_from_other_clusters(tmp_path):
    path = tmp_path / "sfm.json"
    path.write_text(json.dumps(SFM))
    source = SfMPairs(path)
    assert source.queries().tolist() == [0, 3, 5]
    source._inputs = lambda idx: torch.as_tensor(idx)  # the partners' inputs are their indices here
    found = source.partners(torch.tensor([0, 3, 2]), None, step=1)
    assert found.inputs.tolist() == [1, 4]  # image 0's positive is 1, image 3's is 4; 2 is no query
    pairs = set(zip(found.anchor.tolist(), found.partner.tolist(), found.s.tolist(), strict=True))
    # codes: batch [0, 3, 2] then partners [1, 4] at rows 3, 4
    assert (0, 3, 1.0) in pairs and (1, 4, 1.0) in pairs
    assert (0, 1, 0.0) in pairs and (0, 4, 0.0) in pairs and (1, 0, 0.0) in pairs and (1, 2, 0.0) in pairs
    assert not any(a == 0 and p == 2 for a, p, _ in pairs)  # same cluster, not listed: left out
    assert sum(s for *_, s in pairs) == 2


def test_synthetic_views_are_seeded_and_keep_the_image_shape():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(3, 16, 16, 3)).astype(np.uint8)
    views = synthetic_views(images, 2, seed=5)
    assert views.shape == (6, 16, 16, 3) and views.dtype == np.uint8
    assert np.array_equal(views, synthetic_views(images, 2, seed=5))
    assert not np.array_equal(views[0], views[1])  # two different views of image 0
    grey = synthetic_views(images[..., :1], 1, seed=0)
    assert grey.shape == (3, 16, 16, 1)


# --- baselines ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 9])
def test_bihalf_gives_exactly_half_plus_one_per_bit(n):
    u = torch.randn(n, 5, generator=torch.Generator().manual_seed(n), requires_grad=True)
    b = bihalf(u, gamma=3.0)
    assert bool((b.abs() == 1).all()) and (b == 1).sum(0).tolist() == [n // 2] * 5
    # the +1s are each column's largest values
    for d in range(5):
        top = set(u[:, d].detach().argsort(descending=True)[: n // 2].tolist())
        assert top == set(torch.nonzero(b[:, d] == 1).reshape(-1).tolist())
    g = torch.randn(n, 5)
    (b * g).sum().backward()
    assert torch.allclose(u.grad, g + 3.0 * (u.detach() - b.detach()) / b.numel())


def test_greedy_sign_gradient_is_straight_through():
    h = torch.tensor([[0.3, -0.2, 0.0]], requires_grad=True)
    b = sign_straight_through(h)
    assert b.tolist() == [[1, -1, 1]]
    g = torch.tensor([[0.5, -2.0, 7.0]])
    (b * g).sum().backward()
    assert torch.equal(h.grad, g)


def test_ssdh_u_thresholds_and_ternary_similarity():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    low, high = distance_thresholds(x, 1.0, 1.0)
    xn = x / x.norm(dim=1, keepdim=True)
    d = 1 - xn @ xn.T
    iu = torch.triu_indices(4, 4, offset=1)
    v = d[iu[0], iu[1]].double()
    assert low == pytest.approx(float(v.mean() - v.std())) and high == pytest.approx(float(v.mean() + v.std()))
    s = pseudo_similarity(x, low, high)
    assert s[0, 1] == 1 and s[0, 3] == -1 and s[0, 2] == 0


# --- the trainer hides labels from label-free methods --------------------------------------------------------
class LabelBlind(Method):
    """A label-free method whose loss and hooks fail if they ever see a label."""

    name = "label-blind"
    supervised = False

    def __init__(self, bits: int):
        super().__init__(bits)
        self.calls = 0

    def build_head(self, tap_channels, pooled):
        (tap,) = tap_channels
        return PooledHead(tap, tap_channels[tap], self.bits, activation="tanh")

    def on_train_start(self, state):
        assert state.train_labels is None

    def loss(self, out: MethodOutput, batch: Batch):
        assert batch.labels is None
        self.calls += 1
        return {"spread": (out.codes @ out.codes.T).pow(2).mean()}


def test_the_trainer_never_passes_labels_to_a_label_free_method(tmp_path):
    from hashlearn.nn.backbones import create_backbone
    from hashlearn.train.trainer import Trainer

    ds = tiny_dataset()
    split = tiny_split(ds)
    method = LabelBlind(bits=8)
    backbone = create_backbone("smallcnn", weights="none", seed=0, width=4, in_channels=1)
    part = lambda idx: {"images": ds.images[idx], "labels": ds.labels[idx]}  # noqa: E731
    seen = []

    def evaluator(q_codes, db_codes, q_labels, db_labels):  # validation: the labels select the epoch
        seen.append((np.asarray(q_labels).tolist(), np.asarray(db_labels).tolist()))
        return 0.5

    trainer = Trainer(method, backbone, tiny_config(), tmp_path, train=part(split.train), val=part(split.val),
                      image_size=8, evaluator=evaluator)
    trainer.fit()
    assert method.calls == 2 * 3  # two epochs of three batches, none with labels
    assert seen and seen[0] == (ds.labels[split.val].tolist(), ds.labels[split.train].tolist())


def test_class_balanced_batches_are_refused_for_a_label_free_method(tmp_path):
    from hashlearn.nn.backbones import create_backbone
    from hashlearn.train.trainer import Trainer

    ds = tiny_dataset()
    split = tiny_split(ds)
    backbone = create_backbone("smallcnn", weights="none", seed=0, width=4, in_channels=1)
    with pytest.raises(InputError, match="label-free"):
        Trainer(LabelBlind(bits=8), backbone, tiny_config(**{"train.sampler": "class_balanced"}), tmp_path,
                train={"images": ds.images[split.train], "labels": ds.labels[split.train]}, image_size=8)


# --- tiny runs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,args", [
    pytest.param("dsah", "{k1: 6, k2: 4, round_epochs: 1, hidden: 16}", marks=pytest.mark.slow),
    ("bcdh", "{views: 2}"),
    ("bcdh", "{views: 2, pair_on_binary: true, negatives: 0}"),
    ("ssdh-u", "{}"),
    ("greedyhash-u", "{}"),
    ("bihalf", "{}"),
], ids=["dsah", "bcdh-views", "bcdh-binary", "ssdh-u", "greedyhash-u", "bihalf"])
def test_tiny_runs(tmp_path, method, args):
    from hashlearn.train import train

    ds = tiny_dataset()
    split = tiny_split(ds)
    rows = train(tiny_config(method=method, method_args=args), dataset=ds, split=split, out=tmp_path / "run")
    run = tmp_path / "run" / "8bits"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert rows and rows[0]["mAP@all"] is not None
    if method == "dsah":
        sim = [json.loads(line) for line in (run / "dsah_similarity.jsonl").read_text().splitlines()]
        assert sim[0]["event"] == "initial" and sim[0]["similarity_nbytes"] == 48 * 6  # 48 images, ⌈48/8⌉ bytes
        assert [s["event"] for s in sim] == ["initial", "and_update"]  # after epoch 1, not after the last


def test_bcdh_lambda_continuation_is_a_function_of_the_epoch():
    from types import SimpleNamespace

    method = BCDH(bits=4, lam=0.1, lambda_growth=1.5, lambda_max=0.2)
    got = []
    for epoch in (1, 2, 3, 2):  # the last: a resumed run at epoch 2
        method.on_epoch_start(SimpleNamespace(epoch=epoch))
        got.append(method._lam_now)
    assert got == pytest.approx([0.1, 0.15, 0.2, 0.15])


def test_tiny_run_with_sfm_pairs_from_a_generated_fixture(tmp_path):
    from hashlearn.train import train

    ds = tiny_dataset()
    split = tiny_split(ds)
    n = len(split.train)  # 48 training images: 12 "3D models" of 4, each image's next one is its positive
    cluster = (np.arange(n) // 4).tolist()
    q = [i for i in range(n) if i % 4 != 3]
    meta = tmp_path / "sfm.json"
    meta.write_text(json.dumps({"train": {"cluster": cluster, "qidxs": q, "pidxs": [i + 1 for i in q]}}))
    rows = train(tiny_config(method="bcdh", method_args=f"{{pairs: sfm, sfm_metadata: '{meta}'}}"),
                 dataset=ds, split=split, out=tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "8bits" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[0]["parts"]["pair"] > 0
    assert rows[0]["mAP@all"] is not None
