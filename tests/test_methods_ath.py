"""ATH (spec §2) and DTSH (spec §8): the spatial-attention layer, the triplet miners and the
class-balanced batch order, each loss part against its formula on hand-made numbers, the
attention inserted into a backbone, and ``hashlearn attention`` on tiny trained runs."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hashlearn.cli import main
from hashlearn.errors import InputError
from hashlearn.methods import get_method
from hashlearn.methods.base import Batch, MethodOutput
from hashlearn.methods.miners import AllTripletsMiner, RandomTripletMiner, batch_generator, triplet_miner
from hashlearn.nn import SpatialAttention
from hashlearn.train import load_config, train
from hashlearn.train.sampler import check_class_balanced, class_balanced_order, resolve_sampler

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- the attention layer ------------------------------------------------------------------------------------

def test_attention_map_lies_in_0_1_with_the_feature_maps_spatial_size():
    torch.manual_seed(0)
    x = 5 * torch.randn(2, 6, 7, 9)
    layer = SpatialAttention()
    out, a = layer(x)
    assert a.shape == (2, 1, 7, 9) and out.shape == x.shape
    assert (a > 0).all() and (a < 1).all()
    assert torch.allclose(out, x * a)  # the map multiplies every channel


def test_attention_map_is_the_spec_formula_on_a_hand_made_map():
    """A = σ(conv([mean_c maxpool3(F); max_c maxpool3(F)])): with a conv that keeps only its centre
    taps (w_avg at the mean, w_max at the max), A = σ(w_avg·M_avg + w_max·M_max) per position."""
    f = torch.zeros(1, 2, 3, 3)
    f[0, 0] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -4.0]])
    f[0, 1] = torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    layer = SpatialAttention(kernel_size=3, pool_size=3)
    with torch.no_grad():
        layer.conv.weight.zero_()
        layer.conv.weight[0, 0, 1, 1] = 0.5   # channel 0 of the conv input: the channel mean
        layer.conv.weight[0, 1, 1, 1] = -1.0  # channel 1: the channel maximum
    with torch.no_grad():
        out, a = layer(f)
    # 3×3 max-pool (stride 1, pad 1) of each channel, by hand
    pooled = np.zeros((2, 3, 3))
    for c in range(2):
        for i in range(3):
            for j in range(3):
                pooled[c, i, j] = f[0, c, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].max()
    m_avg, m_max = pooled.mean(axis=0), pooled.max(axis=0)
    expected = 1 / (1 + np.exp(-(0.5 * m_avg - 1.0 * m_max)))
    assert np.allclose(a[0, 0].numpy(), expected, atol=1e-6)
    assert torch.allclose(out, f * a)
    # pool_size=1 (the sibling ASH module) skips the max-pooling
    plain = SpatialAttention(pool_size=1)
    plain.conv.weight.data.copy_(layer.conv.weight.data)
    with torch.no_grad():
        _, a1 = plain(f)
    expected1 = 1 / (1 + np.exp(-(0.5 * f[0].mean(0).numpy() - f[0].amax(0).numpy())))
    assert np.allclose(a1[0, 0].numpy(), expected1, atol=1e-6)


@pytest.mark.parametrize("bad", [{"kernel_size": 2}, {"pool_size": 0}, {"kernel_size": True}])
def test_attention_sizes_are_checked(bad):
    with pytest.raises(InputError, match="odd integer"):
        SpatialAttention(**bad)


def test_ath_head_returns_the_map_of_its_tap():
    ath = get_method("ath")(bits=8, classes=3)
    assert ath.taps(["s1", "s2"]) == ["s2"]  # default: the last default tap
    head = ath.build_head({"s2": 5}, pooled=False)
    out = head({"s2": torch.randn(4, 5, 6, 4)})
    assert out.codes.shape == (4, 8) and (out.codes.abs() < 1).all()  # tanh codes
    assert out.extras["attention"].shape == (4, 1, 6, 4)
    assert out.extras["logits"].shape == (4, 3)
    # triplet only (mu = 0): no class head at all (nothing unused for data parallelism)
    triplet_only = get_method("ath")(bits=8, mu=0)
    head = triplet_only.build_head({"s2": 5}, pooled=False)
    assert head.classifier is None
    out = head({"s2": torch.randn(4, 5, 6, 4)})
    assert "logits" not in out.extras
    assert list(triplet_only.loss(out, Batch(labels=torch.tensor([0, 0, 1, 1]), index=torch.arange(4)))) == [
        "triplet", "regularization"]


# --- miners and the class-balanced order --------------------------------------------------------------------

def test_random_triplet_miner_yields_valid_triplets_per_anchor():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0, 2])  # class 2 has 2 images, class 3 two, …
    codes = torch.randn(len(labels), 6)
    miner = RandomTripletMiner(per_anchor=3)
    miner.generator = torch.Generator().manual_seed(1)
    a, p, n = miner(codes, labels)
    assert len(a) == 3 * len(labels)  # every image has a positive and a negative here
    assert (labels[a] == labels[p]).all() and (a != p).all()
    assert (labels[a] != labels[n]).all()
    assert torch.equal(torch.bincount(a, minlength=len(labels)), torch.full((len(labels),), 3))
    miner.generator = torch.Generator().manual_seed(1)
    assert all(torch.equal(x, y) for x, y in zip((a, p, n), miner(codes, labels), strict=True))  # seeded
    # an anchor without a positive (the only image of its class) is left out
    a, p, n = RandomTripletMiner()(codes[:3], torch.tensor([0, 0, 1]))
    assert set(a.tolist()) == {0, 1} and set(p.tolist()) == {0, 1} and set(n.tolist()) == {2}


def test_batch_generator_depends_on_the_batch_and_the_seed():
    torch.manual_seed(3)
    first = torch.rand(4, generator=batch_generator(torch.tensor([5, 1, 2])))
    again = torch.rand(4, generator=batch_generator(torch.tensor([5, 1, 2])))
    other = torch.rand(4, generator=batch_generator(torch.tensor([5, 1, 3])))
    torch.manual_seed(4)
    reseeded = torch.rand(4, generator=batch_generator(torch.tensor([5, 1, 2])))
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, reseeded)


def test_triplet_miners_by_name():
    assert isinstance(triplet_miner("all"), AllTripletsMiner)
    assert triplet_miner("random", per_anchor=2).per_anchor == 2
    with pytest.raises(InputError, match="dtsh: triplets must be one of"):
        triplet_miner("nope", "dtsh")


def _imbalanced_labels():
    return np.array([0] * 100 + [1] * 5 + [2] * 20 + [3] * 1)


def test_class_balanced_order_puts_every_class_in_every_batch():
    labels = _imbalanced_labels()
    order = class_balanced_order(labels, n_batches=12, batch_size=10, seed=7)
    assert order.shape == (120,) and order.dtype == np.int64
    for b in range(12):
        batch = labels[order[b * 10:(b + 1) * 10]]
        counts = np.bincount(batch, minlength=4)
        assert (counts >= 2).all() and counts.max() <= 3  # ⌊10/4⌋ each, 2 classes one more
    # a large class is not repeated within a pass over it; the class of one image is oversampled
    ones = order[labels[order] == 0]
    assert len(np.unique(ones)) == len(ones)
    assert (order[labels[order] == 3] == 125).all()
    assert np.array_equal(order, class_balanced_order(labels, 12, 10, seed=7))  # a function of the seed
    assert not np.array_equal(order, class_balanced_order(labels, 12, 10, seed=8))


def test_class_balanced_order_balances_each_process_slice_and_multi_hot_labels():
    labels = _imbalanced_labels()
    order = class_balanced_order(labels, n_batches=5, batch_size=16, seed=0, world=2)
    for start in range(0, len(order), 8):  # each rank's slice of each global batch
        assert set(labels[order[start:start + 8]].tolist()) == {0, 1, 2, 3}
    multi = np.zeros((30, 3), dtype=np.uint8)
    multi[:20, 0] = 1
    multi[20:, 1] = 1
    multi[25:, 2] = 1  # label 2 only on images that also carry label 1
    order = class_balanced_order(multi, n_batches=4, batch_size=6, seed=0)
    for b in range(4):
        assert (multi[order[b * 6:(b + 1) * 6]].sum(axis=0) > 0).all()


def test_class_balanced_refuses_a_batch_smaller_than_the_classes():
    with pytest.raises(InputError, match="cannot hold all 4 classes"):
        check_class_balanced(_imbalanced_labels(), batch_size=3)
    with pytest.raises(InputError, match=r"per process \(6 / 2\)"):
        check_class_balanced(_imbalanced_labels(), batch_size=6, world=2)


def test_sampler_auto_follows_the_method():
    assert resolve_sampler("auto", get_method("ath")(bits=8)) == "class_balanced"
    assert resolve_sampler("auto", get_method("dtsh")(bits=8)) == "class_balanced"
    assert resolve_sampler("auto", get_method("dpsh")(bits=8)) == "random"
    assert resolve_sampler("random", get_method("ath")(bits=8)) == "random"
    # auto falls back to random batches when a batch cannot hold every class (explicit: refused, above)
    labels = _imbalanced_labels()
    assert resolve_sampler("auto", get_method("ath")(bits=8), labels, batch_size=4) == "class_balanced"
    assert resolve_sampler("auto", get_method("ath")(bits=8), labels, batch_size=3) == "random"
    assert resolve_sampler("auto", get_method("ath")(bits=8), labels, batch_size=6, world=2) == "random"
    with pytest.raises(InputError, match="train.sampler"):
        load_config(overrides=["train.sampler=balanced"])


def test_the_trainer_draws_class_balanced_batches(tmp_path):
    """Every training batch the loss sees holds every class (tiny set: 4 classes, batch 8)."""
    from hashlearn.train.trainer import Trainer

    seen = []
    dtsh = get_method("dtsh")(bits=8)
    original = dtsh.loss

    def recording_loss(out, batch):
        seen.append(set(batch.labels.tolist()))
        return original(out, batch)

    dtsh.loss = recording_loss
    ds = tiny_dataset()
    labels = np.array([0] * 30 + [1] * 4 + [2] * 6 + [3] * 2)  # imbalanced training set
    rows = np.concatenate([np.flatnonzero(ds.labels == c)[:k] for c, k in enumerate([30, 4, 6, 2])])
    cfg = tiny_config(method="dtsh", **{"train.batch_size": 8, "train.epochs": 2})
    trainer = Trainer(dtsh, _smallcnn(cfg), cfg, tmp_path, train={"images": ds.images[rows], "labels": labels})
    assert trainer.sampler == "class_balanced"
    trainer.fit()
    assert len(seen) == 2 * (len(labels) // 8) and all(s == {0, 1, 2, 3} for s in seen)


def _smallcnn(cfg):
    from hashlearn.nn import create_backbone

    return create_backbone("smallcnn", weights="none", width=4, in_channels=1)


# --- the losses on hand-made numbers -----------------------------------------------------------------------

U = torch.tensor([[0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])  # q, p (same class), n
LABELS = torch.tensor([0, 0, 1])
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])


def _ath_parts(**args):
    ath = get_method("ath")(bits=2, classes=2, **args)
    out = MethodOutput(codes=U.clone(), extras={"logits": LOGITS.clone()})
    return ath.loss(out, Batch(labels=LABELS, index=torch.arange(3)))


@pytest.mark.parametrize("triplets", ["random", "all"])
def test_ath_loss_parts_equal_the_spec_formula(triplets):
    """Triplets of the batch: (0, 1, 2) and (1, 0, 2) (image 2 has no positive). k = 2, m = 0.5·k = 1.
    D(0,1) = 1, D(0,2) = 2, D(1,2) = 1 → hinges max(0, 1 − 2 + 1) = 0 and max(0, 1 − 1 + 1) = 1."""
    parts = _ath_parts(triplets=triplets)
    assert list(parts) == ["triplet", "cross_entropy", "regularization"]
    assert parts["triplet"].item() == pytest.approx((0 + 1) / 2)
    ce = [math.log(1 + math.exp(-2)), math.log(2), math.log(1 + math.exp(-1))]  # CE of images 0, 1, 2
    assert parts["cross_entropy"].item() == pytest.approx(sum(ce), rel=1e-6)  # both triplets hold all three
    assert parts["regularization"].item() == pytest.approx(0.01 * 3 * 0.5)  # α · Σ mean_d ||u| − 1|


def test_ath_loss_weights_margin_distance_and_ablations():
    parts = _ath_parts(mu=2.0, alpha=0.1, margin=0.5, triplet_weight=3.0)
    assert parts["triplet"].item() == pytest.approx(3.0 * (0 + 0.5) / 2)
    ce = math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(-1))
    assert parts["cross_entropy"].item() == pytest.approx(2.0 * ce, rel=1e-6)
    assert parts["regularization"].item() == pytest.approx(0.1 * 1.5)
    # relaxed Hamming distance ½(k − u_a·u_b): D(0,1) = 1, D(0,2) = 1.25, D(1,2) = 1
    hamming = _ath_parts(distance="hamming")
    assert hamming["triplet"].item() == pytest.approx((0.75 + 1.0) / 2)
    assert list(_ath_parts(mu=0)) == ["triplet", "regularization"]  # triplet only
    assert list(_ath_parts(triplet_weight=0)) == ["cross_entropy", "regularization"]  # cross-entropy only
    with pytest.raises(InputError, match="nothing to train"):
        get_method("ath")(bits=8, mu=0, triplet_weight=0, alpha=0)


def test_ath_cross_entropy_for_multi_hot_labels_and_a_too_narrow_head():
    ath = get_method("ath")(bits=2, classes=3, triplets="all", alpha=0, triplet_weight=0)
    multi = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    logits = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, -2.0], [0.5, 0.5, 0.5]])
    parts = ath.loss(MethodOutput(codes=U.clone(), extras={"logits": logits}),
                     Batch(labels=multi, index=torch.arange(3)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, multi.float(), reduction="none").mean(1)
    assert parts["cross_entropy"].item() == pytest.approx(float(bce.sum()), rel=1e-6)  # triplets (0,1,2), (1,0,2)
    with pytest.raises(InputError, match="method_args.classes"):
        ath.loss(MethodOutput(codes=U.clone(), extras={"logits": logits}),
                 Batch(labels=torch.tensor([0, 0, 5]), index=torch.arange(3)))


def test_dtsh_loss_equals_the_triplet_likelihood():
    """L = −mean_T (Θ_qp − Θ_qn − α − log(1 + e^{Θ_qp − Θ_qn − α})), Θ = ½ u_i^T u_j, + η · mean (u − sgn u)²."""
    u = torch.tensor([[0.9, -0.2, 0.4], [0.7, 0.1, 0.5], [-0.3, 0.8, -0.6], [0.2, 0.6, -0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    dtsh = get_method("dtsh")(bits=3, margin=0.5, eta=0.2)
    parts = dtsh.loss(MethodOutput(codes=u), Batch(labels=labels, index=torch.arange(4)))
    theta = 0.5 * (u @ u.T)
    terms = []
    for q in range(4):
        for p in range(4):
            for n in range(4):
                if p != q and labels[p] == labels[q] and labels[n] != labels[q]:
                    x = float(theta[q, p] - theta[q, n]) - 0.5
                    terms.append(-(x - math.log(1 + math.exp(x))))
    assert len(terms) == 8
    assert parts["likelihood"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    b = torch.where(u >= 0, 1.0, -1.0)
    assert parts["quantization"].item() == pytest.approx(0.2 * float((u - b).pow(2).mean()), rel=1e-6)
    random = get_method("dtsh")(bits=3, margin=0.5, triplets="random")
    a = random.loss(MethodOutput(codes=u), Batch(labels=labels, index=torch.arange(4)))
    b2 = random.loss(MethodOutput(codes=u), Batch(labels=labels, index=torch.arange(4)))
    assert torch.equal(a["likelihood"], b2["likelihood"])  # the draws are a function of the batch


# --- training, attention inserted into the backbone, the attention command ---------------------------------

@pytest.fixture(scope="module")
def data():
    ds = tiny_dataset()
    return ds, tiny_split(ds)


@pytest.fixture(scope="module")
def ath_run(data, tmp_path_factory):
    ds, split = data
    out = tmp_path_factory.mktemp("ath")
    train(tiny_config(method="ath", **{"train.epochs": 1}), dataset=ds, split=split, out=out)
    return out / "8bits"


def _png(path: Path, side: int = 12, grey: bool = True) -> Path:
    rng = np.random.default_rng(0)
    shape = (side, side) if grey else (side, side, 3)
    Image.fromarray(rng.integers(0, 255, size=shape).astype(np.uint8)).save(path)
    return path


def test_train_records_the_class_count_and_the_run_reloads(ath_run, data):
    from hashlearn.train import load_run
    from hashlearn.train.config import read_config

    assert read_config(ath_run / "config.yaml")["method_args"] == {"classes": 4}
    hasher = load_run(ath_run)
    ds, _ = data
    assert hasher.encode(ds.images[:3]).shape == (3, 1)


def test_attention_command_writes_a_png(ath_run, tmp_path, capsys):
    out = tmp_path / "map.png"
    assert main(["attention", "--run", str(ath_run), "--image", str(_png(tmp_path / "x.png")),
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_attention_command_refuses_a_run_without_attention_and_bad_input(data, ath_run, tmp_path, capsys):
    ds, split = data
    dpsh = tmp_path / "dpsh"
    train(tiny_config(**{"train.epochs": 1}), dataset=ds, split=split, out=dpsh)
    image = _png(tmp_path / "x.png")
    cases = [
        (["--run", str(dpsh / "8bits"), "--image", str(image), "--out", str(tmp_path / "a.png")],
         "method dpsh has no attention map"),
        (["--run", str(ath_run), "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "b.png")],
         "image not found"),
        (["--run", str(tmp_path / "nope"), "--image", str(image), "--out", str(tmp_path / "c.png")],
         "run folder not found"),
        (["--run", str(ath_run), "--image", str(image), "--out", str(tmp_path / "d.nope")], "unknown image format"),
    ]
    for args, message in cases:
        assert main(["attention", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not any((tmp_path / f"{c}.png").exists() for c in "abc")


def test_attention_inserted_into_the_backbone_end_to_end(data, tmp_path):
    """attention_at: block2 — the backbone runs on after the attended map; the map has block2's size."""
    ds, split = data
    train(tiny_config(method="ath", method_args="{attention_at: block2}", **{"train.epochs": 1}),
          dataset=ds, split=split, out=tmp_path)
    from hashlearn.train import load_run

    hasher = load_run(tmp_path / "8bits")
    assert hasher.model.taps == ["pool"]
    x = hasher.model.backbone.preprocess(ds.images[:2], hasher.image_size)
    hasher.model.eval()
    out = hasher.model(x)
    block2 = hasher.model.backbone.forward_to("block2", x)
    assert out.extras["attention"].shape == (2, 1, *block2.shape[-2:])
    # the same as running the pieces by hand
    attended, amap = hasher.model.head.attention(block2)
    manual = hasher.model.head(hasher.model.backbone.forward_from("block2", attended))
    assert torch.allclose(out.codes, manual.codes)


@pytest.mark.parametrize("sets, message", [
    ({"frozen": "true"}, "frozen backbone cannot run"),
    ({"finetune_from": "block3"}, "fine-tuning needs them equal"),
    ({"method_args": "{attention_at: nope}"}, "not a feature map"),
])
def test_an_inserted_attention_that_cannot_run_is_one_line_before_any_work(sets, message):
    from hashlearn.train.model import check_before_work

    sets = {"method_args": "{attention_at: block2}", **sets}
    with pytest.raises(InputError, match=message):
        check_before_work(tiny_config(method="ath", **sets))
