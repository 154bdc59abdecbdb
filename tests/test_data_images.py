"""The one image decoder (``hashlearn.data.images``): pixel limit, 16-bit scaling, EXIF orientation,
and the size / memory / disk checks that come before any large allocation."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashlearn.data import load_dataset, prepare, read_image
from hashlearn.data import sources as sources_module
from hashlearn.data import store as store_module
from hashlearn.data.images import decode_image, max_image_pixels
from hashlearn.errors import InputError


def png_bytes(array: np.ndarray, *, claim: tuple[int, int] | None = None) -> bytes:
    """A PNG of a uint8 or uint16 (H, W) grey or (H, W, 3) colour array, written by hand (Pillow
    cannot write 16-bit colour). ``claim=(w, h)`` writes that size in the header instead: a
    decompression bomb needs nothing more, since the decoder must refuse it from the header."""
    big = array.dtype == np.uint16
    arr = array.astype(">u2" if big else np.uint8)
    h, w = arr.shape[:2]
    rows = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    w, h = claim or (w, h)
    ihdr = struct.pack(">IIBBBBB", w, h, 16 if big else 8, 0 if arr.ndim == 2 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def bomb(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), claim=(30000, 30000)))
    return path


def solid(path: Path, color=(200, 0, 0), size=(4, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# -- pixel limit (decompression bombs) -----------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file(tmp_path: Path):
    path = bomb(tmp_path / "bomb.png")
    with pytest.raises(InputError, match=r"bomb\.png is 30000x30000 = 900\.0 megapixels, more than the limit"):
        read_image(path)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own setting is left as it was


def test_pixel_limit_comes_from_the_argument_then_the_environment(tmp_path: Path, monkeypatch):
    data = png_bytes(np.zeros((10, 10), np.uint8))
    assert max_image_pixels() == 100_000_000
    assert decode_image(data, name="x.png", max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(InputError, match="x.png is 10x10"):
        decode_image(data, name="x.png", max_pixels=99)
    monkeypatch.setenv("HASHLEARN_MAX_IMAGE_PIXELS", "99")
    with pytest.raises(InputError, match="HASHLEARN_MAX_IMAGE_PIXELS"):
        decode_image(data, name="x.png")
    assert decode_image(data, name="x.png", max_pixels=100).shape == (10, 10, 3)  # the argument wins
    monkeypatch.setenv("HASHLEARN_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="HASHLEARN_MAX_IMAGE_PIXELS must be a positive number"):
        decode_image(data, name="x.png")


def test_skip_bad_skips_and_counts_a_bomb(tmp_path: Path):
    solid(tmp_path / "set/cat/1.png")
    bomb(tmp_path / "set/cat/2.png")
    solid(tmp_path / "set/dog/1.png")
    with pytest.raises(InputError, match="2.png is 30000x30000"):
        load_dataset("folder", tmp_path / "set")
    ds = load_dataset("folder", tmp_path / "set", skip_bad=True)
    assert len(ds) == 2 and ds.info["skipped"] == [str(tmp_path / "set/cat/2.png")]


# -- 16-bit images and EXIF orientation ----------------------------------------------------------


def test_16_bit_grey_is_scaled_to_8_bits_with_rounding():
    values = np.array([[0, 40000, 65535, 32767, 383]], dtype=np.uint16)
    expected = [0, 156, 255, 127, 1]  # round(v * 255 / 65535)
    data = png_bytes(values)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert decode_image(data, name="g16.png", mode="L")[0, :, 0].tolist() == expected
    assert decode_image(data, name="g16.png", mode="RGB")[0].tolist() == [[v] * 3 for v in expected]
    big_endian = io.BytesIO()  # the same pixels as a big-endian 16-bit TIFF, and as 32-bit integers
    Image.frombytes("I;16B", (5, 1), values.astype(">u2").tobytes()).save(big_endian, format="TIFF")
    assert decode_image(big_endian.getvalue(), name="g16.tif", mode="L")[0, :, 0].tolist() == expected
    wide = io.BytesIO()
    Image.fromarray(np.array([[40000, -5, 70000]], dtype=np.int32)).save(wide, format="TIFF")
    assert decode_image(wide.getvalue(), name="i32.tif", mode="L")[0, :, 0].tolist() == [156, 0, 255]


def test_16_bit_colour_keeps_pillows_high_byte():
    values = np.stack([np.array([[0, 40000, 65535]], dtype=np.uint16)] * 3, axis=-1)
    assert decode_image(png_bytes(values), name="c16.png")[0, :, 0].tolist() == [0, 156, 255]


def test_exif_orientation_is_applied():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # red top-left of a 3-wide, 2-high image
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    out = decode_image(buf.getvalue(), name="phone.png")
    assert out.shape == (3, 2, 3)
    assert out[:, :, 0].tolist() == [[0, 255], [0, 0], [0, 0]]  # red is now top-right


# -- sizes, memory and disk checked before anything large is allocated ------------------------------


def test_an_absurd_size_is_refused_before_decoding(tmp_path: Path):
    solid(tmp_path / "set/cat/1.png")
    with pytest.raises(InputError, match=r"--size\) 100000 makes 100000x100000"):
        load_dataset("folder", tmp_path / "set", size=100000)
    with pytest.raises(InputError, match=r"--size\) 100000"):
        prepare("folder", tmp_path / "set", cache_dir=tmp_path / "cache", size=100000)
    assert not (tmp_path / "cache").exists()  # nothing was created


def test_images_that_do_not_fit_in_memory_are_refused(tmp_path: Path, monkeypatch):
    solid(tmp_path / "set/cat/1.png")
    solid(tmp_path / "set/dog/1.png")
    monkeypatch.setattr(sources_module, "available_memory", lambda: 40)
    with pytest.raises(InputError, match=r"\(2 images of 8x8x3 bytes\) need 384 bytes but only 40 bytes of memory"):
        load_dataset("folder", tmp_path / "set", size=8)


def test_a_cache_that_does_not_fit_on_disk_is_refused(tmp_path: Path, monkeypatch):
    solid(tmp_path / "set/cat/1.png")
    solid(tmp_path / "set/dog/1.png")

    class Usage:
        free = 100

    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(InputError, match=r"cache folder .*cache: .*2 images of 8x8x3 bytes.* only 100 bytes is free"):
        prepare("folder", tmp_path / "set", cache_dir=tmp_path / "cache", size=8)
    assert not (tmp_path / "cache").exists()  # no temporary folder, and the cache folder it made is gone
