"""One image loader for the CLI, the Python API and the server.

:func:`load_image` turns a path, encoded bytes, a numpy array or a PIL image into a BGR ``uint8``
``H x W x 3`` array (OpenCV's layout) in the orientation a photo viewer would display it. Anything it
cannot turn into such an array raises :class:`ImageError` with a message meant for the end user.

Decoding is done by Pillow, restricted to common raster formats (no plugins that shell out, such as EPS), except
the pixels of colour and greyscale JPEGs: libjpeg-turbo through ``simplejpeg`` decodes them straight to BGR, at a
reduced DCT scale where asked (the same pixels as Pillow's decode, without its copies on the way to NumPy), with
EXIF orientation applied as Pillow's ``exif_transpose`` does; a JPEG it refuses goes to Pillow, whose message then
says why. Decoded again for the faces that a reduced decode holds too small (:func:`redecode_jpeg` with ``box``),
only the window they are aligned from is decoded where the optional C extension ``agegender._jpeg_region`` is built
(the same pixels there). The pixel count is read from the header and checked against ``max_pixels`` before any
pixel data is decoded, so decompression bombs are rejected cheaply. Truncated files raise instead of being
grey-filled, as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its default ``False`` (this package never
changes it).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeAlias

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

try:
    import agegender._jpeg_region as _jpeg_region
except ImportError:  # an optional extension, built where libjpeg's headers were found: whole images are decoded again
    _jpeg_region = None  # type: ignore[assignment]

__all__ = ["ARRAY_NAME", "BYTES_NAME", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "PIL_NAME", "UNREADABLE_SUFFIXES",
           "VIDEO_SUFFIXES", "ImageError", "ImageSource", "ScaledImage", "unreadable_error", "unreadable_format",
           "finer_decoder", "load_image", "load_scaled", "redecode_jpeg"]

#: What messages and results call an input that is not a file: encoded bytes, a decoded array, a PIL image.
BYTES_NAME, ARRAY_NAME, PIL_NAME = "image data", "array", "PIL image"

DEFAULT_MAX_PIXELS = 50_000_000
"""Default upper bound on width * height (50 megapixels)."""

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
"""Pillow format names :func:`load_image` will decode."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm",
                            ".pgm"})
"""File name endings taken for images when a folder is read."""
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".3gp", ".wmv", ".flv",
                            ".mts", ".m2ts"})
"""File name endings taken for videos (decoded by OpenCV's FFmpeg, not by :func:`load_image`; ``.ts`` is left out:
in a folder it is as likely TypeScript as MPEG-TS, and a transport stream can be named on the command line)."""
UNREADABLE_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl", ".cr2", ".nef", ".arw", ".dng", ".raw", ".psd",
                                 ".svg"})
"""Endings of image formats a user may well have that this package does not decode: named in their error."""
#: ISO base media brands (bytes 8-12 of a file whose bytes 4-8 are ``ftyp``) of still-image formats not decoded here.
_UNREADABLE_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
                      b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}

ImageSource: TypeAlias = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image


