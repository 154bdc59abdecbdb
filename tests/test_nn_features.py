"""Cached frozen-backbone features: computed once, keyed by what they depend on, checksummed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hashlearn.nn.features as features
from hashlearn.errors import HashlearnError, InputError
from hashlearn.nn import POOL, create_backbone, extract_features


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def forward_calls(monkeypatch):
    """Counts chunks that run the network."""
    calls = []
    real = features._run_chunk

    def counting(*args, **kwargs):
        calls.append(args[3] - args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_run_chunk", counting)
    return calls


def run(images, cache, **kw):
    kw.setdefault("image_size", 16)
    return extract_features(images, "smallcnn", weights="none", key="toy", cache_dir=cache, batch_size=4,
                            progress=False, **kw)


def feature_dirs(cache: Path):
    return sorted(p.name for p in (cache / "features").iterdir() if not p.name.endswith(".partial"))


def test_shapes_and_values_match_the_backbone(images, tmp_path):
    feats = run(images, tmp_path, taps=["block2", "block4"])
    assert list(feats) == ["block2", "block4", POOL]
    assert feats["block2"].shape == (10, 64) and feats[POOL].shape == (10, 256)
    assert feats[POOL].dtype == np.float32
    net = create_backbone("smallcnn", weights="none", seed=0, taps=["block2"]).eval()
    with torch.inference_mode():
        out = net(net.preprocess(images, 16))
    np.testing.assert_allclose(feats["block2"], out["block2"].mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[POOL], out[POOL].numpy(), rtol=1e-5, atol=1e-6)


def test_second_call_hits_the_cache(images, tmp_path, forward_calls):
    first = run(images, tmp_path)
    assert sum(forward_calls) == 10
    second = run(images, tmp_path)
    assert sum(forward_calls) == 10  # no forward pass
    for tap in first:
        np.testing.assert_array_equal(first[tap], second[tap])
    manifest = json.loads((tmp_path / "features" / feature_dirs(tmp_path)[0] / "manifest.json").read_text())
    assert manifest["key"]["image_size"] == 16 and manifest["key"]["weights"] == "none:seed=0"


def test_image_size_and_content_change_the_key(images, tmp_path, forward_calls):
    run(images, tmp_path)
    run(images, tmp_path, image_size=24)
    changed = images.copy()
    changed[3, 2, 2, 0] ^= 1
    run(changed, tmp_path)
    assert len(feature_dirs(tmp_path)) == 3
    assert sum(forward_calls) == 30


def test_dataset_object_uses_its_name_and_ids(images, tmp_path):
    class Toy:
        name = "toyset"

        def __init__(self, ids):
            self.images, self.ids = images, np.array(ids)

    extract_features(Toy([f"a{i}" for i in range(10)]), "smallcnn", 16, weights="none", cache_dir=tmp_path,
                     progress=False)
    extract_features(Toy([f"b{i}" for i in range(10)]), "smallcnn", 16, weights="none", cache_dir=tmp_path,
                     progress=False)
    names = feature_dirs(tmp_path)
    assert len(names) == 2 and all(n.startswith("toyset-smallcnn-16px-") for n in names)


def test_tampered_cache_is_detected(images, tmp_path):
    run(images, tmp_path)
    folder = tmp_path / "features" / feature_dirs(tmp_path)[0]
    npy = sorted(folder.glob("*.npy"))[0]
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(HashlearnError, match="does not match its checksum"):
        run(images, tmp_path)
    rebuilt = run(images, tmp_path, rebuild=True)
    assert rebuilt[POOL].shape == (10, 256)
    run(images, tmp_path)  # clean again


def test_stale_manifest_is_detected(images, tmp_path):
    run(images, tmp_path)
    manifest_path = tmp_path / "features" / feature_dirs(tmp_path)[0] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["key"]["taps"] = ["block1"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(HashlearnError, match="different settings"):
        run(images, tmp_path)


def test_interrupted_extraction_resumes(images, tmp_path, monkeypatch, forward_calls):
    real = features._run_chunk
    done = []

    def fail_on_third(*args, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_run_chunk", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(images, tmp_path, chunk_size=3)
    assert feature_dirs(tmp_path) == []  # nothing half-finished looks finished
    monkeypatch.setattr(features, "_run_chunk", real)
    resumed = run(images, tmp_path, chunk_size=3)
    fresh = run(images, tmp_path / "other", chunk_size=3)
    np.testing.assert_allclose(resumed[POOL], fresh[POOL], rtol=1e-6)
    assert len(feature_dirs(tmp_path)) == 1


def test_pooling_float16_and_no_cache(images, tmp_path):
    both = run(images, tmp_path, pooling="avgmax", dtype="float16", use_cache=False)
    assert both["block3"].shape == (10, 256) and both["block3"].dtype == np.float16
    assert both[POOL].shape == (10, 256)  # vector taps are not re-pooled
    avg = run(images, tmp_path, use_cache=False)
    np.testing.assert_allclose(both["block3"][:, :128], avg["block3"], rtol=2e-3, atol=2e-3)
    assert not (tmp_path / "features").exists() or feature_dirs(tmp_path) == []


def test_bad_arguments(images, tmp_path):
    with pytest.raises(InputError, match="pooling"):
        run(images, tmp_path, pooling="median")
    with pytest.raises(InputError, match="uint8"):
        run(images.astype(np.float32), tmp_path)


def test_tap_order_does_not_change_the_key(images, tmp_path, forward_calls):
    a = run(images, tmp_path, taps=["block4", "block2"])
    b = run(images, tmp_path, taps=["block2", "block4", "pool"])
    assert list(a) == list(b) == ["block2", "block4", POOL]
    assert sum(forward_calls) == 10


def test_a_subset_of_cached_taps_is_served_from_the_cache(images, tmp_path, forward_calls):
    full = run(images, tmp_path, taps=["block2", "block3", "block4"])
    only_pool = run(images, tmp_path, taps=[])
    assert list(only_pool) == [POOL] and sum(forward_calls) == 10
    np.testing.assert_array_equal(only_pool[POOL], full[POOL])
    run(images, tmp_path, taps=["block1"])  # not in the cache: computed
    assert sum(forward_calls) == 20
