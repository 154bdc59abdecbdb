"""CUB-200-2011 (Wah et al., Caltech-UCSD Birds, 2011): 11,788 images of 200 bird species.

The archive's index files, read as they come (folder ``CUB_200_2011/`` or its ``.tgz``)::

    images.txt               <image id> <path under images/>
    image_class_labels.txt   <image id> <class id, 1-based>
    train_test_split.txt     <image id> <1 = training, 0 = test>
    classes.txt              <class id> <name>           (optional: names from the image folders)
    bounding_boxes.txt       <image id> <x> <y> <w> <h>  (optional; used with ``crop: box``)

Official split: 5,994 training and 5,794 test images; the standard fine-grained hashing protocol
(spec §6) is ``official-split`` (the dataset's default): queries = test, database = train (a 10 %
per-class slice of train is the validation split for model selection, still in the database).
Images come in many sizes: prepare with ``--size`` (e.g. 224). Ids are the paths under ``images/``.
"""

from __future__ import annotations

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import Load
from hashlearn.data.datasets._finegrained import index_tree, maybe_cropped, parse_box, read_pairs
from hashlearn.errors import InputError

CROPS = ("none", "box")


@register_dataset("cub", kind="single-label, fine-grained", default_source=["CUB_200_2011", "CUB_200_2011.tgz"],
                  classes=200, images=11788, protocol="official-split")
def build_cub(load: Load, *, crop: str = "none", mode: str = "RGB") -> ImageDataset:
    """CUB-200-2011 birds (200 species): images.txt, image_class_labels.txt, train_test_split.txt; crop none|box."""
    if crop not in CROPS:
        raise InputError(f"cub: crop must be one of {', '.join(CROPS)}, not {crop!r}")
    source = load.require_source()
    tree, base = index_tree(source, "images.txt")
    images = read_pairs(tree, base + "images.txt", "cub")
    labels = dict(read_pairs(tree, base + "image_class_labels.txt", "cub"))
    split = dict(read_pairs(tree, base + "train_test_split.txt", "cub"))
    classes = read_pairs(tree, base + "classes.txt", "cub", required=False)
    boxes_file = read_pairs(tree, base + "bounding_boxes.txt", "cub", required=crop == "box")
    rels, ys, parts, ids, boxes = [], [], [], [], {}
    box_of = dict(boxes_file or [])
    for image_id, path in images:
        where = f"{tree.where(base + 'images.txt')} image {image_id}"
        if image_id not in labels or image_id not in split:
            raise InputError(f"{where}: no class label or train/test flag for it")
        try:
            y = int(labels[image_id]) - 1
        except ValueError:
            raise InputError(f"{where}: class id {labels[image_id]!r} is not a number") from None
        if y < 0:
            raise InputError(f"{where}: class ids start at 1, got {labels[image_id]!r}")
        if split[image_id] not in ("0", "1"):
            raise InputError(f"{where}: train_test_split flag must be 1 or 0, got {split[image_id]!r}")
        rel = f"{base}images/{path}"
        rels.append(rel)
        ys.append(y)
        parts.append("train" if split[image_id] == "1" else "test")
        ids.append(path)
        if crop == "box":
            if image_id not in box_of:
                raise InputError(f"{where}: no bounding box for it in bounding_boxes.txt")
            boxes[rel] = parse_box(box_of[image_id], f"bounding_boxes.txt image {image_id}", corners=False)
    n_classes = max(ys) + 1 if ys else 0
    if classes:
        names = {int(i) - 1: name for i, name in classes}
    else:  # the species folder of an image of each class
        names = {y: path.split("/", 1)[0] for y, path in zip(ys, ids, strict=True)}
    class_names = [names.get(c, f"class{c + 1}") for c in range(n_classes)]
    return load.from_files(maybe_cropped(tree, boxes), rels, labels=ys, class_names=class_names, ids=ids,
                           official_split=parts, mode=mode, info={"crop": crop})
