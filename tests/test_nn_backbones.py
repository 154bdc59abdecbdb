"""Backbones: taps, preprocessing, weights loading, and a real-photo check of the ImageNet weights."""

import hashlib

import numpy as np
import pytest
import torch

from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.nn import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, POOL, create_backbone

torch.set_num_threads(2)

SMALL_INPUT = {"alexnet": 64, "smallcnn": 32}


@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if n != "vgg16"])  # vgg16: its own test below
def test_every_backbone_returns_its_default_taps_and_pool(name):
    net = create_backbone(name, weights="none", seed=0).eval()
    size = SMALL_INPUT.get(name, 48)
    x = net.preprocess(np.zeros((2, 20, 20, 3), np.uint8), size)
    with torch.inference_mode():
        out = net(x)
    assert list(out) == [*net.default_taps, POOL]
    for tap, value in out.items():
        assert value.shape[:2] == (2, net.tap_channels[tap])
    assert out[POOL].ndim == 2 and all(out[t].ndim == 4 for t in net.default_taps)


def test_vgg_taps_follow_the_stages_and_fc7():
    net = create_backbone("vgg16", weights="none", taps=["conv3", "conv4", "conv5", "fc7"]).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 64, 64))
    assert tuple(out["conv3"].shape) == (1, 256, 16, 16)
    assert tuple(out["conv4"].shape) == (1, 512, 8, 8)
    assert tuple(out["conv5"].shape) == (1, 512, 4, 4)
    assert tuple(out["fc7"].shape) == (1, 4096)


def test_resnet_and_efficientnet_strides():
    resnet = create_backbone("resnet18", weights="none", taps=["layer1", "layer4"]).eval()
    lite = create_backbone("efficientnet_lite0", weights="none", taps=["stage3", "stage5", "head"]).eval()
    with torch.inference_mode():
        r = resnet(torch.zeros(1, 3, 64, 64))
        e = lite(torch.zeros(1, 3, 96, 96))
    assert r["layer1"].shape[-1] == 16 and r["layer4"].shape[-1] == 2
    assert tuple(e["stage3"].shape) == (1, 40, 12, 12)
    assert tuple(e["stage5"].shape) == (1, 112, 6, 6)
    assert tuple(e["head"].shape) == (1, 1280, 3, 3)


def test_unknown_names_are_one_line_errors():
    with pytest.raises(NotFoundError, match="unknown backbone 'vgg99'"):
        create_backbone("vgg99")
    with pytest.raises(NotFoundError, match="unknown tap"):
        create_backbone("smallcnn", taps=["layer9"])


def test_smallcnn_grey_28px_trains():
    net = create_backbone("smallcnn", in_channels=1, seed=0)
    x = net.preprocess(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8), 28)
    assert tuple(x.shape) == (4, 1, 28, 28)
    out = net(x)
    assert tuple(out["block4"].shape) == (4, 256, 3, 3)
    out[POOL].sum().backward()
    assert net.blocks[0][0].weight.grad is not None


def test_seed_makes_random_init_reproducible():
    a = create_backbone("smallcnn", seed=5).state_dict()
    b = create_backbone("smallcnn", seed=5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_preprocess_grey_to_rgb_resize_and_normalise():
    net = create_backbone("smallcnn", weights="none")
    lite = create_backbone("efficientnet_lite0", weights="none")
    white = np.full((2, 8, 8), 255, np.uint8)
    x = lite.preprocess(white, 16)
    assert tuple(x.shape) == (2, 3, 16, 16) and x.dtype == torch.float32
    expected = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 5, 5].numpy(), expected, rtol=1e-6)
    assert lite.preprocess(np.zeros((1, 300, 300, 3), np.uint8)).shape[-1] == 224  # native size
    assert tuple(net.preprocess(np.zeros((1, 32, 32, 3), np.uint8)).shape) == (1, 3, 32, 32)
    with pytest.raises(InputError, match="images must be"):
        lite.preprocess(np.zeros((1, 8, 8, 4), np.uint8))


def test_weights_from_a_local_file(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    net = create_backbone("resnet18", weights=str(path))
    assert torch.equal(net.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)
    assert net.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_weights_files(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        create_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "smallcnn.pth"
    torch.save(create_backbone("smallcnn").state_dict(), wrong)
    with pytest.raises(InputError, match="do not fit this network: missing"):
        create_backbone("resnet18", weights=str(wrong))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        create_backbone("smallcnn", weights=str(junk))


def test_torchvision_download_failure_is_one_line_error(monkeypatch, tmp_path):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(HashlearnError, match="cannot get ImageNet weights for 'resnet18'.*weights=PATH") as info:
        create_backbone("resnet18", weights="default")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("variant", [1, 2])
def test_efficientnet_lite_weights_load_strictly(variant):
    net = create_backbone(f"efficientnet_lite{variant}")  # strict: no missing/unexpected keys
    assert len(net.weights_id) == 64 and net.input_size in (240, 260)


def test_efficientnet_lite0_classifies_real_photos():
    """ImageNet weights at 224 px: chelsea is a cat (281–285), coffee an espresso/cup (967/968)."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    net = create_backbone("efficientnet_lite0").eval()
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    batch = np.stack([np.asarray(Image.fromarray(p).resize((224, 224), Image.BILINEAR)) for p in photos])
    with torch.inference_mode():
        top5 = net.classify(net.preprocess(batch, 224)).topk(5).indices.tolist()
    assert set(top5[0]) & {281, 282, 283, 284, 285}
    assert set(top5[1]) & {967, 968}
    assert top5[0][0] in {281, 282, 283, 284, 285} and top5[1][0] in {967, 968}
