"""The fine-grained dataset builders (CUB-200-2011, FGVC-Aircraft) on small generated copies of their
layouts, the standard fine-grained protocol on them (test = queries, train = database), and the
``classes`` protocol argument (Fashion-MNIST's five upper-body classes)."""

import tarfile

import numpy as np
import pytest
from PIL import Image

from hashlearn.data import ImageDataset, default_protocol, get_protocol, load_dataset
from hashlearn.errors import InputError, NotFoundError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _image(path, size=(20, 16), box=None):
    """A blue image, red inside ``box`` (left, top, right, bottom)."""
    im = Image.new("RGB", size, BLUE)
    if box:
        im.paste(RED, box)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_cub(root, classes=3, per_class=4):
    """``root/CUB_200_2011`` with images.txt, image_class_labels.txt, train_test_split.txt, classes.txt and
    bounding_boxes.txt; image k of a class is training when k is even. Returns the expected rows."""
    base = root / "CUB_200_2011"
    lines = {"images": [], "labels": [], "split": [], "boxes": []}
    expected = []
    image_id = 0
    for c in range(classes):
        folder = f"{c + 1:03d}.Bird_{c}"
        for k in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{k}.png"
            _image(base / "images" / rel, box=(4, 2, 12, 10))
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c + 1}")
            lines["split"].append(f"{image_id} {1 if k % 2 == 0 else 0}")
            lines["boxes"].append(f"{image_id} 4.0 2.0 8.0 8.0")  # x y w h = the red square
            expected.append((rel, c, "train" if k % 2 == 0 else "test"))
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (base / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (base / "classes.txt").write_text("".join(f"{c + 1} {c + 1:03d}.Bird_{c}\n" for c in range(classes)))
    return base, expected


def test_cub_reads_the_index_files_in_their_order(tmp_path):
    base, expected = make_cub(tmp_path)
    ds = load_dataset("cub", base, size=8)
    assert list(ds.ids) == [rel for rel, _, _ in expected]
    assert ds.labels.tolist() == [c for _, c, _ in expected]
    assert list(ds.official_split) == [s for _, _, s in expected]
    assert ds.class_names == ["001.Bird_0", "002.Bird_1", "003.Bird_2"]
    assert ds.images.shape == (12, 8, 8, 3)
    # a parent folder and an archive of it work too
    assert list(load_dataset("cub", tmp_path, size=8).ids) == list(ds.ids)
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="CUB_200_2011")
    assert load_dataset("cub", archive, size=8).labels.tolist() == ds.labels.tolist()


def test_cub_crop_box_keeps_the_bounding_box_only(tmp_path):
    base, _ = make_cub(tmp_path, classes=1, per_class=2)
    whole = load_dataset("cub", base, size=8)
    cropped = load_dataset("cub", base, size=8, crop="box")
    red = lambda im: (im[..., 0] > 200) & (im[..., 2] < 60)  # noqa: E731
    assert red(cropped.images).all()  # the box is the red square
    assert not red(whole.images).all() and red(whole.images).any()


def test_cub_official_split_protocol_test_is_queries_train_is_database(tmp_path):
    base, expected = make_cub(tmp_path, classes=2, per_class=10)
    ds = load_dataset("cub", base, size=8)
    assert default_protocol(ds) == "official-split"
    split = get_protocol("official-split").split(ds, seed=0)
    train = np.array([i for i, (_, _, s) in enumerate(expected) if s == "train"])
    test = np.array([i for i, (_, _, s) in enumerate(expected) if s == "test"])
    assert np.array_equal(split.query, test)
    assert np.array_equal(split.database, train)
    assert np.array_equal(np.union1d(split.train, split.val), train)


def test_cub_bad_files_are_one_line_errors(tmp_path):
    base, _ = make_cub(tmp_path, classes=1, per_class=2)
    with pytest.raises(InputError, match="crop"):
        load_dataset("cub", base, size=8, crop="yes")
    (base / "train_test_split.txt").write_text("1 1\n2 7\n")
    with pytest.raises(InputError, match="flag must be 1 or 0"):
        load_dataset("cub", base, size=8)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(NotFoundError, match="train_test_split.txt"):
        load_dataset("cub", base, size=8)
    with pytest.raises(NotFoundError, match="images.txt"):
        load_dataset("cub", tmp_path / "CUB_200_2011" / "images", size=8)