class ImageError(ValueError):
    """The input cannot be used as an image; the message says why, ``kind`` names the reason in a few words
    (``empty``, ``cannot read``, ``not an image``, ``unsupported format``, ``too large``, ``corrupt``,
    ``bad array``): bulk runs count errors by it."""

    def __init__(self, message: str, kind: str = "cannot read") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ScaledImage:
    """An image decoded at ``scale`` of its full size (1.0: not reduced): ``pixels`` is BGR ``uint8``
    ``(round(H * scale), round(W * scale), 3)``, ``full_size`` the ``(width, height)`` as displayed. A window of it
    (:func:`redecode_jpeg` with ``box``) holds only part of those pixels, ``origin`` (x, y) being where its top-left
    pixel lies in the whole image at that scale: a full-resolution point ``p`` is at ``p * scale - origin``."""

    pixels: np.ndarray
    scale: float
    full_size: tuple[int, int]
    origin: tuple[int, int] = (0, 0)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load ``source`` as a new BGR ``uint8`` array of shape ``(H, W, 3)``.

    ``source`` may be a file path, encoded file bytes, a PIL image (RGB-like modes), or a numpy array
    in OpenCV layout: ``H x W`` grayscale, ``H x W x 1``, ``H x W x 3`` BGR or ``H x W x 4`` BGRA,
    ``uint8`` or ``uint16``. EXIF orientation is applied to files, bytes and PIL images. Transparent
    pixels are composited onto white; 16-bit samples are scaled to 8 bits; for animated images the
    first frame is used. Raises :class:`ImageError` for empty, unreadable, truncated, zero-sized or
    over-large (more than ``max_pixels`` pixels) input.
    """
    return load_scaled(source, max_pixels=max_pixels).pixels


def load_scaled(source: ImageSource, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                name: str | None = None) -> ScaledImage:
    """:func:`load_image`, with JPEG files and bytes decoded at a reduced scale when ``min_side`` allows.

    libjpeg scales in the DCT domain while it decodes (1/2, 1/4 or 1/8 of each side), far faster than a full
    decode followed by a resize: of those scales, the smallest whose longer side still holds ``min_side`` pixels
    is used (a detector's working size, say). Other formats, arrays and PIL images come at scale 1. The
    ``max_pixels`` check applies to the full size, read from the header before any pixel is decoded. ``name``:
    what messages call encoded bytes (e.g. the file they were read from; default ``image data``).
    """
    if isinstance(source, np.ndarray):
        return _whole(_from_array(source, max_pixels))
    if isinstance(source, Image.Image):
        return _whole(_from_pil(source, max_pixels, name=PIL_NAME))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError(f"empty image file (0 bytes): {name}" if name else "empty image data (0 bytes)",
                             "empty")
        return _open_and_convert(io.BytesIO(data), max_pixels, name=name or BYTES_NAME, min_side=min_side)
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", source) and not os.path.exists(source):
            raise ImageError(f"{source:.200} is a URL: images are read from files, bytes, arrays or PIL images; "
                             "download it first", "cannot read")
        path = Path(source)
        try:
            size = path.stat().st_size
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            raise ImageError(f"cannot read image file {path!s:.200}: {getattr(exc, 'strerror', None) or exc}") \
                from exc
        if not path.is_file():
            raise ImageError(f"not a regular file: {path}", "cannot read")
        if size == 0:
            raise ImageError(f"empty image file (0 bytes): {path}", "empty")
        return _open_and_convert(path, max_pixels, name=str(path), min_side=min_side)
    raise ImageError(
        f"unsupported image source type {type(source).__name__}; "
        "pass a path, bytes, a numpy array or a PIL image"
    )


#: Pillow's names for JPEG files: a multi-picture JPEG (MPO, as some cameras write) decodes as its first picture.
JPEG_FORMATS = ("JPEG", "MPO")
#: The DCT scales a JPEG is decoded at: 1/8, 1/4, 1/2 and 1 (libjpeg's fast ones; 3/8, 5/8 ... are slower).
_JPEG_SCALES = (8, 4, 2, 1)
#: EXIF orientation -> what shows the image upright, as Pillow's ``exif_transpose`` does (1: as stored).
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: partial(cv2.flip, flipCode=1), 3: partial(cv2.rotate, rotateCode=cv2.ROTATE_180),
    4: partial(cv2.flip, flipCode=0), 5: cv2.transpose,
    6: partial(cv2.rotate, rotateCode=cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: partial(cv2.rotate, rotateCode=cv2.ROTATE_90_COUNTERCLOCKWISE)}


def _jpeg_scale(width: int, height: int, min_side: int | None) -> int:
    """The coarsest of :data:`_JPEG_SCALES` whose longer side still holds ``min_side`` pixels (None: 1)."""
    longer = max(width, height)
    return next(k for k in _JPEG_SCALES if k == 1 or (min_side is not None and math.ceil(longer / k) >= min_side))


def _turbo_decode(data: bytes, width: int, height: int, k: int, orientation: int) -> np.ndarray | None:
    """A JPEG's BGR pixels at 1/``k`` of its stored ``width`` x ``height``, turned upright; None where
    libjpeg-turbo refuses it (corrupt, CMYK, ...): Pillow then decodes it, or says why it cannot."""
    try:
        pixels = simplejpeg.decode_jpeg(data, "BGR", min_width=math.ceil(width / k),
                                        min_height=math.ceil(height / k))
    except Exception:  # whatever libjpeg-turbo refuses, Pillow decodes or names the error of
        return None
    turn = _ORIENTATIONS.get(orientation)
    return pixels if turn is None else turn(pixels)


def _orientation(image: Image.Image) -> int:
    """A lazily opened image's EXIF orientation (1 where it has none, or where its EXIF is malformed)."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # malformed EXIF must not make otherwise readable pixels unusable
        return 1


#: EXIF orientation -> where the stored pixel (x, y) of a w x h image is displayed, as :data:`_ORIENTATIONS` turns it.
_TURNED_POINT: dict[int, Callable[[int, int, int, int], tuple[int, int]]] = {
    1: lambda x, y, w, h: (x, y), 2: lambda x, y, w, h: (w - 1 - x, y), 3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),
    4: lambda x, y, w, h: (x, h - 1 - y), 5: lambda x, y, w, h: (y, x), 6: lambda x, y, w, h: (h - 1 - y, x),
    7: lambda x, y, w, h: (h - 1 - y, w - 1 - x), 8: lambda x, y, w, h: (y, w - 1 - x)}
