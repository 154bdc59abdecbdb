"""The VLAD layer (random and learned), RV-SSDH, SSDH and NetVLAD: formulas on hand-made inputs, and
each method through the real training command on the tiny set."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashlearn.codes import load_codes, sign
from hashlearn.errors import InputError
from hashlearn.methods.base import Batch
from hashlearn.methods.netvlad import NetVLAD, kmeans_init
from hashlearn.methods.rvssdh import RVSSDH
from hashlearn.methods.shallow import ITQ, PCAH
from hashlearn.methods.ssdh import SSDH, bit_balance, latent_quantization, push_to_binary
from hashlearn.nn import VLAD, kmeans
from hashlearn.train import load_run, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

# --- the VLAD layer -----------------------------------------------------------------------------

def hand_layer() -> VLAD:
    """Two clusters in 2-D with centres (1, 0) and (0, 1), α = 1: w_k = 2c_k, β_k = −1."""
    layer = VLAD(2, clusters=2, alpha=1.0, mode="learned")
    with torch.no_grad():
        layer.centres.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        w, b = VLAD.assignment_from_centres(layer.centres, 1.0)
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer


def test_vlad_on_a_hand_made_map_equals_the_formula():
    # a 1×3 map of three 2-D descriptors: (3, 0), (0, 2), (1, 1)
    x = torch.tensor([[[[3.0, 0.0, 1.0]], [[0.0, 2.0, 1.0]]]])
    layer = hand_layer()
    desc = [(1.0, 0.0), (0.0, 1.0), (1 / math.sqrt(2), 1 / math.sqrt(2))]  # descriptor-wise L2
    centres = [(1.0, 0.0), (0.0, 1.0)]
    expected = []
    sums = []
    for k, c in enumerate(centres):
        residual = [0.0, 0.0]
        total = 0.0
        for d in desc:
            logits = [-1.0 * ((d[0] - cj[0]) ** 2 + (d[1] - cj[1]) ** 2) for cj in centres]  # −α‖x − c‖²
            a = math.exp(logits[k]) / sum(math.exp(v) for v in logits)
            total += a
            residual = [residual[0] + a * (d[0] - c[0]), residual[1] + a * (d[1] - c[1])]
        norm = math.hypot(*residual)
        expected += [residual[0] / norm, residual[1] / norm]  # intra-normalised
        sums.append(total)
    g = math.sqrt(sum(v * v for v in expected))
    expected = torch.tensor([v / g for v in expected])
    out = layer(x)
    assert out.shape == (1, 4)
    assert torch.allclose(out[0], expected, atol=1e-6)
    # assignments sum to 1 over the clusters; each cluster's block has one norm; the vector has norm 1
    a = layer.assign(layer.descriptors(x))
    assert torch.allclose(a.sum(dim=1), torch.ones(1, 3))
    assert torch.allclose(a.sum(dim=2)[0], torch.tensor(sums), atol=1e-6)
    blocks = out.view(1, 2, 2).norm(dim=2)
    assert torch.allclose(blocks, torch.full((1, 2), 1 / math.sqrt(2)), atol=1e-6)
    assert out.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_assignment_from_centres_is_the_soft_nearest_centre():
    layer = VLAD(5, clusters=3, alpha=7.0, mode="random", seed=3)
    desc = layer.descriptors(torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0)))
    a = layer.assign(desc)
    dist = ((desc.transpose(1, 2)[:, :, None, :] - layer.centres[None, None]) ** 2).sum(-1)  # (B, N, K)
    assert torch.allclose(a, (-7.0 * dist).softmax(dim=2).transpose(1, 2), atol=1e-5)


def test_random_layer_has_no_trainable_parameters_and_the_seed_fixes_it():
    a, b, c = VLAD(8, 4, seed=5), VLAD(8, 4, seed=5), VLAD(8, 4, seed=6)
    assert list(a.parameters()) == [] and bool(a.initialised)
    assert torch.allclose(a.centres.norm(dim=1), torch.ones(4))  # unit centres
    x = torch.randn(3, 8, 2, 2)
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    for name in ("centres", "weight", "bias"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    conv = VLAD(8, 4, seed=5, assignment="conv")
    assert list(conv.parameters()) == [] and torch.equal(conv(x), VLAD(8, 4, seed=5, assignment="conv")(x))
    learned = VLAD(8, 4, mode="learned")
    assert sum(p.numel() for p in learned.parameters() if p.requires_grad) == 4 * 8 + 4 * 8 + 4
    assert not bool(learned.initialised)


def test_vector_input_is_one_descriptor_and_bad_shapes_are_refused():
    layer = VLAD(3, 2, seed=0)
    v = torch.randn(4, 3)
    assert torch.equal(layer(v), layer(v[:, :, None, None]))
    with pytest.raises(InputError, match="expected maps"):
        layer(torch.randn(4, 5, 2, 2))
    with pytest.raises(InputError, match="mode"):
        VLAD(3, 2, mode="frozen")


def test_kmeans_finds_separated_clusters_and_initialises_a_learned_layer():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    points = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in true])
    centres = kmeans(points, 3, seed=1)
    assert torch.cdist(true, centres).min(dim=1).values.max() < 0.1  # every true centre is found
    layer = VLAD(2, 3, alpha=2.0, mode="learned", normalize_input=False)
    layer.init_from_descriptors(points, seed=1)
    assert bool(layer.initialised)
    assert torch.allclose(layer.weight, 2 * 2.0 * layer.centres)
    assert torch.allclose(layer.bias, -2.0 * layer.centres.pow(2).sum(1))
    with pytest.raises(InputError, match="cannot make"):
        kmeans(points[:2], 3)


def test_kmeans_init_reads_head_inputs_once():
    method = NetVLAD(bits=4, clusters=3, classes=2, kmeans_images=5)
    head = method.build_head({"s": 2}, pooled=False)
    maps = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    calls = []

    def head_inputs(limit=None, seed=0):
        calls.append(limit)
        yield {"s": maps[:limit]}

    state = SimpleNamespace(head=head, head_inputs=head_inputs)
    method.on_train_start(state)
    assert calls == [5] and bool(head.vlad.initialised)
    expected = kmeans(head.vlad.descriptors(maps[:5]).transpose(1, 2).reshape(-1, 2), 3, iterations=20, seed=0)
    assert torch.allclose(head.vlad.centres, expected)
    assert not kmeans_init(head.vlad, state, "s", 5, 20, 0)  # a resumed layer is not initialised again
    assert calls == [5]


# --- the losses ----------------------------------------------------------------------------------

H = torch.tensor([[0.9, 0.2, 0.5, 0.6], [0.1, 0.3, 0.8, 0.7]])


def test_latent_loss_terms_equal_their_formulas():
    # push-to-binary: −mean (h − ½)²
    sq = [(v - 0.5) ** 2 for row in H.tolist() for v in row]
    assert push_to_binary(H).item() == pytest.approx(-sum(sq) / 8)
    # balance: mean over images of (mean over bits − ½)²
    assert bit_balance(H).item() == pytest.approx(((0.55 - 0.5) ** 2 + (0.475 - 0.5) ** 2) / 2)
    # quantization: mean (h − 1[h ≥ ½])², 0.5 counts as 1
    b = [[1, 0, 1, 1], [0, 0, 1, 1]]
    q = sum((H[i, j].item() - b[i][j]) ** 2 for i in range(2) for j in range(4)) / 8
    assert latent_quantization(H).item() == pytest.approx(q)


def test_codes_are_two_h_minus_one_so_sign_is_h_at_least_a_half():
    method = SSDH(bits=3, classes=2)
    head = method.build_head({"pool": 2}, pooled=True)
    with torch.no_grad():
        head.hash.latent.weight.zero_()
        head.hash.latent.bias.copy_(torch.tensor([0.0, 2.0, -2.0]))  # h = ½, σ(2), σ(−2)
    out = head({"pool": torch.zeros(1, 2)})
    h = out.extras["h"]
    assert torch.allclose(out.codes, 2 * h - 1)
    assert sign(out.codes.detach().numpy()).tolist() == [[1, 1, -1]]  # 1[h ≥ ½] as ±1


def ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-(logits.log_softmax(1)[torch.arange(len(labels)), labels]).mean())


def test_ssdh_parts_are_weighted_terms():
    method = SSDH(bits=4, alpha=2.0, beta=3.0, classification=0.5, classes=3)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    out = SimpleNamespace(codes=2 * H - 1, extras={"h": H, "logits": logits})
    parts = method.loss(out, Batch(labels=labels, index=torch.arange(2)))
    assert list(parts) == ["classification", "push_to_binary", "balance"]
    assert parts["classification"].item() == pytest.approx(0.5 * ce(logits, labels))
    assert parts["push_to_binary"].item() == pytest.approx(2.0 * push_to_binary(H).item())
    assert parts["balance"].item() == pytest.approx(3.0 * bit_balance(H).item())
    multi = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # multi-hot: a sigmoid per class
    parts = method.loss(out, Batch(labels=multi, index=torch.arange(2)))
    assert parts["classification"].item() == pytest.approx(
        0.5 * F.binary_cross_entropy_with_logits(logits, multi).item())


def test_rvssdh_parts_are_classification_and_quantization():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 1])
    out = SimpleNamespace(codes=2 * H - 1, extras={"h": H, "logits": logits})
    batch = Batch(labels=labels, index=torch.arange(2))
    parts = RVSSDH(bits=4, lambda_q=2.0, classes=2).loss(out, batch)
    assert list(parts) == ["classification", "quantization"]  # the balance term is off by default
    assert parts["classification"].item() == pytest.approx(ce(logits, labels))
    assert parts["quantization"].item() == pytest.approx(2.0 * latent_quantization(H).item())
    parts = RVSSDH(bits=4, quantization="ssdh", balance=0.5, classes=2).loss(out, batch)
    assert parts["quantization"].item() == pytest.approx(push_to_binary(H).item())
    assert parts["balance"].item() == pytest.approx(0.5 * bit_balance(H).item())


def test_rvssdh_head_has_a_frozen_random_vlad_and_reads_the_last_tap():
    method = RVSSDH(bits=6, clusters=4, transform=8, classes=3)
    assert method.spatial and method.taps(["s1", "s2", "s3"]) == ["s3"]
    head = method.build_head({"s3": 5}, pooled=False)
    assert head.vlad.mode == "random" and not any(p.requires_grad for p in head.vlad.parameters())
    assert torch.equal(head.vlad.centres, VLAD(5, 4, seed=0).centres)  # vlad_seed 0
    out = head({"s3": torch.randn(7, 5, 3, 3)})
    assert out.codes.shape == (7, 6) and out.extras["logits"].shape == (7, 3)
    learned = RVSSDH(bits=6, clusters=4, transform=8, classes=3, vlad="learned").build_head({"s3": 5}, pooled=False)
    assert sum(p.numel() for p in learned.vlad.parameters()) == 4 * 5 * 2 + 4


def test_netvlad_codes_are_itq_or_pca_of_the_vlad_vectors():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(40, 3, 2, 2, generator=g)
    for codes, estimator in (("itq", ITQ), ("pca", PCAH)):
        method = NetVLAD(bits=5, clusters=4, classes=2, codes=codes, code_samples=100)
        head = method.build_head({"s": 3}, pooled=False)
        head.eval()
        state = SimpleNamespace(head=head, head_inputs=lambda limit=None, seed=0: iter([{"s": maps[:20]},
                                                                                        {"s": maps[20:]}]))
        method.on_epoch_end(state)
        with torch.no_grad():
            v = head.vectors({"s": maps}).double().numpy()
            u = head({"s": maps}).codes.numpy()
        args = {"n_iter": 50} if codes == "itq" else {}
        reference = estimator(bits=5, random_state=0, **args).fit(v)
        assert np.array_equal(sign(u), reference.encode(v))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(InputError, match="rvssdh: vlad"):
        RVSSDH(bits=8, vlad="kmeans")
    with pytest.raises(InputError, match="netvlad: codes"):
        NetVLAD(bits=8, codes="lsh")
    with pytest.raises(InputError, match="ssdh: classes"):
        SSDH(bits=8, classes=1)
    with pytest.raises(InputError, match="classes .* is not set"):
        SSDH(bits=8).build_head({"pool": 4}, pooled=True)


# --- each method trains from the training command (tiny set, smallcnn, two epochs) ------------------

@pytest.mark.parametrize("method,args", [
    ("rvssdh", "{clusters: 4, transform: 16}"),
    ("rvssdh", "{clusters: 4, transform: 16, vlad: learned, kmeans_images: 20}"),
    ("ssdh", "{}"),
    ("netvlad", "{clusters: 4, kmeans_images: 20}"),
])
def test_each_method_trains_in_a_tiny_run(tmp_path, method, args):
    ds = tiny_dataset()
    split = tiny_split(ds)
    result = train(tiny_config(method=method, method_args=args, **{"train.threads": 1}), dataset=ds, split=split,
                   out=tmp_path)[0]
    run = tmp_path / "8bits"
    assert np.isfinite(result["mAP@all"])
    config = (run / "config.yaml").read_text()
    assert "classes: 4" in config  # set from the dataset, so load_run rebuilds the same head
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    hasher = load_run(run)
    db = load_codes(run / "database_codes.npz")
    where = {str(i): n for n, i in enumerate(ds.ids)}
    rows = [where[str(i)] for i in db.ids]
    assert np.array_equal(hasher.encode(ds.images[rows]), db.packed)  # the saved weights make the saved codes
    if "learned" in args or method == "netvlad":
        assert bool(hasher.model.head.vlad.initialised)  # k-means ran in on_train_start and was saved
    if method == "netvlad":  # ITQ was fitted: the projection is no longer the random start
        state = torch.load(run / "best.pt", weights_only=True)["model"]
        proj = state["head.code_projection"]  # PCA directions times a rotation: orthonormal columns
        assert torch.allclose(proj.T @ proj, torch.eye(8), atol=1e-4)
        assert state["head.code_mean"].abs().sum() > 0


def test_ssdh_on_a_map_tap_reads_maps_when_frozen():
    assert not SSDH(bits=8).spatial  # the pooled last feature: cached pooled vectors
    method = SSDH(bits=8, tap="stage5", classes=3)
    assert method.spatial and method.taps(["stage3", "stage5"]) == ["stage5"]
    assert "spatial" not in method.hparams() and method.hparams()["tap"] == "stage5"
    head = method.build_head({"stage5": 4}, pooled=False)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(head({"stage5": x}).codes, head({"stage5": x.mean(dim=(2, 3))}).codes)  # it pools the map
