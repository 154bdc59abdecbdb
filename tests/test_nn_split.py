"""Backbones split at a tap: forward_from(T, forward_to(T, x)) == backbone(x) for the taps at/after T."""

from functools import cache

import pytest
import torch

from hashlearn.errors import InputError, NotFoundError
from hashlearn.nn import POOL, create_backbone

torch.set_num_threads(2)

# one network per family (VGG-19, ResNet-50, Lite1 share their family's code), smallest useful input
FAMILIES = {"alexnet": 64, "vgg16": 32, "resnet18": 32, "efficientnet_lite0": 32, "efficientnet_lite2": 32,
            "smallcnn": 16}


@cache
def random_net(name):
    """A random-weight network, built once per test session (AlexNet/VGG take seconds to initialise)."""
    return create_backbone(name, weights="none", seed=0).eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_split_forward_equals_the_whole_forward_at_every_cut(name):
    net = random_net(name)
    x = torch.randn(2, 3, FAMILIES[name], FAMILIES[name], generator=torch.Generator().manual_seed(1))
    order = net.tap_order
    assert set(order) == set(net.tap_channels) - {POOL}
    assert net.cut_taps == tuple(t for t in order if t != "fc7")
    for cut in net.cut_taps:
        net.set_taps(order[order.index(cut):])
        with torch.no_grad():
            whole = net(x)
            activation = net.forward_to(cut, x)
            split = net.forward_from(cut, activation)
        assert activation.ndim == 4 and activation.shape[1] == net.tap_channels[cut]
        assert list(split) == list(whole)  # same taps, same order (pool after the maps; fc7 last)
        for tap in whole:
            assert torch.equal(split[tap], whole[tap]), (name, cut, tap)


def test_tap_order_per_family():
    assert create_backbone("smallcnn").tap_order == ("block1", "block2", "block3", "block4")
    assert random_net("resnet18").tap_order == ("layer1", "layer2", "layer3", "layer4")
    assert random_net("efficientnet_lite0").tap_order == tuple(f"stage{i}" for i in range(1, 8)) + ("head",)
    assert random_net("alexnet").tap_order == ("conv3", "conv4", "conv5", "fc7")


def test_a_tap_below_the_cut_is_an_input_error_naming_tap_and_cut():
    net = create_backbone("smallcnn", taps=["block2", "block4"]).eval()
    a = net.forward_to("block3", torch.zeros(1, 3, 16, 16))
    with pytest.raises(InputError, match="tap 'block2' of smallcnn lies below the cut at 'block3'") as info:
        net.forward_from("block3", a)
    assert "\n" not in str(info.value)
    net.check_cut("block2")  # at the cut: fine
    with pytest.raises(InputError, match="'block1'.*below the cut at 'block2'"):
        net.check_cut("block2", ["block1", "block3"])
    assert net.taps_below("block3") == ("block1", "block2")


def test_bad_cuts():
    net = create_backbone("smallcnn", taps=["block4"])
    with pytest.raises(NotFoundError, match="unknown cut tap 'pool'"):
        net.forward_to("pool", torch.zeros(1, 3, 16, 16))
    vgg = random_net("alexnet")
    with pytest.raises(InputError, match="'fc7' of alexnet is a vector"):
        vgg.forward_to("fc7", torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match=r"must be \(N, 128, H, W\)"):
        net.forward_from("block3", torch.zeros(1, 64, 4, 4))


def test_modules_and_parameters_above_are_what_trains():
    net = create_backbone("smallcnn", taps=["block3", "block4"], seed=0)
    above = net.parameters_above("block2")
    assert {id(p) for p in above} == {id(p) for b in net.blocks[2:] for p in b.parameters()}
    assert net.modules_above("block4") == []
    names = net.state_names_above("block2")
    assert names and all(k.startswith(("blocks.2.", "blocks.3.")) for k in names)
    assert set(names) == {k for k in net.state_dict() if k.startswith(("blocks.2.", "blocks.3."))}
    with torch.no_grad():
        a = net.eval().forward_to("block2", torch.randn(4, 3, 16, 16))
    net.train()
    net.forward_from("block2", a)[POOL].sum().backward()
    assert all(p.grad is not None for p in above)
    assert all(p.grad is None for p in net.blocks[:2].parameters())
    net.freeze_below("block2")
    assert [p.requires_grad for p in net.parameters()] == [id(p) in {id(q) for q in above} for p in net.parameters()]


def test_batchnorm_mode_above_the_cut_is_the_callers():
    net = create_backbone("smallcnn", taps=["block4"], seed=0).eval()
    a = net.forward_to("block3", torch.randn(4, 3, 16, 16)).detach()
    bn_below, bn_above = net.blocks[0][1], net.blocks[3][1]
    before_below, before_above = bn_below.running_mean.clone(), bn_above.running_mean.clone()
    for m in net.modules_above("block3"):
        m.train()
    net.forward_from("block3", a)
    assert torch.equal(bn_below.running_mean, before_below)  # below the cut: never run
    assert not torch.equal(bn_above.running_mean, before_above)  # above, in train mode: updated


def test_fc7_trains_only_when_selected_and_resnet_above():
    vgg = random_net("alexnet")
    vgg.set_taps(["conv5"])
    assert vgg.modules_above("conv5") == [vgg.features[-1]]  # the last max-pool only
    vgg.set_taps(["conv5", "fc7"])
    assert vgg.fc67 in vgg.modules_above("conv5") and vgg.avgpool in vgg.modules_above("conv5")
    resnet = random_net("resnet18")
    resnet.set_taps(["layer4"])
    assert set(resnet.state_names_above("layer3")) == {k for k in resnet.state_dict() if k.startswith("layer4.")}
    lite = random_net("efficientnet_lite0")
    lite.set_taps(["stage7", "head"])
    names = lite.state_names_above("stage6")
    assert any(k.startswith("model._conv_head.") for k in names)
    assert not any(k.startswith(("model._conv_stem.", "model._blocks.0.")) for k in names)


def test_state_digest_below_ignores_the_weights_above():
    net = create_backbone("smallcnn", seed=0)
    digest = net.state_digest_below("block2")
    with torch.no_grad():
        net.blocks[3][0].weight.add_(1.0)
    assert net.state_digest_below("block2") == digest
    with torch.no_grad():
        net.blocks[1][0].weight.add_(1.0)
    assert net.state_digest_below("block2") != digest


def test_moving_and_casting_a_split_backbone_still_works():
    """nn.Module's own methods (.to, .double, .apply) are untouched by the split machinery."""
    net = create_backbone("efficientnet_lite0", weights="none", taps=["stage6"], seed=0).eval().double()
    assert all(p.dtype == torch.float64 for p in net.parameters())
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(net.forward_from("stage4", net.forward_to("stage4", x))[POOL], net(x)[POOL])
    net.to("cpu", torch.float32).apply(lambda m: None)
    assert next(net.parameters()).dtype == torch.float32
