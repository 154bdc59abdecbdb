"""The spatial activation cache: maps at a cut (and of mirrored images), keyed, checksummed, resumable."""

import json

import numpy as np
import pytest
import torch

import hashlearn.nn._cache as cache_mod
import hashlearn.nn.activations as activations
from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.nn import (
    POOL,
    ActivationCache,
    activation_nbytes,
    cached_feature_sets,
    create_backbone,
    extract_activations,
    extract_features,
)

torch.set_num_threads(2)
N = 10


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def computed(monkeypatch):
    """Rows run through the network, per chunk."""
    rows = []
    real = activations._run_chunk

    def counting(net, images, c0, c1, *args, **kwargs):
        rows.append(c1 - c0)
        return real(net, images, c0, c1, *args, **kwargs)

    monkeypatch.setattr(activations, "_run_chunk", counting)
    return rows


def run(images, cache, backbone="smallcnn", tap="block2", **kw):
    kw.setdefault("image_size", 16)
    kw.setdefault("chunk_size", 4)
    return extract_activations(backbone, images, tap, key="toy", cache_dir=cache, batch_size=3, progress=False,
                               weights="none", **kw)


def act_dirs(cache):
    return sorted(p.name for p in (cache / "activations").iterdir() if not p.name.endswith(".partial"))