def make_aircraft(root):
    """``root/fgvc-aircraft-2013b/data`` with 2 variants (names with spaces), train/val/test lists."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["Boeing 707-320", "Cessna 172"]
    rows = {"train": [("1000001", 0), ("1000002", 1)], "val": [("1000003", 0), ("1000004", 1)],
            "test": [("1000005", 0), ("1000006", 1), ("1000007", 1)]}
    boxes = []
    for part, items in rows.items():
        (data / f"images_variant_{part}.txt").parent.mkdir(parents=True, exist_ok=True)
        (data / f"images_variant_{part}.txt").write_text("".join(f"{i} {variants[c]}\n" for i, c in items))
        for i, _ in items:
            _image(data / "images" / f"{i}.jpg", box=(2, 2, 14, 12))
            boxes.append(f"{i} 2 2 14 12")
    (data / "variants.txt").write_text("".join(v + "\n" for v in variants))
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return data, rows, variants


def test_aircraft_reads_the_variant_lists_with_trainval_as_training(tmp_path):
    data, rows, variants = make_aircraft(tmp_path)
    ds = load_dataset("aircraft", tmp_path / "fgvc-aircraft-2013b", size=8)
    assert ds.class_names == variants
    order = [(i, c, p) for p in ("train", "val", "test") for i, c in rows[p]]
    assert list(ds.ids) == [i for i, _, _ in order]
    assert ds.labels.tolist() == [c for _, c, _ in order]
    assert list(ds.official_split) == ["train"] * 4 + ["test"] * 3  # val joins train (trainval, the standard)
    split = get_protocol("official-split").split(ds, seed=0)
    assert np.array_equal(split.query, [4, 5, 6]) and np.array_equal(split.database, [0, 1, 2, 3])
    kept = load_dataset("aircraft", data, size=8, trainval=False)
    assert list(kept.official_split) == ["train"] * 2 + ["val"] * 2 + ["test"] * 3
    boxed = load_dataset("aircraft", data, size=8, crop="box")
    assert ((boxed.images[..., 0] > 200) & (boxed.images[..., 2] < 60)).all()


def test_aircraft_bad_input_is_one_line(tmp_path):
    data, _, _ = make_aircraft(tmp_path)
    with pytest.raises(InputError, match="level"):
        load_dataset("aircraft", data, size=8, level="model")
    (data / "variants.txt").write_text("Boeing 707-320\n")
    with pytest.raises(InputError, match="Cessna 172"):
        load_dataset("aircraft", data, size=8)


# --- the classes protocol argument ----------------------------------------------------------------------------
def _ten_class_set(per_class=30):
    labels = np.repeat(np.arange(10), per_class)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return ImageDataset(images=np.zeros((len(labels), 2, 2, 1), np.uint8), labels=labels,
                        ids=[f"i{k}" for k in range(len(labels))], class_names=names, name="fm")


def test_the_classes_argument_restricts_any_protocol_to_those_classes():
    ds = _ten_class_set()
    upper = ["T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"]
    split = get_protocol("per-class", query_per_class=5, train_per_class=10, classes=upper).split(ds, seed=0)
    assert split.sizes == {"query": 25, "train": 45, "val": 5, "database": 125}
    for part in ("query", "train", "val", "database"):
        assert set(ds.labels[getattr(split, part)].tolist()) == {0, 2, 3, 4, 6}  # original labels kept
    assert split.params["classes"] == upper
    by_index = get_protocol("per-class", query_per_class=5, train_per_class=10, classes=[6, 4, 3, 2, 0])
    assert np.array_equal(by_index.split(ds, seed=0).query, split.query)


@pytest.mark.parametrize("classes,match", [(["Hat"], "not a class"), ([0, 0], "twice"), ("Shirt", "list"),
                                           ([12], "not a class")])
def test_bad_classes_are_one_line_errors(classes, match):
    with pytest.raises(InputError, match=match):
        get_protocol("per-class", query_per_class=5, classes=classes).split(_ten_class_set(), seed=0)


@pytest.mark.slow
def test_training_on_a_class_subset_from_the_settings(tmp_path):
    """``protocol_args: {classes: [...]}`` as ``hashlearn train --set`` gives it."""
    from hashlearn.train.run import train
    from test_train_tiny import tiny_config, tiny_dataset

    ds = tiny_dataset()
    cfg = tiny_config(protocol="per-class", protocol_args="{query_per_class: 5, classes: [c0, c2]}",
                      **{"train.epochs": 1})
    metrics = train(cfg, dataset=ds, out=tmp_path / "r", progress=False)[0]
    assert metrics["sizes"] == {"query": 10, "train": 44, "val": 6, "database": 50}  # 2 classes of 30 images
    assert "'classes': ['c0', 'c2']" in str(metrics["protocol_description"])


# --- the train_class_fraction protocol argument (an imbalanced training set) ----------------------------------
def test_train_class_fraction_cuts_only_the_training_images_of_that_class():
    ds = _ten_class_set(per_class=40)
    plain = get_protocol("per-class", query_per_class=5).split(ds, seed=3)
    cut = get_protocol("per-class", query_per_class=5, train_class_fraction={"Coat": 0.1}).split(ds, seed=3)
    for part in ("query", "val", "database"):
        assert np.array_equal(getattr(cut, part), getattr(plain, part))  # retrieval is measured on the same images
    coat = ds.class_names.index("Coat")
    before = np.bincount(ds.labels[plain.train], minlength=10)
    after = np.bincount(ds.labels[cut.train], minlength=10)
    assert after[coat] == round(before[coat] * 0.1) and after[coat] >= 1
    assert np.array_equal(np.delete(after, coat), np.delete(before, coat))
    assert set(cut.train) <= set(plain.train)
    assert cut.params["train_class_fraction"] == {"Coat": 0.1}
    again = get_protocol("per-class", query_per_class=5, train_class_fraction={4: 0.1}).split(ds, seed=3)
    assert np.array_equal(again.train, cut.train)  # seeded; a class index means the same class
    other = get_protocol("per-class", query_per_class=5, train_class_fraction={4: 0.1}).split(ds, seed=4)
    assert not np.array_equal(other.train, cut.train)


@pytest.mark.parametrize("fractions,match", [({"Hat": 0.1}, "not a class"), ({"Coat": 0}, r"in \(0, 1\]"),
                                             ({"Coat": 1.5}, r"in \(0, 1\]"), ({"Coat": "x"}, r"in \(0, 1\]"),
                                             (0.1, "must map class")])
def test_bad_train_class_fraction_is_a_one_line_error(fractions, match):
    with pytest.raises(InputError, match=match):
        get_protocol("per-class", query_per_class=5, train_class_fraction=fractions).split(_ten_class_set(), seed=0)
