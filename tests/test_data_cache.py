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

from hashlearn.data import load_dataset, open_prepared, prepare, prepared_names, read_manifest
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
    with pytest.raises(InputError, match="zz.png"):
        prepare("folder", source=broken, cache_dir=cache, as_name="pets")
    assert sorted(p.name for p in cache.iterdir()) == ["pets"]  # no .tmp-* folder left behind
    assert len(open_prepared("pets", cache_dir=cache, verify=True)) == 5
    ds = prepare("folder", source=broken, cache_dir=cache, as_name="pets", skip_bad=True)
    assert len(ds) == 1
    assert read_manifest("pets", cache_dir=cache)["skipped"] == [str(broken / "cat" / "zz.png")]
    assert len(open_prepared("pets", cache_dir=cache, verify=True)) == 1


def test_default_cache_root_comes_from_the_environment(pets: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "env-cache"))
    prepare("digits")
    assert (tmp_path / "env-cache" / "digits" / "manifest.json").exists()
    assert open_prepared("digits").images.shape == (1797, 8, 8, 1)