#: Pixels a window is widened by on each side, at its scale: what aligning a face reads around its chip's footprint.
#: Bilinear sampling reads 1 more; the area prefilter (``agegender.inference.align``) of a face shrunk k x onto its
#: chip 3 + k. A face that needs this decode is held by the first one at more than 200 / 224 chip pixels per image
#: pixel (no network reads more than 224 px of the 200 px chip) and DCT scales differ by at most 8x, so here k < 9.
WINDOW_PAD = 16


def redecode_jpeg(source: str | os.PathLike | bytes | bytearray | memoryview, *, full_size: tuple[int, int],
                  min_side: int, box: tuple[float, float, float, float] | None = None) -> ScaledImage:
    """A JPEG that :func:`load_scaled` has already decoded at a reduced scale, decoded again at the smallest DCT
    scale whose longer side holds ``min_side`` pixels (for the faces too small in the first decode), as
    :func:`load_scaled` decodes it. ``full_size``: the first decode's ``full_size`` (as displayed); a file that no
    longer has it raises :class:`ImageError`. ``box`` (x0, y0, x1, y1, full-resolution pixels as displayed): only
    that part is needed, so only it (widened by :data:`WINDOW_PAD`) is decoded where the ``_jpeg_region``
    extension is built and libjpeg-turbo takes the file; its pixels are the whole decode's (``origin`` says where).
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else BYTES_NAME
    if box is not None and _jpeg_region is not None:
        window = _decode_window(source, full_size, min_side, box, name)
        if window is not None:
            return window
    again = load_scaled(source, min_side=min_side, max_pixels=full_size[0] * full_size[1], name=name)
    _check_unchanged(name, full_size, again.full_size)
    return again


def _check_unchanged(name: str, first: tuple[int, int], now: tuple[int, int]) -> None:
    """Raise :class:`ImageError` where a file's displayed size ``now`` is not its first decode's ``first``."""
    if now != first:
        raise ImageError(f"{name}: the JPEG changed between its two decodes ({first[0]}x{first[1]}, now "
                         f"{now[0]}x{now[1]})", "corrupt")


def _decode_window(source: str | os.PathLike | bytes | bytearray | memoryview, full_size: tuple[int, int],
                   min_side: int, box: tuple[float, float, float, float], name: str) -> ScaledImage | None:
    """:func:`redecode_jpeg`'s window, or None where it must decode the whole image (not a colour or greyscale
    JPEG, or one libjpeg-turbo refuses: the whole decode then says why)."""
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else bytes(source)
        with Image.open(io.BytesIO(data), formats=JPEG_FORMATS) as image:
            (width, height), mode, orientation = image.size, image.mode, _orientation(image)
    except (OSError, ValueError):
        return None
    if mode not in ("RGB", "L"):
        return None
    turned = orientation in (5, 6, 7, 8)
    _check_unchanged(name, full_size, (height, width) if turned else (width, height))
    k = _jpeg_scale(width, height, min_side)
    w, h = math.ceil(width / k), math.ceil(height / k)  # libjpeg's size at 1/k, as stored
    shown = (h, w) if turned else (w, h)
    scale = shown[0] / full_size[0]
    x0, y0 = (max(0, math.floor(v * scale) - WINDOW_PAD) for v in box[:2])
    x1 = min(shown[0], math.ceil(box[2] * scale) + WINDOW_PAD)
    y1 = min(shown[1], math.ceil(box[3] * scale) + WINDOW_PAD)
    if x1 <= x0 or y1 <= y0:
        return None
    # the stored window: the orientations are their own inverses but for 6 and 8, which are each other's (a value
    # outside 1-8 is not turned, as by _ORIENTATIONS)
    inverse = _TURNED_POINT.get({6: 8, 8: 6}.get(orientation, orientation), _TURNED_POINT[1])
    corners = [inverse(x, y, *shown) for x, y in ((x0, y0), (x1 - 1, y1 - 1))]
    sx0, sx1 = min(c[0] for c in corners), max(c[0] for c in corners) + 1
    sy0, sy1 = min(c[1] for c in corners), max(c[1] for c in corners) + 1
    try:
        buffer, out_w, out_h = _jpeg_region.decode(data, k, sx0, sy0, sx1, sy1)
    except ValueError:
        return None
    if (out_w, out_h) != (w, h):  # a libjpeg that scales otherwise: the whole decode is the reference
        return None
    pixels = np.frombuffer(buffer, np.uint8).reshape(sy1 - sy0, sx1 - sx0, 3)
    turn = _ORIENTATIONS.get(orientation)
    return ScaledImage(pixels if turn is None else turn(pixels), scale, full_size, (x0, y0))


def finer_decoder(source: ImageSource, scaled: ScaledImage) -> Callable[..., ScaledImage] | None:
    """What decodes ``source`` again at a finer scale (``min_side=``), given its first decode ``scaled`` by
    :func:`load_scaled`: :func:`redecode_jpeg` for a reduced JPEG, None when ``scaled`` is at full scale."""
    if scaled.scale >= 1.0 or not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        return None
    return partial(redecode_jpeg, source, full_size=scaled.full_size)


def _whole(pixels: np.ndarray) -> ScaledImage:
    return ScaledImage(pixels, 1.0, (pixels.shape[1], pixels.shape[0]))


def unreadable_format(name: str, header: bytes = b"") -> str | None:
    """The name of an image format a user may well have that this package does not decode (HEIC, AVIF, JPEG XL...),
    told by the file's first bytes or, failing them, its ending; None for any other file.

    >>> unreadable_format("IMG_0001", bytes(4) + b"ftypheic"), unreadable_format("a.CR2"), unreadable_format("a.jpg")
    ('HEIC', 'CR2', None)
    """
    if header[4:8] == b"ftyp" and header[8:12] in _UNREADABLE_BRANDS:
        return _UNREADABLE_BRANDS[header[8:12]]
    if header.startswith(b"\xff\x0a") or header[4:12] == b"JXL \r\n\x87\n":
        return "JPEG XL"
    suffix = os.path.splitext(name)[1].lower()
    return suffix[1:].upper() if suffix in UNREADABLE_SUFFIXES else None


def unreadable_error(name: str, header: bytes = b"") -> ImageError | None:
    """The error for a file of a format :func:`unreadable_format` names (kind ``unsupported format``), else None."""
    found = unreadable_format(name, header)
    return None if found is None else ImageError(
        f"{name}: {found} images cannot be decoded here (convert them to JPEG or PNG)", "unsupported format")


def _header(fp: Path | io.BytesIO) -> bytes:
    """The first bytes of a file or of encoded bytes (empty if they cannot be read)."""
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()[:16]
    try:
        with open(fp, "rb") as handle:
            return handle.read(16)
    except OSError:
        return b""


def _open_and_convert(fp: Path | io.BytesIO, max_pixels: int, *, name: str,
                      min_side: int | None = None) -> ScaledImage:
    """Open lazily (header only); a JPEG goes to libjpeg-turbo, at a reduced scale when ``min_side`` allows
    (Pillow's draft of the same scale where libjpeg-turbo refuses it); anything else is converted by Pillow."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        # Pillow's own bomb guard (a warning past it, an error past twice it) would refuse what the caller allows;
        # ``max_pixels`` is checked from the header below instead. Raised for the process, never lowered.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        known = unreadable_error(name, _header(fp))
        if known is not None:
            raise known from exc
        raise ImageError(
            f"{name}: not a recognised image, or its header is invalid "
            f"(accepted formats: {', '.join(ACCEPTED_FORMATS)})", "not an image"
        ) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own limit (twice its MAX_IMAGE_PIXELS), past ours
        raise ImageError(f"{name}: image too large ({exc}); the limit here is {max_pixels:,} pixels", "too large"
                         ) from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: cannot read image ({exc})") from exc
    with image:
        width, height = image.size
        jpeg = image.format in JPEG_FORMATS
        k = _jpeg_scale(width, height, min_side) if jpeg else 1
        pixels = None
        if jpeg and image.mode in ("RGB", "L"):
            _check_size(width, height, max_pixels, name)
            data = fp.getvalue() if isinstance(fp, io.BytesIO) else fp.read_bytes()
            pixels = _turbo_decode(data, width, height, k, _orientation(image))
        if pixels is None:
            if k > 1:
                _check_size(width, height, max_pixels, name)
                image.draft("RGB", (math.ceil(width / k), math.ceil(height / k)))
            pixels = _from_pil(image, max_pixels, name=name, owned=True)
        drafted = (math.ceil(width / k), math.ceil(height / k))
    if drafted == (width, height):
        return _whole(pixels)
    turned = pixels.shape[1] != drafted[0]  # EXIF orientation swapped the axes
    full = (height, width) if turned else (width, height)
    return ScaledImage(pixels, pixels.shape[1] / full[0], full)


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has zero size ({width}x{height})", "corrupt")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image too large ({width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,}). Downscale it first or raise the limit (--max-pixels, max_pixels=).",
            "too large"
        )


