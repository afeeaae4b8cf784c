"""Fuzzing the image-decoding entry point every upload goes through: ``load_image`` on arbitrary bytes must
return a BGR uint8 image within the pixel limit or raise ``ImageError``; nothing else, and never hang.
Bounded: a few hundred examples per test with a per-example deadline. Opt in with ``--runslow``."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image

from agegender.images import ImageError, load_image

pytestmark = pytest.mark.slow
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (dev extra) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MAX_PIXELS = 4_000_000
BOUNDED = settings(max_examples=300, deadline=timedelta(seconds=5), database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _seeds() -> list[bytes]:
    """Small valid files in every accepted format and several pixel modes, as starting points to mutate."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        _encode(rgb, "JPEG"), _encode(rgb, "JPEG", progressive=True), _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb, "JPEG", exif=exif), _encode(rgb, "PNG"), _encode(rgb.convert("RGBA"), "PNG"),
        _encode(rgb.convert("P"), "PNG", transparency=0), _encode(rgb.convert("I;16"), "PNG"),
        _encode(rgb.convert("L"), "PNG", bits=4), _encode(rgb, "GIF", save_all=True, append_images=[rgb]),
        _encode(rgb, "BMP"), _encode(rgb.convert("RGBA"), "BMP"), _encode(rgb, "WEBP"),
        _encode(rgb, "WEBP", lossless=True), _encode(rgb, "TIFF"),
        _encode(rgb, "TIFF", compression="tiff_lzw"),
        _encode(rgb.convert("CMYK"), "TIFF"), _encode(rgb, "PPM"), _encode(rgb.convert("L"), "PPM"),
    ]


SEEDS = _seeds()


def check(data: bytes) -> None:
    """The contract: a valid BGR image within the limit, or ``ImageError``."""
    try:
        image = load_image(data, max_pixels=MAX_PIXELS)
    except ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 0 < image.shape[0] * image.shape[1] <= MAX_PIXELS


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with a few random byte flips, cuts, insertions or duplicated runs."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["set", "cut", "truncate", "insert", "repeat"]))
        if operation == "set" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif operation == "cut":
            del data[position:position + draw(st.integers(1, 64))]
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=32))
        elif operation == "repeat":
            data[position:position] = data[position:position + 16] * draw(st.integers(1, 50))
    return bytes(data)


@st.composite
def png_headers(draw: st.DrawFn) -> bytes:
    """PNG files whose header claims any size, bit depth and colour type, with arbitrary compressed data."""
    width, height = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
    header = struct.pack(">IIBBBBB", width, height, draw(st.sampled_from([1, 2, 4, 8, 16, 3])),
                         draw(st.sampled_from([0, 2, 3, 4, 6, 5])), 0, 0, draw(st.integers(0, 1)))
    idat = zlib.compress(draw(st.binary(max_size=256)))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


FOUND_BY_FUZZING = [b"P6", b"P5\n32 " + bytes(range(128, 255))]
"""Inputs on which Pillow's PPM plugin raised a plain ValueError from ``Image.open``."""


@pytest.mark.parametrize("data", FOUND_BY_FUZZING, ids=["ppm-eof-in-header", "ppm-token-too-long"])
def test_inputs_found_by_fuzzing_raise_image_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        load_image(data)


def test_seeds_are_valid_images() -> None:
    for data in SEEDS:
        assert load_image(data).shape[:2] in ((24, 32), (32, 24))


@BOUNDED
@given(mutated())
def test_mutated_images_load_or_raise_image_error(data: bytes) -> None:
    check(data)


@BOUNDED
@given(png_headers())
def test_png_headers_claiming_anything_load_or_raise_image_error(data: bytes) -> None:
    check(data)


@BOUNDED
@given(st.binary(max_size=4096))
def test_random_bytes_load_or_raise_image_error(data: bytes) -> None:
    check(data)
