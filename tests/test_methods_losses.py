"""DPSH and DMSH on tiny data: shapes, gradients, a falling loss, every option."""

import pytest
import torch

from hashlearn.errors import InputError
from hashlearn.methods import get_method, load_all
from hashlearn.methods.base import Batch, pairwise_likelihood_loss, quantization_loss, similarity, total_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_batch(n=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    maps = {"s1": torch.randn(n, 8, 6, 6, generator=g), "s2": torch.randn(n, 16, 3, 3, generator=g)}
    # make features carry the label so the loss can fall
    maps["s2"][:, :classes, :, :] += 2 * torch.nn.functional.one_hot(labels, classes).float()[:, :, None, None]
    maps["pool"] = maps["s2"]
    return maps, Batch(labels=labels, index=torch.arange(n))


def test_similarity_single_and_multilabel():
    assert similarity(torch.tensor([0, 1, 0]), torch.tensor([0, 1])).tolist() == [[1, 0], [0, 1], [1, 0]]
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert similarity(y, y).tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(InputError):
        similarity(torch.tensor([0, 1]), y)


def test_likelihood_matches_formula():
    u = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    theta = 0.5 * u @ u.T
    expected = (torch.log1p(torch.exp(theta)) - s * theta).mean()
    assert torch.allclose(pairwise_likelihood_loss(u, u, s), expected)
    # codes exactly at ±1 have zero quantization error; sign(0)=+1
    assert quantization_loss(torch.tensor([[1.0, -1.0]])) == 0
    assert quantization_loss(torch.tensor([[0.0, 0.0]])) == 1


def test_focal_and_balance_change_the_loss():
    u = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    s = similarity(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 1, 2, 2]))
    plain = pairwise_likelihood_loss(u, u, s)
    focal = pairwise_likelihood_loss(u, u, s, focal_gamma=2.0)
    assert focal < plain  # (1 - p_t)^γ <= 1 down-weights every pair
    assert not torch.isclose(pairwise_likelihood_loss(u, u, s, balance=True), plain)


def test_registry_lists_both_methods_with_papers():
    registry = load_all()
    for name in ("dpsh", "dmsh"):
        info = registry.info(name)
        assert info["paper"] and info["summary"] and info["kind"] == "deep"


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("name", ["dpsh", "dmsh"])
def test_shapes_gradients_and_falling_loss(name, pooled):
    torch.manual_seed(0)
    maps, batch = tiny_batch()
    features = {t: (x.mean(dim=(2, 3)) if pooled else x) for t, x in maps.items()}
    method = get_method(name)(bits=12)
    taps = method.taps(["s1", "s2"])
    head = method.build_head({t: features[t].shape[1] for t in taps}, pooled=pooled)
    out = head(features)
    assert out.codes.shape == (16, 12)
    loss = total_loss(method.loss(out, batch))
    loss.backward()
    params = [p for p in head.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), "every head parameter gets a gradient"
    if name == "dmsh":
        assert set(out.extras["scales"]) == {"s1", "s2"}
    opt = torch.optim.Adam(head.parameters(), lr=1e-2 if name == "dpsh" else 1e-3)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = total_loss(method.loss(head(features), batch))
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    assert loss.detach().item() < 0.8 * first


def test_dmsh_options_change_the_loss():
    torch.manual_seed(0)
    maps, batch = tiny_batch()
    cls = get_method("dmsh")

    def loss_of(**kw):
        torch.manual_seed(0)
        m = cls(bits=8, **kw)
        head = m.build_head({"s1": 8, "s2": 16}, pooled=False)
        head.eval()
        return float(total_loss(m.loss(head(maps), batch)).detach())

    base = loss_of()
    assert loss_of(focal_gamma=2.0) < base
    assert loss_of(deep_supervision=0.0) < base
    assert loss_of(balance=True) != base
    assert loss_of(eta=5.0) > base
    avg = cls(bits=8, fusion="average")
    head = avg.build_head({"s1": 8, "s2": 16}, pooled=False)
    out = head(maps)
    assert torch.allclose(out.codes, torch.stack(list(out.extras["scales"].values())).mean(0))
    with pytest.raises(InputError):
        cls(bits=8, fusion="max")


def test_memory_is_used_and_checkpointable():
    maps, batch = tiny_batch()
    m = get_method("dpsh")(bits=8, pairs="memory", memory_size=32)
    head = m.build_head({"s2": 16}, pooled=False)
    out = head(maps)
    before = float(total_loss(m.loss(out, batch)).detach())
    m.on_batch_end(None, batch, out)
    assert m.state_dict()["recent.codes"].shape == (16, 8)
    # the same images again: the memory's copies of them are left out, so nothing changes
    assert torch.isclose(total_loss(m.loss(head(maps), batch)).detach(), torch.tensor(before))
    others = Batch(labels=batch.labels, index=batch.index + 16)
    assert float(total_loss(m.loss(head(maps), others)).detach()) != before
    fresh = get_method("dpsh")(bits=8, pairs="memory", memory_size=32)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.state_dict()["recent.codes"], m.state_dict()["recent.codes"])