def test_maps_and_mirrored_maps_match_forward_to(images, tmp_path):
    acts = run(images, tmp_path)
    net = create_backbone("smallcnn", weights="none", seed=0).eval()
    x = net.preprocess(images, 16)
    with torch.no_grad():
        plain, mirrored = net.forward_to("block2", x), net.forward_to("block2", x.flip(-1))
    assert isinstance(acts, ActivationCache)
    assert len(acts) == N and acts.shape == (N, 64, 4, 4) and acts.item_shape == (64, 4, 4) and acts.views == 2
    assert acts.nbytes == N * 2 * 64 * 4 * 4 * 2 == activation_nbytes(net, "block2", 16, N)
    assert acts.file.parent == acts.path and acts.file.name == "activations.npy"
    assert acts.array.dtype == np.float16 and not acts.array.flags.writeable
    got = acts.get(np.arange(N), flipped=False)
    assert got.dtype == torch.float32 and tuple(got.shape) == (N, 64, 4, 4)
    # float16 storage: equal up to one float16 step (the cache computes its maps in batches of its own, so a value on
    # a rounding boundary can round the other way)
    fp16 = {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(got, plain.half().float(), **fp16)
    torch.testing.assert_close(acts.get(range(N), True), mirrored.half().float(), **fp16)
    mixed = acts.get(torch.tensor([7, 2, 2]), flipped=np.array([True, False, True]))
    torch.testing.assert_close(mixed, torch.stack([mirrored[7], plain[2], mirrored[2]]).half().float(), **fp16)
    assert tuple(acts.get(3).shape) == (1, 64, 4, 4)
    # what training does with it: the part above the cut on the cached maps
    net.set_taps(["block3"])
    with torch.no_grad():
        torch.testing.assert_close(net.forward_from("block2", got)[POOL], net(x)[POOL], rtol=2e-2, atol=2e-2)


def test_second_call_and_a_backbone_instance_hit_the_cache(images, tmp_path, computed):
    first = run(images, tmp_path)
    assert sum(computed) == N
    net = create_backbone("smallcnn", weights="none", seed=0)
    net.train()
    again = extract_activations(net, images, "block2", 16, cache_dir=tmp_path, key="toy", progress=False)
    assert sum(computed) == N and again.path == first.path
    assert net.training and all(m.training for m in net.modules())  # modes restored
    with torch.no_grad():  # weights above the cut do not matter: runs training the upper part share it
        net.blocks[3][0].weight.add_(1)
    assert extract_activations(net, images, "block2", 16, cache_dir=tmp_path, key="toy", progress=False).path \
        == first.path
    assert sum(computed) == N


def test_everything_the_maps_depend_on_changes_the_key(images, tmp_path, computed):
    base = run(images, tmp_path)
    run(images, tmp_path, tap="block3")
    run(images, tmp_path, image_size=24)
    run(images, tmp_path, flip=False)
    run(images, tmp_path, dtype="float32")
    run(images, tmp_path, seed=1)  # other random weights below the cut
    changed = images.copy()
    changed[4, 1, 1, 2] ^= 1
    run(changed, tmp_path)
    assert len(act_dirs(tmp_path)) == 7 and sum(computed) == 7 * N
    key = base.key
    assert key["tap"] == "block2" and key["flip"] is True and key["dtype"] == "float16" and key["image_size"] == 16
    assert base.path.name.startswith("toy-smallcnn-16px-block2-")


def test_interrupted_extraction_resumes_after_the_last_chunk(images, tmp_path, monkeypatch, computed):
    real = activations._run_chunk
    calls = []

    def die_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(activations, "_run_chunk", die_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(images, tmp_path)  # chunks of 4: rows 0-3 and 4-7 written, killed in 8-9
    assert act_dirs(tmp_path) == []  # nothing half-done looks finished
    monkeypatch.setattr(activations, "_run_chunk", real)
    resumed_rows = []
    monkeypatch.setattr(activations, "_run_chunk", lambda net, im, c0, c1, *a, **k: (
        resumed_rows.append((c0, c1)), real(net, im, c0, c1, *a, **k))[1])
    resumed = run(images, tmp_path)
    assert resumed_rows == [(8, 10)]
    fresh = run(images, tmp_path / "other")
    np.testing.assert_array_equal(np.asarray(resumed.array), np.asarray(fresh.array))
    assert len(act_dirs(tmp_path)) == 1


def test_a_damaged_chunk_of_a_partial_extraction_is_recomputed(images, tmp_path, monkeypatch):
    real = activations._run_chunk

    def die_on_second(net, im, c0, c1, *a, **k):
        if c0 == 4:
            raise KeyboardInterrupt
        return real(net, im, c0, c1, *a, **k)

    monkeypatch.setattr(activations, "_run_chunk", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(images, tmp_path)
    partial = next((tmp_path / "activations").glob("*.partial"))
    arr = np.load(partial / "activations.npy", mmap_mode="r+")
    arr[1, 0, 0, 0, 0] += 1  # inside the recorded chunk 0-3
    arr.flush()
    del arr
    rows = []
    monkeypatch.setattr(activations, "_run_chunk", lambda net, im, c0, c1, *a, **k: (
        rows.append(c0), real(net, im, c0, c1, *a, **k))[1])
    run(images, tmp_path).verify()
    assert rows == [0, 4, 8]


def test_tampered_truncated_and_stale_caches_are_errors(images, tmp_path):
    acts = run(images, tmp_path)
    folder, path = acts.path, acts.file
    del acts
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # last chunk (rows 8-9)
    path.write_bytes(bytes(data))
    reopened = run(images, tmp_path)
    reopened.get([0, 1, 2])  # chunk 0 is intact
    with pytest.raises(HashlearnError, match=r"rows 8–9\) is missing or does not match its checksum"):
        reopened.get([9])
    with pytest.raises(HashlearnError, match="does not match its checksum"):
        ActivationCache(folder).verify()
    path.write_bytes(bytes(data[:-100]))
    with pytest.raises(HashlearnError, match="truncated or corrupt"):
        run(images, tmp_path)
    rebuilt = run(images, tmp_path, rebuild=True)
    rebuilt.verify()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["key"]["tap"] = "block3"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HashlearnError, match="different settings"):
        run(images, tmp_path)


def test_refuses_when_the_disk_has_no_room(images, tmp_path, monkeypatch):
    import shutil

    class Usage:
        free = 5000

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(HashlearnError, match=r"activation cache toy-smallcnn-16px-block2-\w+ needs 40.00 KiB "
                                             r"\(10 images × 2 × 64×4×4 × 2 B\) but only 4.88 KiB is free") as info:
        run(images, tmp_path)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", shutil.disk_usage)
    assert list((tmp_path / "activations").iterdir()) == []  # nothing written, no partial folder left


def test_bad_arguments(images, tmp_path):
    acts = run(images, tmp_path, flip=False)
    assert acts.views == 1 and acts.nbytes == N * 64 * 4 * 4 * 2
    acts.get([1, 2], flipped=False)
    with pytest.raises(InputError, match="no mirrored maps"):
        acts.get([1, 2], flipped=[False, True])
    with pytest.raises(InputError, match="out of range"):
        acts.get([N])
    with pytest.raises(InputError, match="one bool per index"):
        acts.get([1, 2], flipped=[True])
    with pytest.raises(NotFoundError, match="unknown cut tap 'block9'"):
        run(images, tmp_path, tap="block9")
    with pytest.raises(InputError, match="dtype"):
        run(images, tmp_path, dtype="int8")
    with pytest.raises(InputError, match="uint8"):
        run(images.astype(np.float32), tmp_path)


def test_listing_holds_both_kinds_of_cache(images, tmp_path):
    acts = run(images, tmp_path)
    extract_features(images, "smallcnn", 16, weights="none", key="toy", cache_dir=tmp_path, progress=False)
    listed = cached_feature_sets(tmp_path)
    kinds = {entry["kind"]: entry for entry in listed}
    assert set(kinds) == {"features", "activations"}
    assert kinds["activations"]["path"] == str(acts.path) and kinds["activations"]["tap"] == "block2"
    assert kinds["activations"]["nbytes"] >= acts.nbytes
