"""prepare / open_prepared: decode once, memory-map back, never use a stale or corrupt cache."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashlearn.data import load_dataset, open_prepared, prepare, prepared_name, prepared_names, read_manifest
from hashlearn.errors import InputError, NotFoundError


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """train/ and test/ class folders of 4x4 images, packed as a .tar.gz."""
    root = tmp_path / "pets"
    colors = {"train/cat/1.png": (10, 0, 0), "train/cat/2.png": (20, 0, 0), "train/dog/1.png": (30, 0, 0),
              "test/cat/3.png": (40, 0, 0), "test/dog/2.png": (50, 0, 0)}  # fmt: skip
    for rel, color in colors.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), color).save(root / rel)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    return archive


def test_prepare_then_open_gives_the_decoded_dataset_memory_mapped(pets: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    prepared = prepare("folder", source=pets, cache_dir=cache, as_name="pets")
    decoded = load_dataset("folder", pets)
    opened = open_prepared("pets", cache_dir=cache, verify=True)
    assert isinstance(opened.images, np.memmap)
    np.testing.assert_array_equal(opened.images, decoded.images)
    assert opened.ids.tolist() == decoded.ids.tolist() == prepared.ids.tolist()
    assert opened.labels.tolist() == [0, 0, 1, 0, 1]
    assert opened.official_split.tolist() == ["train", "train", "train", "test", "test"]
    assert prepared_names(cache) == ["pets"]
    assert sorted(p.name for p in (cache / "pets").iterdir()) == [
        "ids.npy", "images.npy", "labels.npy", "manifest.json", "official_split.npy",
    ]  # fmt: skip


def test_manifest_records_counts_shapes_checksums_and_source(pets: Path, tmp_path: Path):
    prepare("folder", source=pets, cache_dir=tmp_path, as_name="pets")
    manifest = read_manifest("pets", cache_dir=tmp_path)
    assert manifest["count"] == 5
    assert manifest["image_shape"] == [4, 4, 3]
    assert manifest["per_split"] == {"train": 3, "test": 2}
    assert manifest["per_class"] == {"cat": 3, "dog": 2}
    assert manifest["source"] == str(pets)
    assert manifest["arrays"]["images"]["shape"] == [5, 4, 4, 3]
    images_file = tmp_path / "pets" / "images.npy"
    assert manifest["arrays"]["images"]["sha256"] == hashlib.sha256(images_file.read_bytes()).hexdigest()


def test_size_is_part_of_the_cache_key(pets: Path, tmp_path: Path):
    ds = prepare("folder", source=pets, cache_dir=tmp_path, size=2, as_name="pets")
    assert ds.image_shape == (2, 2, 3)
    assert prepared_names(tmp_path) == ["pets-2px"]
    with pytest.raises(NotFoundError, match="run: hashlearn data prepare pets$"):
        open_prepared("pets", cache_dir=tmp_path)


def test_truncated_array_is_detected_by_the_cheap_check(pets: Path, tmp_path: Path):
    prepare("folder", source=pets, cache_dir=tmp_path, as_name="pets")
    images = tmp_path / "pets" / "images.npy"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"stale or corrupt: images.npy has \d+ bytes, manifest says \d+"):
        open_prepared("pets", cache_dir=tmp_path)


def test_changed_bytes_are_detected_by_verify(pets: Path, tmp_path: Path):
    prepare("folder", source=pets, cache_dir=tmp_path, as_name="pets")
    labels = tmp_path / "pets" / "labels.npy"
    raw = bytearray(labels.read_bytes())
    raw[-8] ^= 1  # lowest byte of the last int64 label: 0 <-> 1, same size, in range: only the checksum can tell
    labels.write_bytes(bytes(raw))
    assert len(open_prepared("pets", cache_dir=tmp_path)) == 5
    with pytest.raises(InputError, match="labels.npy does not match its sha256"):
        open_prepared("pets", cache_dir=tmp_path, verify=True)


def test_old_cache_format_and_changed_source_are_stale(pets: Path, tmp_path: Path):
    prepare("folder", source=pets, cache_dir=tmp_path, as_name="pets")
    manifest_path = tmp_path / "pets" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(InputError, match="cache format .* v0, expected v1"):
        open_prepared("pets", cache_dir=tmp_path)
    manifest_path.write_text(json.dumps(manifest))
    os.utime(pets, ns=(0, 0))  # the archive changed after it was prepared
    with pytest.raises(InputError, match=f"source {pets} changed since it was prepared"):
        open_prepared("pets", cache_dir=tmp_path)


def test_failed_prepare_leaves_no_half_cache_and_keeps_the_old_one(pets: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    prepare("folder", source=pets, cache_dir=cache, as_name="pets")
    broken = tmp_path / "broken"
    (broken / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(broken / "cat" / "ok.png")
    (broken / "cat" / "zz.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(InputError, match="zz.png"):  # another source replaces "pets" only with force=True
        prepare("folder", source=broken, cache_dir=cache, as_name="pets", force=True)
    assert sorted(p.name for p in cache.iterdir()) == ["pets"]  # no .tmp-* folder left behind
    assert len(open_prepared("pets", cache_dir=cache, verify=True)) == 5
    ds = prepare("folder", source=broken, cache_dir=cache, as_name="pets", skip_bad=True, force=True)
    assert len(ds) == 1
    assert read_manifest("pets", cache_dir=cache)["skipped"] == [str(broken / "cat" / "zz.png")]
    assert len(open_prepared("pets", cache_dir=cache, verify=True)) == 1


def test_default_cache_root_comes_from_the_environment(pets: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "env-cache"))
    prepare("digits")
    assert (tmp_path / "env-cache" / "digits" / "manifest.json").exists()
    assert open_prepared("digits").images.shape == (1797, 8, 8, 1)


# -- the name a prepared dataset gets, and never replacing one from another source ------------------


def tree(root: Path, colors: dict[str, int]) -> Path:
    for rel, shade in colors.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (shade, 0, 0)).save(root / rel)
    return root


def test_a_generic_folder_is_prepared_under_the_name_of_its_source(pets: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    roses = tree(tmp_path / "My Roses (2)", {"red/1.png": 10, "white/1.png": 20})
    assert prepare("folder", source=roses, cache_dir=cache).name == "My-Roses-2"
    assert prepare("folder", source=pets, cache_dir=cache).name == "pets"  # .tar.gz dropped
    assert prepared_names(cache) == ["my-roses-2", "pets"]  # no "folder": neither replaced the other
    assert open_prepared("my-roses-2", cache_dir=cache).class_names == ["red", "white"]
    assert read_manifest("pets", cache_dir=cache)["dataset"] == "folder"
    assert prepare("folder", source=roses, cache_dir=cache, as_name="roses").name == "roses"  # --as still wins
    assert prepared_name("folder", tmp_path / "x" / "a b.tgz") == "a-b"
    assert prepared_name("digits", roses) == "digits"  # only generic sources are named after the source
    with pytest.raises(InputError, match=r"would be prepared as 'mnist', the name of a registered dataset; .*--as"):
        prepare("folder", source=tree(tmp_path / "mnist", {"a/1.png": 1}), cache_dir=cache)


def test_re_preparing_the_same_source_is_allowed_another_source_needs_force(pets: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    one = tree(tmp_path / "one", {"a/1.png": 10, "b/1.png": 20})
    two = tree(tmp_path / "two", {"a/1.png": 30, "b/1.png": 40})
    prepare("folder", source=one, cache_dir=cache, as_name="set")
    before = read_manifest("set", cache_dir=cache)["arrays"]["images"]["sha256"]
    prepare("folder", source=tmp_path / "two" / ".." / "one", cache_dir=cache, as_name="set")  # the same folder
    assert read_manifest("set", cache_dir=cache)["arrays"]["images"]["sha256"] == before
    with pytest.raises(InputError, match=rf"'set' in {cache} comes from {one} \(folder\); preparing {two} .*--force"):
        prepare("folder", source=two, cache_dir=cache, as_name="set")
    with pytest.raises(InputError, match=r"comes from .*one \(folder\); preparing dataset digits .*--force"):
        prepare("digits", cache_dir=cache, as_name="set")
    assert sorted(p.name for p in cache.iterdir()) == ["set"]  # refused before any work: nothing written
    assert read_manifest("set", cache_dir=cache)["arrays"]["images"]["sha256"] == before
    assert open_prepared("set", cache_dir=cache).images[0, 0, 0, 0] == 10
    assert prepare("folder", source=two, cache_dir=cache, as_name="set", force=True).images[0, 0, 0, 0] == 30
    prepare("digits", cache_dir=cache)
    assert len(prepare("digits", cache_dir=cache)) == 1797  # a dataset's default source is the same source