def test_dmsh_mlp_scale_heads_and_linear_codes():
    maps, batch = tiny_batch()
    m = get_method("dmsh")(bits=8, scale_head="mlp", activation="none", mid_channels=8)
    head = m.build_head({"s1": 8, "s2": 16}, pooled=False)
    assert all(h.pooled for h in head.scales.values())  # feature maps are pooled, then an MLP
    out = head(maps)
    assert out.codes.shape == (16, 8) and out.codes.abs().max() > 0
    for bad in ({"scale_head": "x"}, {"activation": "relu"}):
        with pytest.raises(InputError):
            get_method("dmsh")(bits=8, **bad)


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("normalize", ["none", "bn", "l2"])
def test_dmsh_feature_fusion_and_normalisation(pooled, normalize):
    torch.manual_seed(0)
    maps, batch = tiny_batch()
    features = {t: (x.mean(dim=(2, 3)) if pooled else x) for t, x in maps.items()}
    m = get_method("dmsh")(bits=8, fusion="feature", normalize=normalize, mid_channels=8)
    head = m.build_head({"s1": 8, "s2": 16}, pooled=pooled)
    # the hash layer reads the concatenated per-scale embeddings (mid each), not the per-scale codes
    assert head.fuse.in_features == 2 * 8
    out = head(features)
    assert out.codes.shape == (16, 8) and out.codes.abs().max() <= 1
    assert set(out.extras["scales"]) == {"s1", "s2"}
    loss = total_loss(m.loss(out, batch))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    if normalize == "bn":
        assert all(isinstance(h.norm, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for h in head.scales.values())


def test_dmsh_normalisation_makes_scales_comparable():
    torch.manual_seed(0)
    x = {"s1": 100 * torch.randn(16, 8), "s2": 0.01 * torch.randn(16, 16)}
    m = get_method("dmsh")(bits=8, scale_head="linear", fusion="feature", normalize="l2", activation="none")
    head = m.build_head({"s1": 8, "s2": 16}, pooled=True)
    emb = {t: head.scales[t].embed(v) for t, v in x.items()}
    for e in emb.values():  # linear heads: the embedding is the normalised tap feature
        assert torch.allclose(e.norm(dim=1), torch.ones(16), atol=1e-5)
    assert head.fuse.in_features == 8 + 16
    assert head(x).codes.shape == (16, 8)


def test_dmsh_linear_heads_and_bad_options():
    maps, batch = tiny_batch()
    m = get_method("dmsh")(bits=8, scale_head="linear")
    head = m.build_head({"s1": 8, "s2": 16}, pooled=False)  # maps are pooled first
    assert head(maps).codes.shape == (16, 8)
    # the spec's defaults are unchanged: concat fusion of per-scale codes, conv heads, no normalisation
    spec = get_method("dmsh")(bits=8)
    assert (spec.fusion, spec.scale_head, spec.normalize, spec.deep_supervision) == ("concat", "conv", "none", 1.0)
    spec_head = spec.build_head({"s1": 8, "s2": 16}, pooled=False)
    assert spec_head.fuse.in_features == 2 * 8 and all(h.norm is None for h in spec_head.scales.values())
    for bad in ({"normalize": "zscore"}, {"fusion": "sum"}, {"scale_head": "attention"}):
        with pytest.raises(InputError):
            get_method("dmsh")(bits=8, **bad)


def test_losses_come_as_named_parts_that_sum_to_the_total():
    maps, batch = tiny_batch()
    dpsh = get_method("dpsh")(bits=8, pairs="batch", eta=0.5)
    out = dpsh.build_head({"s2": 16}, pooled=False)(maps)
    parts = dpsh.loss(out, batch)
    assert list(parts) == ["likelihood", "quantization"]
    assert torch.isclose(parts["quantization"], 0.5 * quantization_loss(out.codes))
    assert torch.equal(total_loss(parts), parts["likelihood"] + parts["quantization"])
    dmsh = get_method("dmsh")(bits=8, mid_channels=8, deep_supervision=0.3)
    out = dmsh.build_head({"s1": 8, "s2": 16}, pooled=False)(maps)
    parts = dmsh.loss(out, batch)
    assert list(parts) == ["likelihood", "likelihood_s1", "likelihood_s2", "quantization"]
    s = similarity(batch.labels, batch.labels)
    off_diagonal = 1 - torch.eye(16)
    scale = pairwise_likelihood_loss(out.extras["scales"]["s1"], out.extras["scales"]["s1"], s, mask=off_diagonal)
    assert torch.isclose(parts["likelihood_s1"], 0.3 * scale)  # already weighted by λ
    assert list(get_method("dmsh")(bits=8, mid_channels=8, deep_supervision=0).loss(out, batch)) == \
        ["likelihood", "quantization"]


def test_total_loss_refuses_what_is_not_named_scalar_parts():
    with pytest.raises(TypeError, match="dict"):
        total_loss(torch.tensor(1.0))
    with pytest.raises(TypeError, match="scalar"):
        total_loss({"likelihood": torch.ones(3)})
