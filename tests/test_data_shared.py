"""The real shared data (HASHLEARN_DATA): golden PNG sample, CIFAR-10 copy and its protocols, MNIST."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hashlearn.data import get_protocol, load_dataset, prepare

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def cifar10(shared_data):
    """The 60,000-image JPEG copy, prepared once into the session's temporary cache."""
    started = time.perf_counter()
    ds = prepare("cifar10", source=shared_data / "cifar10-jpeg/CIFAR-10-images.tar.gz")
    print(f"prepared CIFAR-10 in {time.perf_counter() - started:.1f} s")
    return ds


def test_png_sample_is_the_first_200_official_training_images(shared_data):
    ds = load_dataset("cifar10-png200")
    assert ds.images.shape == (200, 32, 32, 3)
    assert ds.ids[:3].tolist() == ["train/1.png", "train/2.png", "train/3.png"]
    assert [ds.class_names[i] for i in ds.labels[:5]] == ["frog", "truck", "truck", "deer", "automobile"]
    assert ds.images[0, 0, 0].tolist() == [59, 62, 63]  # first pixel of data_batch_1 image 0
    assert ds.class_counts() == {"airplane": 14, "automobile": 28, "bird": 22, "cat": 21, "deer": 19,
                                 "dog": 19, "frog": 18, "horse": 21, "ship": 15, "truck": 23}  # fmt: skip


def test_cifar10_copy_counts_and_order(cifar10):
    assert cifar10.images.shape == (60000, 32, 32, 3)
    assert cifar10.split_counts() == {"train": 50000, "test": 10000}
    assert set(cifar10.class_counts().values()) == {6000}
    assert cifar10.ids[[0, 4999, 50000]].tolist() == [
        "train/airplane/0000.jpg", "train/airplane/4999.jpg", "test/airplane/0000.jpg",
    ]  # fmt: skip


def test_jpeg_copy_matches_the_lossless_sample_to_30_db(cifar10):
    """k-th PNG of a class = train/<class>/000k.jpg, since within-class order is the batch order."""
    png = load_dataset("cifar10-png200")
    position = {name: i for i, name in enumerate(cifar10.ids.tolist())}
    seen: dict[str, int] = {}
    psnr = []
    for i in range(len(png)):
        cls = png.class_names[png.labels[i]]
        k = seen[cls] = seen.get(cls, -1) + 1
        jpeg = cifar10.images[position[f"train/{cls}/{k:04d}.jpg"]].astype(float)
        psnr.append(10 * np.log10(255**2 / np.mean((png.images[i] - jpeg) ** 2)))
    assert 29 < np.median(psnr) < 32 and min(psnr) > 24


def test_cifar10_protocol_sizes_on_the_real_copy(cifar10):
    one = get_protocol("cifar10-1").split(cifar10, seed=0)
    assert one.sizes == {"query": 1000, "train": 4500, "val": 500, "database": 59000}
    assert np.bincount(cifar10.labels[one.query]).tolist() == [100] * 10
    assert np.bincount(cifar10.labels[np.union1d(one.train, one.val)]).tolist() == [500] * 10
    assert np.intersect1d(one.query, one.database).size == 0
    assert np.isin(one.train, one.database).all() and np.isin(one.val, one.database).all()
    assert get_protocol("cifar10-I").split(cifar10, seed=0).sizes["database"] == 54000
    two = get_protocol("cifar10-II").split(cifar10, seed=0)
    assert two.sizes == {"query": 10000, "train": 45000, "val": 5000, "database": 50000}
    assert set(cifar10.official_split[two.query]) == {"test"}


def test_mnist_copy_has_the_test_set_only(shared_data):
    ds = load_dataset("mnist")
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.info["ignored_without_pair"] == [str(shared_data / "mnist-test/train-labels-idx1-ubyte.gz")]
