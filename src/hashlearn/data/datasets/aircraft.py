"""FGVC-Aircraft (Maji et al., 2013): 10,000 images of aircraft, 100 variants (70 families, 30
manufacturers), from the archive's ``data/`` folder (or the ``fgvc-aircraft-2013b.tar.gz``)::

    images/<id>.jpg
    images_variant_{train,val,test}.txt   <id> <variant name, may contain spaces>
    images_family_*.txt, images_manufacturer_*.txt   (the other label levels)
    variants.txt / families.txt / manufacturers.txt  (optional: class names in their order)
    images_box.txt                        <id> <x1> <y1> <x2> <y2>  (used with ``crop: box``)

``level`` picks the labels (``variant``, 100 classes, the fine-grained hashing standard). The
standard fine-grained hashing protocol (spec §6) uses train+val (6,667) as training set = database
and test (3,333) as queries: ``trainval: true`` (default) marks the val images as official
``train``, so ``official-split`` (the dataset's default) gives exactly that; ``trainval: false``
keeps the official val split (then model selection uses it). Images come in many sizes: prepare
with ``--size``. Ids are the image ids (file stems).
"""

from __future__ import annotations

from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import register_dataset
from hashlearn.data.datasets._base import Load
from hashlearn.data.datasets._finegrained import index_tree, maybe_cropped, parse_box, read_pairs
from hashlearn.errors import InputError

LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
CROPS = ("none", "box")


@register_dataset("aircraft", kind="single-label, fine-grained",
                  default_source=["fgvc-aircraft-2013b/data", "fgvc-aircraft-2013b", "fgvc-aircraft-2013b.tar.gz"],
                  classes=100, images=10000, protocol="official-split")
def build_aircraft(load: Load, *, level: str = "variant", trainval: bool = True, crop: str = "none",
                   mode: str = "RGB") -> ImageDataset:
    """FGVC-Aircraft (100 variants) from images_variant_{train,val,test}.txt; level: variant|family|manufacturer."""
    if level not in LEVELS:
        raise InputError(f"aircraft: level must be one of {', '.join(LEVELS)}, not {level!r}")
    if not isinstance(trainval, bool):
        raise InputError(f"aircraft: trainval must be true or false, not {trainval!r}")
    if crop not in CROPS:
        raise InputError(f"aircraft: crop must be one of {', '.join(CROPS)}, not {crop!r}")
    source = load.require_source()
    tree, base = index_tree(source, f"images_{level}_test.txt")
    entries: list[tuple[str, str, str]] = []  # (id, class name, split)
    for part in ("train", "val", "test"):
        for image_id, name in read_pairs(tree, f"{base}images_{level}_{part}.txt", "aircraft"):
            entries.append((image_id, name, "train" if part == "val" and trainval else part))
    seen: set[str] = set()
    for image_id, _, _ in entries:
        if image_id in seen:
            raise InputError(f"aircraft: image {image_id} is listed twice in the images_{level}_*.txt files")
        seen.add(image_id)
    listed = read_pairs(tree, base + LEVELS[level], "aircraft", required=False)
    used = sorted({name for _, name, _ in entries})
    if listed:  # one name per line: the names file lines are whole names (they may contain spaces)
        text = tree.read(base + LEVELS[level]).decode("utf-8-sig")
        class_names = [line.strip() for line in text.splitlines() if line.strip()]
        missing = [n for n in used if n not in class_names]
        if missing:
            raise InputError(f"aircraft: {missing[0]!r} is not in {tree.where(base + LEVELS[level])}")
    else:
        class_names = used
    index = {name: i for i, name in enumerate(class_names)}
    boxes = {}
    if crop == "box":
        box_of = dict(read_pairs(tree, base + "images_box.txt", "aircraft"))
        for image_id, _, _ in entries:
            if image_id not in box_of:
                raise InputError(f"aircraft: no box for image {image_id} in images_box.txt")
            boxes[f"{base}images/{image_id}.jpg"] = parse_box(box_of[image_id], f"images_box.txt image {image_id}",
                                                              corners=True)
    return load.from_files(maybe_cropped(tree, boxes), [f"{base}images/{i}.jpg" for i, _, _ in entries],
                           labels=[index[n] for _, n, _ in entries], class_names=class_names,
                           ids=[i for i, _, _ in entries], official_split=[s for _, _, s in entries], mode=mode,
                           info={"level": level, "trainval": trainval, "crop": crop})
