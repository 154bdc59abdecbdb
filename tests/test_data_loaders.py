"""Every dataset loader, on small sources generated in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashlearn.data import ImageDataset, load_dataset, make_mosaics, read_image
from hashlearn.data.datasets import cifar10 as cifar10_module
from hashlearn.errors import InputError, NotFoundError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(path: Path, color, size=(4, 4), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def make_tar(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname or ".")
    return archive


# -- CIFAR-10 official pickles -----------------------------------------------------------------


def cifar_batch(labels: list[int], first_red: int) -> dict:
    """A batch in the official layout: data rows are 1024 R, 1024 G, 1024 B values."""
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    for i in range(len(labels)):
        data[i, :1024] = first_red + i  # red plane
        data[i, 1024:2048] = 7  # green plane
        data[i, 2048] = 9  # blue of pixel (0, 0) only
    return {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f"] * len(labels)}


@pytest.fixture
def cifar_pickles(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [n.encode() for n in cifar10_module.CIFAR10_CLASSES]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    (folder / "data_batch_1").write_bytes(pickle.dumps(cifar_batch([6, 9, 9], first_red=10), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch([3, 8], first_red=100), protocol=2))
    return make_tar(folder, tmp_path / "cifar-10-python.tar.gz", arcname="cifar-10-batches-py")


def test_cifar10_from_official_pickle_tarball(cifar_pickles: Path):
    ds = load_dataset("cifar10", cifar_pickles)
    assert ds.images.shape == (5, 32, 32, 3)
    assert ds.ids.tolist() == ["data_batch_1:0", "data_batch_1:1", "data_batch_1:2", "test_batch:0", "test_batch:1"]
    assert ds.labels.tolist() == [6, 9, 9, 3, 8]
    assert ds.official_split.tolist() == ["train", "train", "train", "test", "test"]
    assert ds.images[1, 0, 0].tolist() == [11, 7, 9]  # channel planes become the last axis
    assert ds.images[4, 5, 5].tolist() == [101, 7, 0]
    assert ds.class_names[6] == "frog"


def test_cifar10_from_extracted_pickle_folder(cifar_pickles: Path):
    ds = load_dataset("cifar10", cifar_pickles.parent / "cifar-10-batches-py", size=16)
    assert ds.images.shape == (5, 16, 16, 3)
    assert ds.images[3, 5, 5].tolist() == [100, 7, 0]  # uniform planes survive resizing


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match="forbidden object builtins.print"):
        load_dataset("cifar10", folder)


def test_cifar10_downloads_the_official_archive_when_nothing_is_local(cifar_pickles, tmp_path, monkeypatch):
    monkeypatch.delenv("HASHLEARN_DATA", raising=False)
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10_module, "CIFAR10_URL", cifar_pickles.as_uri())
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", hashlib.md5(cifar_pickles.read_bytes()).hexdigest())
    ds = load_dataset("cifar10")
    assert len(ds) == 5
    assert (tmp_path / "cache" / "downloads" / "cifar-10-python.tar.gz").exists()


def test_cifar10_without_source_or_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HASHLEARN_DATA", raising=False)
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10_module, "CIFAR10_URL", (tmp_path / "absent.tar.gz").as_uri())
    with pytest.raises(NotFoundError, match="pass --source PATH"):
        load_dataset("cifar10")


def test_cifar10_download_with_wrong_md5_is_rejected(cifar_pickles, tmp_path, monkeypatch):
    monkeypatch.delenv("HASHLEARN_DATA", raising=False)
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10_module, "CIFAR10_URL", cifar_pickles.as_uri())
    with pytest.raises(InputError, match="wrong md5"):
        load_dataset("cifar10")
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


# -- class folders ---------------------------------------------------------------------------


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """Brain-MRI-like tree: Training/ and Testing/, a grey scan, a stray .ipynb_checkpoints."""
    root = tmp_path / "mri"
    solid(root / "Training/glioma/a.jpg", RED)
    solid(root / "Training/glioma/b.png", 200, mode="L")  # grey: becomes RGB (200, 200, 200)
    solid(root / "Training/notumor/c.png", BLUE)
    solid(root / "Testing/glioma/d.png", GREEN)
    solid(root / "Testing/notumor/.ipynb_checkpoints/d-checkpoint.png", GREEN)
    (root / "README.md").write_text("not an image")
    return root


def test_class_folder_reads_split_class_and_ids(class_tree: Path):
    ds = load_dataset("folder", class_tree)
    assert ds.ids.tolist() == ["Training/glioma/a.jpg", "Training/glioma/b.png", "Training/notumor/c.png",
                               "Testing/glioma/d.png"]  # fmt: skip
    assert ds.class_names == ["glioma", "notumor"]
    assert ds.labels.tolist() == [0, 0, 1, 0]
    assert ds.official_split.tolist() == ["train", "train", "train", "test"]
    assert ds.images.shape == (4, 4, 4, 3)
    assert ds.images[1, 0, 0].tolist() == [200, 200, 200]
    assert ds.images[3, 0, 0].tolist() == [0, 255, 0]


def test_class_folder_tarball_with_wrapping_folder_equals_the_folder(class_tree: Path, tmp_path: Path):
    archive = make_tar(class_tree, tmp_path / "mri.tar.gz", arcname="brain_mri")
    from_tar, from_dir = load_dataset("brain-mri", archive), load_dataset("folder", class_tree)
    assert from_tar.ids.tolist() == from_dir.ids.tolist()
    np.testing.assert_array_equal(from_tar.images, from_dir.images)


def test_folder_without_split_level_has_no_official_split(tmp_path: Path):
    solid(tmp_path / "pets/cat/1.png", RED)
    solid(tmp_path / "pets/dog/1.png", BLUE)
    ds = load_dataset("folder", tmp_path / "pets", mode="L")
    assert ds.official_split is None
    assert ds.images.shape == (2, 4, 4, 1)
    assert ds.images[:, 0, 0, 0].tolist() == [76, 29]  # ITU-R 601 luma of red and blue


def test_folder_with_an_unexpected_layout_names_a_path(tmp_path: Path):
    solid(tmp_path / "set/cat/1.png", RED)
    solid(tmp_path / "set/loose.png", RED)
    with pytest.raises(InputError, match=r"expected root/<class>/<image> .*, found loose.png"):
        load_dataset("folder", tmp_path / "set")
    solid(tmp_path / "deep/a/cat/1.png", RED)
    solid(tmp_path / "deep/b/cat/1.png", RED)
    with pytest.raises(InputError, match=r"found a/cat/1.png"):
        load_dataset("folder", tmp_path / "deep")


def test_images_of_different_sizes_need_size(tmp_path: Path):
    solid(tmp_path / "set/a/1.png", RED, size=(4, 4))
    solid(tmp_path / "set/a/2.png", RED, size=(6, 4))
    with pytest.raises(InputError, match=r"2.png is 6x4 but a/1.png is 4x4; .*--size"):
        load_dataset("folder", tmp_path / "set")
    assert load_dataset("folder", tmp_path / "set", size=2).images.shape == (2, 2, 2, 3)


def test_size_scales_the_shorter_side_then_crops_the_centre(tmp_path: Path):
    img = np.zeros((4, 8, 3), dtype=np.uint8)
    img[:, :2], img[:, 2:6], img[:, 6:] = RED, GREEN, BLUE  # 8 wide, 4 high
    Image.fromarray(img).save(tmp_path / "wide.png")
    assert read_image(tmp_path / "wide.png", size=4)[:, :, 1].min() == 255  # only the green middle is left
    assert read_image(tmp_path / "wide.png", size=2).shape == (2, 2, 3)
    assert read_image(tmp_path / "wide.png").shape == (4, 8, 3)


def test_corrupt_image_is_named_or_skipped(class_tree: Path):
    (class_tree / "Training/notumor/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match=r"cannot read image .*Training/notumor/broken.jpg"):
        load_dataset("folder", class_tree)
    ds = load_dataset("folder", class_tree, skip_bad=True)
    assert len(ds) == 4
    assert ds.info["skipped"] == [str(class_tree / "Training/notumor/broken.jpg")]


def test_read_image_modes_and_errors(tmp_path: Path):
    solid(tmp_path / "g.png", 90, mode="L")
    assert read_image(tmp_path / "g.png")[0, 0].tolist() == [90, 90, 90]
    assert read_image(tmp_path / "g.png", mode="L").shape == (4, 4, 1)
    with pytest.raises(NotFoundError, match="nope.jpg does not exist"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_text("text")
    with pytest.raises(InputError, match="cannot read image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_a_folder_whose_images_are_all_grey_is_stored_as_one_channel(tmp_path: Path):
    root = tmp_path / "xray"
    solid(root / "train/lung/1.png", 90, mode="L")
    solid(root / "train/lung/2.png", 1, mode="1")  # 1-bit
    solid(root / "test/bone/3.png", (120, 255), mode="LA")  # grey + alpha
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(root / "test/bone/4.png")  # 16-bit grey
    ds = load_dataset("folder", root)
    assert ds.images.shape == (4, 4, 4, 1)
    assert ds.images[:, 0, 0, 0].tolist() == [90, 255, 120, 156]
    assert ds.info["detected_mode"] == "L"
    forced = load_dataset("folder", root, mode="RGB")  # --mode still decides when given
    assert forced.images.shape == (4, 4, 4, 3) and forced.images[0, 0, 0].tolist() == [90, 90, 90]
    assert "detected_mode" not in forced.info
    tarred = load_dataset("folder", make_tar(root, tmp_path / "xray.tar.gz"))  # archives are probed the same way
    assert tarred.images.shape == (4, 4, 4, 1)


def test_one_colour_image_makes_the_folder_rgb(tmp_path: Path):
    root = tmp_path / "mixed"
    solid(root / "a/1.png", 90, mode="L")
    solid(root / "b/1.png", RED)
    (root / "b/broken.png").write_bytes(b"not an image")  # unreadable: neither grey nor colour
    ds = load_dataset("folder", root, skip_bad=True)
    assert ds.images.shape == (2, 4, 4, 3) and ds.info["detected_mode"] == "RGB"
    assert ds.images[0, 0, 0].tolist() == [90, 90, 90]
    assert load_dataset("folder", root, mode="L", skip_bad=True).images.shape == (2, 4, 4, 1)


# -- CSV-labelled folders (Kaggle / the shared PNG sample) -----------------------------------


def test_csv_labelled_images_follow_csv_order(tmp_path: Path):
    root = tmp_path / "sample/image_data_format_1"
    solid(root / "train/1.png", RED)
    solid(root / "train/2.png", GREEN)
    solid(root / "train/10.png", BLUE)
    (root / "trainLabels.csv").write_text("1.png,frog\n2.png,truck\n10.png,frog\n")
    ds = load_dataset("csv", make_tar(tmp_path / "sample", tmp_path / "sample.tar.gz"))
    assert ds.ids.tolist() == ["train/1.png", "train/2.png", "train/10.png"]
    assert ds.class_names == ["frog", "truck"]
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.official_split.tolist() == ["train"] * 3
    assert ds.images[2, 0, 0].tolist() == [0, 0, 255]


def test_csv_labelled_grey_images_are_one_channel(tmp_path: Path):
    root = tmp_path / "scans"
    solid(root / "1.png", 30, mode="L")
    solid(root / "2.png", 60, mode="L")
    (root / "labels.csv").write_text("file,label\n1.png,a\n2.png,b\n")
    assert load_dataset("csv", root).images[:, 0, 0, 0].tolist() == [30, 60]
    assert load_dataset("csv", root, mode="RGB").images.shape == (2, 4, 4, 3)


# -- idx files and digits --------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def test_idx_folder_loads_each_split_with_images_and_labels(tmp_path: Path):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 2]))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 1, 1]))  # labels without images: ignored
    ds = load_dataset("mnist", tmp_path)
    assert ds.images.shape == (2, 3, 3, 1)
    assert ds.images[1, 2, 2, 0] == 17
    assert ds.labels.tolist() == [7, 2]
    assert ds.ids.tolist() == ["test:0", "test:1"]
    assert ds.info["ignored_without_pair"] == [str(tmp_path / "train-labels-idx1-ubyte")]


def test_idx_raw_files_and_bad_magic(tmp_path: Path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.full((1, 2, 2), 5))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([4]))
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.class_names[4] == "Coat"
    assert ds.official_split.tolist() == ["train"]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03rest")
    with pytest.raises(InputError, match="bad magic number"):
        load_dataset("fashion-mnist", tmp_path)


def test_digits_are_scaled_from_0_16_to_0_255():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    raw = load_digits().images
    assert ds.images.shape == (1797, 8, 8, 1)
    assert ds.official_split is None
    np.testing.assert_array_equal(ds.images[..., 0], np.round(raw * 255 / 16).astype(np.uint8))
    assert int(ds.images.max()) == 255


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_fashion_mnist_system_copy_has_70000_images(monkeypatch):
    monkeypatch.delenv("HASHLEARN_DATA", raising=False)
    ds = load_dataset("fashion-mnist")
    assert ds.images.shape == (70000, 28, 28, 1)
    assert ds.split_counts() == {"train": 60000, "test": 10000}
    assert ds.class_counts()["Ankle boot"] == 7000


# -- list files (HashNet / DeepHash-pytorch) --------------------------------------------------


@pytest.fixture
def list_set(tmp_path: Path) -> Path:
    root = tmp_path / "nus"
    for name, color in (("a", RED), ("b", GREEN), ("c", BLUE), ("d", RED)):
        solid(root / f"images/{name}.jpg", color)
    (root / "classes.txt").write_text("sky\nwater\nperson\n")
    # the authors' lists carry their own prefix (data/nus_wide/): it is stripped to find the files
    (root / "database.txt").write_text("data/nus_wide/images/a.jpg 1 1 0\ndata/nus_wide/images/b.jpg 0 0 1\n")
    (root / "train.txt").write_text("data/nus_wide/images/a.jpg 1 1 0\n")
    (root / "test.txt").write_text("data/nus_wide/images/c.jpg 1 0 1\ndata/nus_wide/images/d.jpg 0 1 0\n")
    return root


def test_list_files_give_multi_hot_labels_and_list_splits(list_set: Path):
    ds = load_dataset("nus-wide", list_set)
    assert ds.multilabel
    assert ds.ids.tolist() == ["images/a.jpg", "images/b.jpg", "images/c.jpg", "images/d.jpg"]
    assert ds.labels.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]]
    assert ds.labels.dtype == np.uint8
    assert ds.official_split.tolist() == ["database", "database", "test", "test"]
    assert ds.class_names == ["sky", "water", "person"]
    assert ds.class_counts() == {"sky": 2, "water": 2, "person": 2}


def test_list_files_chosen_explicitly_and_single_label_rows(list_set: Path):
    (list_set / "classes.txt").unlink()
    ds = load_dataset("image-list", list_set, lists=["test.txt", "database.txt"])
    assert ds.official_split.tolist() == ["test", "test", "database", "database"]
    (list_set / "one.txt").write_text("images/a.jpg 0 1\nimages/b.jpg 1 0\n")
    single = load_dataset("imagenet-100", list_set, lists=["one.txt"])
    assert not single.multilabel
    assert single.labels.tolist() == [1, 0]
    assert single.class_names == ["label0", "label1"]


def test_list_file_with_conflicting_labels_is_an_error(list_set: Path):
    (list_set / "train.txt").write_text("data/nus_wide/images/a.jpg 0 1 0\n")
    with pytest.raises(InputError, match=r"train.txt line 1: .*a.jpg has labels that differ"):
        load_dataset("nus-wide", list_set)


# -- synthetic mosaics -----------------------------------------------------------------------


def test_mosaics_are_seeded_synthetic_and_stay_within_a_split():
    images = np.zeros((12, 2, 2, 3), dtype=np.uint8)
    images[:, :, :, 0] = np.arange(12)[:, None, None]  # red channel = source index
    base = ImageDataset(
        images=images, labels=np.arange(12) % 3, ids=[f"img{i}" for i in range(12)], class_names=["a", "b", "c"],
        official_split=["train"] * 8 + ["test"] * 4, name="toy",
    )  # fmt: skip
    ds = make_mosaics(base, seed=0)
    assert ds.name == "toy-mosaic-synthetic"
    assert ds.images.shape == (3, 4, 4, 3)
    assert ds.official_split.tolist() == ["train", "train", "test"]
    for m in range(3):
        tiles = [int(t[3:]) for t in ds.ids[m].split("+")]
        assert ds.images[m, 0, 0, 0] == tiles[0] and ds.images[m, 2, 2, 0] == tiles[3]
        assert ds.labels[m].tolist() == [int(c in {t % 3 for t in tiles}) for c in range(3)]
        assert set(tiles) <= (set(range(8)) if m < 2 else set(range(8, 12)))
    assert make_mosaics(base, seed=0).ids.tolist() == ds.ids.tolist()
    assert make_mosaics(base, seed=1).ids.tolist() != ds.ids.tolist()


def test_cifar10_mosaic_dataset_is_built_from_cifar10(tmp_path: Path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps(cifar_batch([6, 9, 9, 0], first_red=10), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch([3, 8], first_red=100), protocol=2))
    ds = load_dataset("cifar10-mosaic-synthetic", folder, seed=0)
    assert ds.name == "cifar10-mosaic-synthetic"
    assert ds.images.shape == (1, 64, 64, 3)  # 2 test images are too few for a mosaic
    assert ds.labels.tolist() == [[1, 0, 0, 0, 0, 0, 1, 0, 0, 1]]
    assert ds.official_split.tolist() == ["train"]
    with pytest.raises(InputError, match="too few images for one 2x2 mosaic"):
        make_mosaics(load_dataset("cifar10", folder).subset([0, 1, 4]))