def _from_pil(image: Image.Image, max_pixels: int, *, name: str, owned: bool = False) -> np.ndarray:
    """Size check (header only), decode, EXIF-transpose and convert a PIL image to BGR uint8. ``owned``: the
    image was opened here, so it is transposed in place instead of copied (a 12 MP copy costs tens of ms)."""
    _check_size(image.width, image.height, max_pixels, name)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; truncated images "
            "would be silently grey-filled, so loading is refused. Set it back to False."
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: image data is truncated or corrupt ({exc})", "corrupt") from exc
    try:
        if owned:
            ImageOps.exif_transpose(image, in_place=True)
        else:
            image = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not make otherwise readable pixels unusable
        pass
    try:
        return _pil_pixels_to_bgr(image)
    except ValueError as exc:  # a mode Pillow cannot convert to RGB (e.g. "La")
        raise ImageError(f"{name}: cannot convert {image.mode} pixels to colour ({exc})", "cannot read") from exc


def _pil_pixels_to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):  # 16-bit grayscale; PIL's own convert("L") would clip instead of scaling
        return _array_to_bgr(_to_uint8(np.asarray(image).astype(np.uint16)))
    if mode == "I":  # 32-bit integers: 8-bit values (an "L" image converted), 16-bit ones, or wider
        values = np.asarray(image).astype(np.int64).clip(0, None)
        top = int(values.max(initial=0))
        if top <= 255:
            return _array_to_bgr(values.astype(np.uint8))
        if top > 65535:
            values = values * 65535 // top
        return _array_to_bgr(_to_uint8(values.astype(np.uint16)))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        return _composite_on_white(rgba[..., 2::-1], rgba[..., 3])
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _composite_on_white(bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = bgr.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.ascontiguousarray(np.rint(out).astype(np.uint8))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ImageError(f"array dtype {array.dtype} is not supported; use uint8 (or uint16)", "bad array")


def _array_to_bgr(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA) uint8 -> new contiguous BGR uint8 array."""
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if channels == 4:
        return _composite_on_white(array[..., :3], array[..., 3])
    return np.array(array, order="C", copy=True)


def _from_array(array: np.ndarray, max_pixels: int) -> np.ndarray:
    """Validate an OpenCV-layout array and convert it to a new BGR uint8 array."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(
            f"array of shape {array.shape} is not an image; expected HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA)"
        )
    _check_size(array.shape[1], array.shape[0], max_pixels, ARRAY_NAME)
    return _array_to_bgr(_to_uint8(array))
