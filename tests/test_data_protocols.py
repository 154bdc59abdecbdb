"""Protocols on label-only stand-ins (1x1 images): exact sizes, disjointness, seeding, files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hashlearn.data import PROTOCOLS, ImageDataset, Split, get_protocol
from hashlearn.errors import InputError, NotFoundError


def labelled(labels, official_split=None, class_names=None) -> ImageDataset:
    labels = np.asarray(labels)
    n_classes = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
    return ImageDataset(
        images=np.zeros((len(labels), 1, 1, 1), dtype=np.uint8),
        labels=labels,
        ids=[str(i) for i in range(len(labels))],
        class_names=class_names or [f"c{i}" for i in range(n_classes)],
        official_split=official_split,
        name="standin",
    )


@pytest.fixture(scope="module")
def cifar_like() -> ImageDataset:
    """60,000 labels laid out like CIFAR-10: 50,000 train then 10,000 test, 6,000 per class."""
    labels = np.concatenate([np.repeat(np.arange(10), 5000), np.repeat(np.arange(10), 1000)])
    return labelled(labels, ["train"] * 50000 + ["test"] * 10000)


def per_class(ds: ImageDataset, idx: np.ndarray) -> list[int]:
    return np.bincount(ds.labels[idx], minlength=ds.n_classes).tolist()


def test_cifar10_1_sizes_and_containment(cifar_like):
    split = get_protocol("cifar10-1").split(cifar_like, seed=0)
    assert split.sizes == {"query": 1000, "train": 4500, "val": 500, "database": 59000}
    assert per_class(cifar_like, split.query) == [100] * 10
    assert per_class(cifar_like, split.train) == [450] * 10
    assert per_class(cifar_like, split.val) == [50] * 10
    assert np.intersect1d(split.query, split.database).size == 0
    assert np.union1d(split.query, split.database).size == 60000
    training = np.union1d(split.train, split.val)
    assert np.intersect1d(split.train, split.val).size == 0
    assert np.isin(training, split.database).all()


def test_cifar10_I_database_excludes_training(cifar_like):
    split = get_protocol("cifar10-I").split(cifar_like, seed=0)
    assert split.sizes == {"query": 1000, "train": 4500, "val": 500, "database": 54000}
    everything = np.concatenate([split.query, split.train, split.val, split.database])
    assert np.array_equal(np.sort(everything), np.arange(60000))  # a partition


def test_cifar10_II_uses_the_official_split(cifar_like):
    split = get_protocol("cifar10-II").split(cifar_like, seed=0)
    assert np.array_equal(split.query, np.arange(50000, 60000))
    assert np.array_equal(split.database, np.arange(50000))
    assert np.array_equal(np.union1d(split.train, split.val), np.arange(50000))
    assert per_class(cifar_like, split.val) == [500] * 10


def test_same_seed_same_split_other_seed_other_split(cifar_like):
    protocol = get_protocol("cifar10-1")
    a, b, c = protocol.split(cifar_like, seed=0), protocol.split(cifar_like, seed=0), protocol.split(cifar_like, seed=1)
    assert a.checksum == b.checksum
    assert np.array_equal(a.query, b.query)
    assert a.checksum != c.checksum
    assert not np.array_equal(a.query, c.query)


def test_val_fraction_zero_trains_on_the_whole_training_set(cifar_like):
    split = get_protocol("cifar10-1", val_fraction=0).split(cifar_like, seed=0)
    assert split.sizes["train"] == 5000 and split.sizes["val"] == 0
    assert split.params["val_fraction"] == 0


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_split_file_round_trip_and_tamper_check(cifar_like, tmp_path: Path, suffix: str):
    split = get_protocol("cifar10-I").split(cifar_like, seed=3)
    loaded = Split.load(split.save(tmp_path / f"split{suffix}"))
    assert loaded.describe() == split.describe()
    assert np.array_equal(loaded.val, split.val)
    if suffix == ".json":
        payload = json.loads((tmp_path / "split.json").read_text())
        payload["query"][0] = payload["database"][0]
        (tmp_path / "split.json").write_text(json.dumps(payload))
        with pytest.raises(InputError, match="does not match its checksum"):
            Split.load(tmp_path / "split.json")


def test_describe_is_what_result_files_record(cifar_like):
    split = get_protocol("cifar10-II").split(cifar_like, seed=7)
    info = split.describe()
    assert info["protocol"] == "cifar10-II"
    assert info["seed"] == 7
    assert info["sizes"] == {"query": 10000, "train": 45000, "val": 5000, "database": 50000}
    assert info["params"]["query_split"] == "test"
    assert len(info["checksum"]) == 64
    assert split.model_selection() == (split.val, split.train)


def test_per_class_rule_for_any_labelled_folder():
    ds = labelled(np.repeat([0, 1, 2], 20), ["train"] * 45 + ["test"] * 15)  # test: the last 15, all c2
    by_fraction = get_protocol("per-class", query_fraction=0.25, train_per_class=10).split(ds, seed=0)
    assert per_class(ds, by_fraction.query) == [5, 5, 5]
    assert per_class(ds, by_fraction.train) + per_class(ds, by_fraction.val) == [9, 9, 9, 1, 1, 1]
    official = get_protocol("per-class", query_split="test").split(ds, seed=0)
    assert np.array_equal(official.query, np.arange(45, 60))
    assert official.sizes == {"query": 15, "train": 40, "val": 5, "database": 45}
    assert per_class(ds, official.val) == [2, 2, 1]  # 10 % of 20, 20, 5, rounded half up
    with pytest.raises(InputError, match="class 'c0' of standin has 20 images available, the protocol needs 30"):
        get_protocol("per-class", query_per_class=30).split(ds)


def test_per_label_rule_draws_label_by_label_without_replacement():
    rng = np.random.default_rng(0)
    matrix = (rng.random((400, 4)) < 0.4).astype(np.uint8)
    matrix[matrix.sum(1) == 0, 0] = 1
    ds = labelled(matrix)
    split = get_protocol("per-label", query_per_label=10, train_per_label=20).split(ds, seed=0)
    assert split.sizes == {"query": 40, "train": 72, "val": 8, "database": 360}
    assert (matrix[split.query].sum(axis=0) >= 10).all()
    assert np.intersect1d(split.query, split.database).size == 0
    assert np.isin(np.union1d(split.train, split.val), split.database).all()
    with pytest.raises(InputError, match="protocol 'cifar10-1' is for single-label data"):
        get_protocol("cifar10-1").split(ds)


def test_protocols_are_registered_by_name():
    assert {"cifar10-1", "cifar10-i", "cifar10-ii", "nus-wide", "per-class", "per-label"} <= set(PROTOCOLS.names())
    with pytest.raises(NotFoundError, match="unknown protocol 'cifar10-3'"):
        get_protocol("cifar10-3")
    with pytest.raises(InputError, match="protocol 'cifar10-1'"):
        get_protocol("cifar10-1", queries=5)


def test_split_files_that_are_malformed_or_unwritable_are_input_errors(tmp_path: Path):
    split = Split(query=[0], train=[1], val=[], database=[1, 2], protocol="p")
    with pytest.raises(InputError, match="must end in .json or .npz"):
        split.save(tmp_path / "s.txt")
    with pytest.raises(InputError, match="is a folder"):
        (tmp_path / "d.json").mkdir()
        split.save(tmp_path / "d.json")
    path = split.save(tmp_path / "new" / "s.json")  # missing folders are made; no temporary file is left
    assert Split.load(path).sizes == split.sizes and sorted(p.name for p in path.parent.iterdir()) == ["s.json"]
    for text in ('["a list"]', '{"format": "hashlearn-split", "query": [0]}'):
        path.write_text(text)
        with pytest.raises(InputError, match="s.json"):
            Split.load(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="s.json is unreadable"):
        Split.load(path)


# -- official-split: the source's own validation split, and a true description ------------------------


@pytest.fixture
def with_val() -> ImageDataset:
    """20 train, 6 val, 8 test images of two classes (a train/ val/ test/ folder tree)."""
    splits = ["train"] * 20 + ["val"] * 6 + ["test"] * 8
    return labelled(np.arange(34) % 2, splits)


def test_official_split_uses_the_sources_own_validation_split(with_val):
    split = get_protocol("official-split").split(with_val, seed=0)
    assert np.array_equal(split.query, np.arange(26, 34))
    assert np.array_equal(split.train, np.arange(20))  # all of train: nothing is held out of it
    assert np.array_equal(split.val, np.arange(20, 26))  # exactly the val folder
    assert np.array_equal(split.database, np.arange(26))  # every non-query image: train and val
    assert split.params["val_split"] == "val"
    no_val = labelled(np.arange(28) % 2, ["train"] * 20 + ["test"] * 8)
    fallback = get_protocol("official-split").split(no_val, seed=0)  # no val split: 10 % of train per class
    assert fallback.sizes == {"query": 8, "train": 18, "val": 2, "database": 20}
    ignored = get_protocol("official-split", val_split=None).split(with_val, seed=0)
    assert np.isin(ignored.val, np.arange(20)).all() and len(ignored.val) == 2


def test_official_split_description_says_what_it_does():
    summary = PROTOCOLS.info("official-split")["summary"]
    assert "training = database" not in summary
    assert "val = the official val split when there is one" in summary
    assert "database = every non-query image (train and val)" in summary


def test_a_val_split_with_a_database_without_training(with_val):
    split = get_protocol("per-class", query_split="test", val_split="val", database_includes_train=False).split(
        with_val, seed=0
    )
    assert split.sizes == {"query": 8, "train": 20, "val": 6, "database": 0}


# -- protocol parameters: checked by name and by type ---------------------------------------------


def test_a_parameter_the_protocol_does_not_take_lists_the_ones_it_takes():
    from hashlearn.data import protocol_params

    assert protocol_params("cifar10-1") == ["val_fraction"]
    assert "query_per_class" in protocol_params("per-class") and "val_split" in protocol_params("official-split")
    with pytest.raises(InputError, match=r"protocol 'per-class' has no parameter 'queries'; its parameters are "
                                         r"query_per_class, query_fraction, query_split, train_per_class"):  # fmt: skip
        get_protocol("per-class", queries=5)
    with pytest.raises(InputError, match="'per-label' has no parameter 'query_per_class'; .* query_per_label"):
        get_protocol("per-label", query_per_class=5)


@pytest.mark.parametrize(
    "name,params,needle",
    [
        ("per-class", {"query_per_class": "ten"}, "query_per_class must be a whole number"),
        ("per-class", {"query_per_class": 2.5}, "query_per_class must be a whole number"),
        ("per-class", {"query_fraction": 2}, "query_fraction must be in (0, 1]"),
        ("per-class", {"database_includes_train": "yes"}, "database_includes_train must be true or false"),
        ("per-class", {"query_split": 3}, "query_split must be the name of an official split"),
        ("per-label", {"train_per_label": -1}, "train_per_label must be a whole number"),
        ("cifar10-1", {"val_fraction": "half"}, "val_fraction must be in [0, 1)"),
    ],
)
def test_parameter_values_of_the_wrong_kind_are_input_errors(name, params, needle):
    with pytest.raises(InputError) as info:
        get_protocol(name, **params)
    assert needle in str(info.value)


# -- the default protocol of a dataset ----------------------------------------------------------------


def test_default_protocol_fits_the_dataset(cifar_like, with_val, tmp_path: Path):
    from PIL import Image

    from hashlearn.data import default_protocol, prepare

    assert default_protocol("cifar10") == "cifar10-1"
    assert default_protocol("nus-wide") == "nus-wide"
    assert default_protocol(labelled(np.arange(10) % 2)) == "per-class"  # no official split
    assert default_protocol(labelled(np.arange(10) % 2, ["train"] * 10)) == "per-class"  # train only
    assert default_protocol(with_val) == "official-split"
    assert default_protocol(labelled(np.eye(3, dtype=np.uint8)[[0, 1, 2, 0]])) == "per-label"
    copy = dataclasses.replace(cifar_like, name="c10", info={"dataset": "cifar10"})  # a copy prepared as 'c10'
    assert default_protocol(copy) == "cifar10-1"
    for rel in ("train/cat/1.png", "train/dog/1.png", "test/cat/2.png"):
        (tmp_path / "pets" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(tmp_path / "pets" / rel)
    prepare("folder", tmp_path / "pets", cache_dir=tmp_path / "cache")
    assert default_protocol("pets", cache_dir=tmp_path / "cache") == "official-split"
    with pytest.raises(InputError, match="'folder' has no default protocol until it is prepared .*--protocol"):
        default_protocol("folder", cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="'roses' is neither a registered dataset nor prepared in .*cache"):
        default_protocol("roses", cache_dir=tmp_path / "cache")


# -- a split file checked against the dataset it is applied to ----------------------------------------


def test_a_split_is_checked_against_the_images_it_was_made_for(with_val, tmp_path: Path):
    split = get_protocol("official-split").split(with_val, seed=0)
    loaded = Split.load(split.save(tmp_path / "s.json"))
    assert loaded.ids_sha256 == split.ids_sha256 and loaded.check(with_val, tmp_path / "s.json") is loaded
    with pytest.raises(InputError, match=r"split file .*s.json was made for dataset 'standin' of 34 images, not"):
        loaded.check(with_val.subset(np.arange(30)), tmp_path / "s.json")
    reordered = with_val.subset(np.arange(34)[::-1])
    with pytest.raises(InputError, match="whose images differ from those of 'standin' .*another order"):
        loaded.check(reordered, tmp_path / "s.json")
    old = Split(query=[0], train=[1], val=[], database=[1, 2], protocol="p", n_images=3)  # no ids recorded
    assert old.check(labelled([0, 1, 0])) is old
    with pytest.raises(InputError, match="indices outside 0..2"):
        Split(query=[5], train=[1], val=[], database=[1], protocol="p", n_images=3).check(labelled([0, 1, 0]))
