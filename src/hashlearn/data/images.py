"""Decoding one image file the way every hashlearn loader does.

Conventions (the same for a whole dataset, for ``hashlearn encode --images`` and for a query
image given to ``hashlearn search --image``: they all call :func:`decode_image`):

* Arrays are ``uint8`` with shape ``(H, W, C)``: ``C = 3`` (RGB) for colour sets and for any
  folder of photos, ``C = 1`` for sets that are grey by nature (MNIST, Fashion-MNIST, digits)
  and for a generic folder or CSV source whose images are all single-channel
  (:data:`GREY_MODES`, read from the headers by :func:`is_grey_image`; ``--mode`` overrides).
  A grey file in an RGB set (some brain-MRI scans) is converted to RGB by repeating the channel,
  so every image of a dataset has the same number of channels.
* **Orientation.** The EXIF orientation tag (photos from phones and cameras) is applied
  (``PIL.ImageOps.exif_transpose``), so a photo is decoded the way viewers show it. A damaged
  EXIF block is ignored (the image is kept as stored).
* **16-bit images.** 16-bit grey files (PIL modes ``I;16``, ``I;16B``, ``I;16L``, and ``I`` for
  32-bit integer pixels) are scaled to 8 bits as ``round(v × 255 / 65535)`` (values outside
  0..65535 are clipped first), so a 16-bit value of 40000 becomes 156, not 255. For 16-bit
  colour files Pillow itself keeps the high byte of each channel (``v >> 8``, at most one level
  away from the rounded value): Pillow has no 16-bit colour mode to scale from.
* **Pixel limit** (decompression bombs). The width and height are read from the file's header
  *before* anything is decoded; an image of more than ``max_pixels`` pixels raises
  :class:`InputError` naming the file (so ``--skip-bad`` skips and counts it). The limit is the
  ``max_pixels`` argument, else ``$HASHLEARN_MAX_IMAGE_PIXELS``, else
  :data:`DEFAULT_MAX_PIXELS` (100 megapixels: a 10000 × 10000 image, 300 MB decoded as RGB).
  It replaces Pillow's own check (``PIL.Image.MAX_IMAGE_PIXELS``), which is switched off only
  while a header is read. The same limit bounds ``size``: ``size × size`` must not exceed it.
* ``size=None`` keeps the image as stored. ``size=S`` scales the image so that its *shorter*
  side is ``S`` (bilinear, antialiased when shrinking) and then crops the central ``S × S``
  square. This keeps the aspect ratio (no stretching) and is the usual torchvision
  ``Resize(S) + CenterCrop(S)`` rule; an image that is already ``S × S`` is left untouched.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hashlearn.errors import InputError, NotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MODES = ("RGB", "L")

#: Default pixel limit per image (width × height): 100 megapixels.
DEFAULT_MAX_PIXELS = 100_000_000
#: Environment variable that sets the pixel limit (a positive integer; ``_`` separators allowed).
MAX_PIXELS_ENV = "HASHLEARN_MAX_IMAGE_PIXELS"

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_OPEN_LOCK = threading.Lock()  # guards the moment PIL's global bomb check is switched off


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image file extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else ``$HASHLEARN_MAX_IMAGE_PIXELS``, else 100 M."""
    if max_pixels is not None:
        where, value = "max_pixels", max_pixels
    else:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        where, value = MAX_PIXELS_ENV, text
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a positive number of pixels, not {value!r}") from None
    if limit < 1:
        raise InputError(f"{where} must be a positive number of pixels, not {value!r}")
    return limit


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.1f} megapixels"


def check_size(size: int | None, max_pixels: int | None = None) -> None:
    """Refuse a resize ``size`` that is not positive or whose ``size × size`` exceeds the pixel limit."""
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InputError(f"size (--size) must be a whole number of pixels, not {size!r}")
    if size < 1:
        raise InputError(f"size (--size) must be a positive number of pixels, not {size}")
    limit = max_image_pixels(max_pixels)
    if size * size > limit:
        raise InputError(
            f"size (--size) {size} makes {size}x{size} = {_megapixels(size * size)} per image, more than the "
            f"image pixel limit of {_megapixels(limit)} (${MAX_PIXELS_ENV})"
        )


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


def _open_header(data: bytes | BinaryIO):
    """``Image.open`` (header only) with PIL's own bomb check off: :func:`decode_image` checks."""
    from PIL import Image

    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


#: PIL modes of single-channel (grey) files: 1-bit, 8-bit, grey + alpha, 16/32-bit integer, float.
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_grey_image(data: bytes | BinaryIO) -> bool | None:
    """Whether an image file is single-channel (:data:`GREY_MODES`), read from its header only.

    ``None`` when the header cannot be read (the decoder reports such a file). Palette files
    (``P``) count as colour even when their palette happens to be grey.
    """
    try:
        with _open_header(data) as img:
            return img.mode in GREY_MODES
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to report
        return None


def _apply_orientation(img):
    """Apply the EXIF orientation tag (2..8); a missing or damaged tag leaves the image as stored."""
    from PIL import ImageOps

    if "exif" not in img.info and img.format not in ("TIFF", "MPO"):
        return img  # no EXIF block (TIFF keeps the tag among its own tags): skip parsing
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not lose the image
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        return img


def _to_8bit(img):
    """16-bit (or 32-bit integer) grey → 8-bit ``L`` by ``round(v × 255 / 65535)``; others unchanged."""
    from PIL import Image

    if img.mode not in _SIXTEEN_BIT_MODES:
        return img
    wide = np.clip(np.asarray(img).astype(np.int64, copy=False), 0, 65535).astype(np.uint32)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))


def decode_image(
    data: bytes, *, name: str, size: int | None = None, mode: str = "RGB", max_pixels: int | None = None
) -> np.ndarray:
    """Decode encoded image bytes to a ``uint8 (H, W, C)`` array (see the module docstring).

    ``name`` is only used in error messages, so that a corrupt file in a folder or an archive is
    reported by its path. Raises :class:`InputError` for data that is not a readable image and
    for an image of more than ``max_pixels`` pixels (checked from the header, before decoding).
    """

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    limit = max_image_pixels(max_pixels)
    check_size(size, limit)
    try:
        img = _open_header(data)
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes is a bad file
        raise InputError(f"cannot read image {name}: {_reason(exc)}") from None
    try:
        with img:
            w, h = img.size
            if w * h > limit:
                raise InputError(
                    f"image {name} is {w}x{h} = {_megapixels(w * h)}, more than the limit of "
                    f"{_megapixels(limit)} (set ${MAX_PIXELS_ENV} to allow larger images)"
                )
            if w < 1 or h < 1:
                raise InputError(f"cannot read image {name}: it is {w}x{h} pixels")
            img.load()
            out = _to_8bit(_apply_orientation(img)).convert(mode)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, PIL limits, ...
        raise InputError(f"cannot read image {name}: {_reason(exc)}") from None
    del img
    if size is not None:
        out = resize_and_crop(out, size)
    array = np.asarray(out, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _reason(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its text names a BytesIO object, not the file
        return "not an image file (or in a format Pillow cannot read)"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def read_image(
    path: str | Path, size: int | None = None, mode: str = "RGB", max_pixels: int | None = None
) -> np.ndarray:
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
    return decode_image(data, name=str(path), size=size, mode=mode, max_pixels=max_pixels)
