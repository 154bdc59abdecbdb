"""What the fine-grained dataset builders (CUB-200-2011, FGVC-Aircraft) share: finding the folder
that holds a set's index files inside a source (the folder itself, a parent, or a ``.tar.gz``),
reading ``<id> <value>`` index files, and cropping images to boxes before decoding."""

from __future__ import annotations

import io

from hashlearn.data.images import IMAGE_EXTENSIONS
from hashlearn.data.sources import FileTree
from hashlearn.errors import InputError, NotFoundError


def index_tree(source, marker: str) -> tuple[FileTree, str]:
    """``(tree, base)``: the images and ``.txt`` files of ``source`` and the folder prefix (``""`` or
    ``"a/b/"``) of the shallowest ``marker`` file (e.g. ``images.txt``); one line when there is none."""
    tree = FileTree(source, keep=lambda rel: rel.lower().endswith((".txt", *IMAGE_EXTENSIONS)))
    found = sorted((p for p in tree.paths if p.rsplit("/", 1)[-1] == marker), key=lambda p: (p.count("/"), p))
    if not found:
        raise NotFoundError(f"{source}: no {marker} found (is this the right source?)")
    base = found[0][: -len(marker)]
    return tree, base


def read_pairs(tree: FileTree, rel: str, what: str, required: bool = True) -> list[tuple[str, str]] | None:
    """The ``(first field, rest of line)`` pairs of an index file, or None when it is absent and not required."""
    if rel not in tree.paths:
        if required:
            raise NotFoundError(f"{what}: {tree.where(rel)} is missing")
        return None
    try:
        text = tree.read(rel).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what}: {tree.where(rel)} is not UTF-8 text") from None
    pairs = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if not rest.strip():
            raise InputError(f"{tree.where(rel)} line {line_no}: expected '<id> <value>', got {line!r}")
        pairs.append((head, rest.strip()))
    return pairs


def parse_box(value: str, where: str, corners: bool) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` from ``x y w h`` (CUB) or ``x1 y1 x2 y2`` (``corners``, Aircraft)."""
    try:
        a, b, c, d = (float(v) for v in value.split())
    except ValueError:
        raise InputError(f"{where}: a box needs 4 numbers, got {value!r}") from None
    box = (a, b, c, d) if corners else (a, b, a + c, b + d)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"{where}: empty box {value!r}")
    return box


class CroppedTree:
    """A :class:`FileTree` whose images are cropped to ``boxes[rel]`` (pixels, PIL's
    ``(left, top, right, bottom)``, clipped to the image) when read; others pass unchanged.
    A crop is re-encoded losslessly (PNG), so the one decoder then resizes it as usual."""

    def __init__(self, tree: FileTree, boxes: dict[str, tuple[float, float, float, float]]):
        self.tree, self.boxes = tree, boxes
        self.source, self.paths = tree.source, tree.paths

    def where(self, rel: str) -> str:
        return self.tree.where(rel)

    def read(self, rel: str) -> bytes:
        data = self.tree.read(rel)
        box = self.boxes.get(rel)
        if box is None:
            return data
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                left, top = max(0, int(round(box[0]))), max(0, int(round(box[1])))
                right, bottom = min(w, int(round(box[2]))), min(h, int(round(box[3])))
                if right <= left or bottom <= top:
                    raise InputError(f"{self.where(rel)}: its box {box} lies outside the {w}x{h} image")
                out = io.BytesIO()
                im.crop((left, top, right, bottom)).save(out, format="PNG")
        except (UnidentifiedImageError, OSError):
            return data  # not an image: the decoder reports (or skips) the file by name
        return out.getvalue()

    def open(self, rel: str):
        return io.BytesIO(self.read(rel))

    def __len__(self) -> int:
        return len(self.paths)


def maybe_cropped(tree: FileTree, boxes: dict | None) -> FileTree | CroppedTree:
    return CroppedTree(tree, boxes) if boxes else tree


