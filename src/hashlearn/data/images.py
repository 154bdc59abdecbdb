"""Decoding one image file the way every hashlearn loader does.

Conventions (the same for a whole dataset and for a query image given on the command line):

* Arrays are ``uint8`` with shape ``(H, W, C)``: ``C = 3`` (RGB) for colour sets and for any
  folder of photos, ``C = 1`` for sets that are grey by nature (MNIST, Fashion-MNIST, digits).
  A grey file in an RGB set (some brain-MRI scans) is converted to RGB by repeating the channel,
  so every image of a dataset has the same number of channels.
* ``size=None`` keeps the image as stored. ``size=S`` scales the image so that its *shorter*
  side is ``S`` (bilinear, antialiased when shrinking) and then crops the central ``S × S``
  square. This keeps the aspect ratio (no stretching) and is the usual torchvision
  ``Resize(S) + CenterCrop(S)`` rule; an image that is already ``S × S`` is left untouched.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from hashlearn.errors import InputError, NotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MODES = ("RGB", "L")


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image file extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def resize_and_crop(img, size: int):
    """Shorter side → ``size``, then the central ``size × size`` crop (a PIL image in and out)."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(data: bytes, *, name: str, size: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Decode encoded image bytes to a ``uint8 (H, W, C)`` array.

    ``name`` is only used in the error message, so that a corrupt file in a folder or an archive is
    reported by its path. Raises :class:`InputError` for data that is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {name}: {exc}") from None
    if size is not None:
        img = resize_and_crop(img, size)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def read_image(path: str | Path, size: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Read one image file exactly as the dataset loaders do (see the module docstring).

    >>> read_image("query.jpg", size=32).shape   # doctest: +SKIP
    (32, 32, 3)
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"image file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_image(data, name=str(path), size=size, mode=mode)
