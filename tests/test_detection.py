"""Image loading, YuNet face detection and 5-point chip alignment."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from agegender import paths
from agegender.images import ImageError, load_image
from agegender.inference import detector as detector_module
from agegender.inference.align import align_face, load_template, similarity_matrix
from agegender.inference.detector import (
    YUNET_SHA256,
    Detection,
    FaceDetector,
    WeightsError,
    locate_weights,
)
from agegender.preprocess import CHIP_SIZE

SHARED = paths.shared_dir().resolve()
PHOTOS = SHARED / "photos"
UTKFACE = SHARED / "data" / "UTKFace"
YUNET = SHARED / "models" / "yunet" / "yunet_s_640_640.onnx"
YUNET_N = SHARED / "models" / "yunet" / "yunet_n_640_640.onnx"

needs_yunet = pytest.mark.skipif(not YUNET.is_file(), reason=f"YuNet weights not found at {YUNET}")
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"sample photos not found at {PHOTOS}")
needs_utkface = pytest.mark.skipif(not UTKFACE.is_dir(), reason=f"UTKFace chips not found at {UTKFACE}")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    if not YUNET.is_file():
        pytest.skip(f"YuNet weights not found at {YUNET}")
    return FaceDetector(YUNET)


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _gradient_rgb(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.dstack([x, y, 255 - x]), "RGB")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but that holds no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------- images


def test_truncated_loading_flag_is_off() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_when_truncated_loading_was_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(_encode(_gradient_rgb(), "PNG"))


@pytest.mark.parametrize("data", [b"", bytearray()], ids=["bytes", "bytearray"])
def test_empty_bytes(data: bytes) -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(data)


def test_empty_file_missing_file_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)
    # a URL was read as a path and named with one slash lost ("https:/example.com/a.jpg")
    with pytest.raises(ImageError, match=r"^https://example\.com/a\.jpg is a URL: .* download it first"):
        load_image("https://example.com/a.jpg")


@pytest.mark.parametrize(
    "data", [b"hello, this is not an image\n" * 10, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"]
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(data)


@pytest.mark.parametrize(("header", "name"), [
    (bytes.fromhex("00000018") + b"ftypheic" + bytes(4) + b"mif1heic", "HEIC"),  # an iPhone photo's first bytes
    (bytes.fromhex("0000001c") + b"ftypavif" + bytes(4) + b"avifmif1", "AVIF"),
    (bytes.fromhex("ff0a") + bytes(30), "JPEG XL"),
])
def test_formats_a_user_may_have_are_named_not_called_unrecognised(header: bytes, name: str, tmp_path: Path) -> None:
    """Bytes (the web page's upload), a file without an ending, and a file with the format's ending."""
    data = header + bytes(200)
    plain = tmp_path / "IMG_0001"
    plain.write_bytes(data)
    junk = tmp_path / "IMG_0002.heic"
    junk.write_bytes(b"not really a heic file" * 5)
    for source, label in ((data, name), (plain, name), (junk, "HEIC")):
        with pytest.raises(ImageError, match=f"{label} images cannot be decoded here") as caught:
            load_image(source)
        assert caught.value.kind == "unsupported format"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_are_rejected(fmt: str, keep: float) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    assert load_image(data).shape == (96, 128, 3)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: int(len(data) * keep)])


def test_one_pixel_image() -> None:
    out = load_image(_encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert out.shape == (1, 1, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [30, 20, 10]


def test_rgb_becomes_bgr_for_every_source_kind(tmp_path: Path) -> None:
    image = _gradient_rgb()
    expected = np.asarray(image)[..., ::-1]
    path = tmp_path / "g.png"
    image.save(path)
    data = path.read_bytes()
    for source in (path, str(path), data, bytearray(data), memoryview(data), image):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected)


def test_16bit_grayscale_png_is_scaled_not_clipped() -> None:
    gray16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, 0)
    ok, png = cv2.imencode(".png", gray16)
    assert ok
    out = load_image(png.tobytes())
    assert out.shape == (4, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_32bit_integer_pixels_keep_their_brightness() -> None:
    """Mode "I" holds 8-bit values (an "L" image converted), 16-bit ones or wider: once all divided by 257, so an
    8-bit photo in mode "I" came out black and its faces were lost."""
    eight = Image.fromarray(np.array([[0, 1, 128, 255]], np.uint8).repeat(4, 0)).convert("I")
    sixteen = Image.fromarray(np.array([[0, 257, 32896, 65535]], np.int32).repeat(4, 0))
    wide = Image.fromarray(np.array([[-5, 2**16, 2**23, 2**24]], np.int32).repeat(4, 0))
    assert eight.mode == sixteen.mode == wide.mode == "I"
    for image in (eight, sixteen):
        assert load_image(image)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert load_image(wide)[0, :, 0].tolist() == [0, 1, 127, 255]  # scaled by the largest (2**23 is half of 2**24)


def test_16bit_color_png() -> None:
    bgr16 = np.zeros((8, 8, 3), dtype=np.uint16)
    bgr16[..., 0] = 65535  # blue
    bgr16[..., 1] = 32896
    ok, png = cv2.imencode(".png", bgr16)
    assert ok
    out = load_image(png.tobytes())
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out[0, 0], [255, 128, 0], atol=1)


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[1, :] = (0, 0, 0, 128)  # half-transparent black
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[0, 1].tolist() == [255, 255, 255]
    np.testing.assert_allclose(out[1, 0], [127, 127, 127], atol=1)


def test_grayscale_and_palette_png() -> None:
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    out = load_image(_encode(gray, "PNG"))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    palette = _gradient_rgb().quantize(16)
    assert palette.mode == "P"
    assert load_image(_encode(palette, "PNG")).shape == (48, 64, 3)


def test_cmyk_jpeg() -> None:
    data = _encode(Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[8, 8], [0, 0, 255], atol=12)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = load_image(data)
    assert out.shape == (10, 10, 3)
    np.testing.assert_allclose(out[5, 5], [0, 0, 255], atol=2)


def test_decompression_bombs_are_rejected_from_the_header() -> None:
    # 400 Mpx: above Pillow's own bomb limit too; either way it must be an ImageError.
    with pytest.raises(ImageError, match="too large"):
        load_image(_png_header_only(20000, 20000))
    with pytest.raises(ImageError, match="not a recognised image"):  # Pillow refuses a 0-pixel header
        load_image(_png_header_only(0, 10))
    # 64 Mpx: only our limit catches it. The file has no pixel data, so a decode attempt would have
    # raised "truncated" instead: the size was checked first.
    with pytest.raises(ImageError, match=r"8000x8000 .* the limit is 50,000,000"):
        load_image(_png_header_only(8000, 8000))
    with pytest.raises(ImageError, match="too large"):
        load_image(_encode(_gradient_rgb(), "PNG"), max_pixels=1000)
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=1000)


def test_a_limit_raised_past_pillows_own_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-pixels above Pillow's bomb guard (179 MP by default) was refused by Pillow, with a warning past half
    of it: here the guard is lowered to 1,000 pixels to show it on a small image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    png = _encode(_gradient_rgb(), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert load_image(png, max_pixels=10**6).shape[:2] == (48, 64)


def test_numpy_inputs() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = load_image(gray)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[..., 1], gray)
    assert load_image(gray[..., None]).shape == (3, 4, 3)

    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0] = 200
    bgra[..., 3] = 255
    bgra[1, 1, 3] = 0
    out = load_image(bgra)
    assert out[0, 0].tolist() == [200, 0, 0] and out[1, 1].tolist() == [255, 255, 255]

    np.testing.assert_array_equal(load_image(np.full((2, 2, 3), 65535, np.uint16)), 255)

    bgr = np.zeros((5, 6, 3), np.uint8)
    out = load_image(bgr[:, ::2])  # non-contiguous view
    assert out.flags.c_contiguous and out.shape == (5, 3, 3)
    out = load_image(bgr)
    out[:] = 1
    assert bgr.max() == 0, "load_image must return a copy"


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "zero size"),
        (np.zeros((4, 4, 2), np.uint8), "not an image"),
        (np.zeros((2, 2, 2, 3), np.uint8), "not an image"),
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
    ],
)
def test_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(array)


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageError, match="unsupported image source type int"):
        load_image(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- detector


@needs_yunet
def test_shared_yunet_is_the_2023mar_release() -> None:
    assert hashlib.sha256(YUNET.read_bytes()).hexdigest() == YUNET_SHA256


@needs_photos
@pytest.mark.parametrize(
    ("name", "at_least", "at_most"),
    [
        ("dlib_2007_007763.jpg", 6, 9),  # about 8 elderly faces
        ("mowshon_test-image.jpg", 4, 5),  # family of 5
        ("mowshon_test-image-2.jpg", 5, 6),
        ("smahesh29_kid1.jpg", 1, 1),
        ("smahesh29_man1.jpg", 1, 1),
    ],
)
def test_faces_in_sample_photos(detector: FaceDetector, name: str, at_least: int, at_most: int) -> None:
    image = load_image(PHOTOS / name)
    faces = detector.detect(image)
    assert at_least <= len(faces) <= at_most
    height, width = image.shape[:2]
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    for face in faces:
        x, y, w, h = face.box
        assert 0.6 <= face.score <= 1.0
        assert w >= detector.min_face and h >= detector.min_face
        assert -0.2 * w < x and x + w < width + 0.2 * w and -0.2 * h < y and y + h < height + 0.2 * h
        right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
        assert right_eye[0] < left_eye[0] and right_mouth[0] < left_mouth[0]  # upright faces in these photos
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
        assert not face.landmarks.flags.writeable


@needs_photos
def test_large_photo_is_downscaled_and_mapped_back(detector: FaceDetector) -> None:
    image = load_image(PHOTOS / "smahesh29_man1.jpg")
    (face,) = detector.detect(image)
    # A 2x nearest-neighbour enlargement, area-downscaled back to the original size, is the original.
    big = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    (big_face,) = FaceDetector(YUNET, max_side=max(image.shape)).detect(big)
    np.testing.assert_allclose(big_face.box, 2 * np.array(face.box), rtol=1e-4)
    np.testing.assert_allclose(big_face.landmarks, 2 * face.landmarks, rtol=1e-4)
    assert big_face.score == pytest.approx(face.score)
    assert FaceDetector(YUNET, min_face=10_000).detect(image) == []


@needs_photos
def test_exif_orientation_is_honoured(detector: FaceDetector, tmp_path: Path) -> None:
    upright = Image.open(PHOTOS / "smahesh29_man1.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # so the stored pixels lie on their side
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif)

    assert cv2.imread(str(path), cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR).shape[:2] == (612, 408)
    shown = load_image(path)
    assert shown.shape == (408, 612, 3)
    (face,) = detector.detect(shown)
    (reference,) = detector.detect(load_image(PHOTOS / "smahesh29_man1.jpg"))
    np.testing.assert_allclose(face.box, reference.box, atol=6)
    np.testing.assert_allclose(face.landmarks, reference.landmarks, atol=6)


@needs_yunet
@needs_photos
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "opencv"])
def test_detector_shared_between_threads(runtime: str) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino")
    detector = FaceDetector(YUNET, runtime=runtime)
    images = [load_image(PHOTOS / n) for n in ("smahesh29_man1.jpg", "dlib_2007_007763.jpg")]

    def boxes() -> list[list[tuple[float, ...]]]:
        return [[d.box for d in detector.detect(im)] for im in images]

    expected = boxes()
    results: list[list[list[tuple[float, ...]]]] = []
    threads = [threading.Thread(target=lambda: results.extend(boxes() for _ in range(2))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r == expected for r in results)


@needs_yunet
def test_detect_input_checks(detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="load_image"):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="load_image"):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []
    assert detector.detect(np.zeros((0, 5, 3), np.uint8)) == []


def test_detection_to_dict() -> None:
    detection = Detection(box=(1.0, 2.0, 30.0, 40.0), score=0.9, landmarks=np.arange(10.0).reshape(5, 2))
    data = json.loads(json.dumps(detection.to_dict()))
    assert data["box"] == [1.0, 2.0, 30.0, 40.0]
    assert data["landmarks"]["right_eye"] == [0.0, 1.0] and data["landmarks"]["left_mouth"] == [8.0, 9.0]


# ----------------------------------------------------------------------------------- weight location


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache" / "agegender"))
    monkeypatch.delenv("AGEGENDER_YUNET", raising=False)
    return tmp_path / "cache" / "agegender"


def _serve(monkeypatch: pytest.MonkeyPatch, source: Path | None) -> list[str]:
    """Make urllib.request.urlopen serve ``source`` (None: fail like an offline machine)."""
    requested: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        requested.append(url)
        if source is None:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(source.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


@needs_yunet
def test_weights_download_is_verified_and_cached(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = _serve(monkeypatch, YUNET)
    path = locate_weights()
    assert path == empty_cache / "face_detection_yunet_2023mar.onnx"
    assert requested == [detector_module.YUNET_URL]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == YUNET_SHA256
    assert sorted(p.name for p in empty_cache.iterdir()) == [path.name]
    assert locate_weights() == path and len(requested) == 1  # cache hit, no second download


@needs_yunet
def test_corrupt_cache_is_replaced(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_cache.mkdir(parents=True)
    (empty_cache / "face_detection_yunet_2023mar.onnx").write_bytes(b"partial")
    requested = _serve(monkeypatch, YUNET)
    assert hashlib.sha256(locate_weights().read_bytes()).hexdigest() == YUNET_SHA256
    assert len(requested) == 1


@pytest.mark.skipif(not YUNET_N.is_file(), reason=f"{YUNET_N} not found")
def test_weights_sha_mismatch_is_rejected(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, YUNET_N)  # a valid ONNX file, but not the pinned one
    with pytest.raises(WeightsError, match="sha256 .* expected 8f2383e4") as info:
        locate_weights()
    assert "AGEGENDER_YUNET" in str(info.value)
    assert list(empty_cache.iterdir()) == []  # nothing left behind


def test_offline_download_failure_says_what_to_do(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, None)
    with pytest.raises(WeightsError, match="could not download.*AGEGENDER_YUNET=.*model_path"):
        FaceDetector()
    assert list(empty_cache.iterdir()) == []


@needs_yunet
def test_explicit_path_and_env_var(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _serve(monkeypatch, None)
    assert locate_weights(YUNET) == YUNET
    monkeypatch.setenv("AGEGENDER_YUNET", str(YUNET))
    assert locate_weights() == YUNET
    assert locate_weights(YUNET_N) == YUNET_N  # the explicit argument wins over the env var
    monkeypatch.setenv("AGEGENDER_YUNET", str(tmp_path / "nope.onnx"))
    with pytest.raises(WeightsError, match=r"\(\$AGEGENDER_YUNET\) is not a file"):
        locate_weights()
    with pytest.raises(WeightsError, match=r"\(--detector, model_path=\) is not a file"):  # the CLI's name and Python's
        locate_weights(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match="could not load"):
        FaceDetector(garbage)


@needs_yunet
@needs_photos
@pytest.mark.parametrize("weights", [YUNET, YUNET_N], ids=["yunet_s", "yunet_n"])
def test_onnxruntime_finds_the_faces_opencv_finds(weights: Path) -> None:
    """The ONNX Runtime path (the default) reproduces cv2.FaceDetectorYN: same faces, boxes, landmarks, scores."""
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    images = [load_image(p) for p in sorted(PHOTOS.glob("*.jpg"))]
    images += [cv2.resize(images[0], None, fx=f, fy=f) for f in (0.37, 2.9)]  # odd sizes: padding to 32
    if UTKFACE.is_dir():
        images += [load_image(p) for p in sorted(UTKFACE.glob("*.jpg"))[:20]]
    ours, theirs = FaceDetector(weights, runtime="onnxruntime"), FaceDetector(weights, runtime="opencv")
    found = 0
    for image in images:
        a, b = ours.detect(image), theirs.detect(image)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert np.allclose(x.box, y.box, atol=0.01) and np.allclose(x.landmarks, y.landmarks, atol=0.01)
            assert x.score == pytest.approx(y.score, abs=1e-4)
        found += len(a)
    assert found >= 30


@needs_yunet
@needs_photos
def test_openvino_finds_the_faces_opencv_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO (bf16 on CPUs that have it) finds the same faces, boxes within 2% of their size, on its model for
    any size and on those compiled for one."""
    pytest.importorskip("openvino")
    monkeypatch.setattr(detector_module._OpenVinoYuNet, "STATIC_AFTER", 2)
    ours, theirs = FaceDetector(YUNET, runtime="openvino"), FaceDetector(YUNET, runtime="opencv")
    images = [load_image(p) for p in sorted(PHOTOS.glob("*.jpg"))]
    images += [cv2.resize(images[0], None, fx=f, fy=f) for f in (0.37, 2.9)]
    found = 0
    for image in images * 2:  # the second round on models compiled for each size
        a, b = (sorted(d.detect(image), key=lambda f: f.box) for d in (ours, theirs))
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert np.allclose(x.box, y.box, atol=0.02 * y.box[2]) and abs(x.score - y.score) < 0.02
        found += len(a)
    assert found >= 40
    assert len(ours._yunet.models.compiled) == len(images)  # type: ignore[attr-defined]  # one per padded size
    assert not ours._yunet.models.seen  # type: ignore[attr-defined]


def test_auto_runs_yunet_on_openvino_only_where_the_cpu_computes_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from agegender.inference.backends import CpuInfo

    monkeypatch.setattr(detector_module, "available_backends", lambda: ("onnxruntime", "openvino"))
    monkeypatch.setattr(detector_module, "cpu_info", lambda: CpuInfo("EPYC", ("avx512f", "avx512_bf16")))
    assert detector_module.detector_runtime()[0] == "openvino"
    monkeypatch.setattr(detector_module, "cpu_info", lambda: CpuInfo("Xeon", ("avx512f", "avx512_vnni")))
    assert detector_module.detector_runtime()[0] == "onnxruntime"  # int8 units only: YuNet is float
    monkeypatch.setattr(detector_module, "available_backends", lambda: ("onnxruntime",))
    assert detector_module.detector_runtime("opencv") == ("opencv", "asked for")
    with pytest.raises(detector_module.BackendError, match="agegender\\[openvino\\]"):
        detector_module.detector_runtime("openvino")


@needs_yunet
def test_a_model_that_is_not_yunet_is_refused(tmp_path: Path) -> None:
    from agegender.inference.onnx_model import shipped_model_path

    with pytest.raises(WeightsError, match="not YuNet's"):
        FaceDetector(shipped_model_path())
    with pytest.raises(ValueError, match="runtime must be one of auto, onnxruntime, openvino, opencv"):
        FaceDetector(YUNET, runtime="tensorflow")


# ------------------------------------------------------------------------------------------ alignment


def test_template_is_plausible() -> None:
    template = load_template()
    assert template.shape == (5, 2) and not template.flags.writeable
    assert ((template > 20) & (template < CHIP_SIZE - 20)).all()
    right_eye, left_eye, nose, right_mouth, left_mouth = template
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    assert abs(right_eye[1] - left_eye[1]) < 3  # chips are roll-aligned
    made = json.loads((Path(__file__).parents[1] / "src/agegender/inference/chip_template.json").read_text())
    assert made["made_by"]["chips"] >= 1000 and "yunet" in made["made_by"]["detector"].lower()


def test_similarity_matrix_recovers_a_known_transform() -> None:
    template = load_template().astype(np.float64)
    angle, scale, shift = np.deg2rad(17), 2.5, np.array([300.0, -40.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    in_photo = template @ rotation.T + shift
    matrix = similarity_matrix(in_photo)
    np.testing.assert_allclose(in_photo @ matrix[:, :2].T + matrix[:, 2], template, atol=1e-3)
    half = similarity_matrix(in_photo, size=100)
    np.testing.assert_allclose(in_photo @ half[:, :2].T + half[:, 2], template / 2, atol=1e-3)


def test_align_with_template_landmarks_is_identity() -> None:
    chip = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(chip, load_template()), chip)


def test_align_big_face_is_downsampled_without_aliasing() -> None:
    rng = np.random.default_rng(2)
    chip = cv2.GaussianBlur(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), (0, 0), 2)
    for factor in (4, 3.3, 6.7):  # whole blocks, and a box average followed by an area resize of the rest
        big = cv2.resize(chip, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        landmarks = (load_template() + 0.5) * big.shape[0] / 200 - 0.5 + np.array([70, 40])
        big = cv2.copyMakeBorder(big, 40, 10, 70, 5, cv2.BORDER_REFLECT)
        out = align_face(big, landmarks)
        assert out.shape == (200, 200, 3)
        assert np.abs(out[5:-5, 5:-5].astype(int) - chip[5:-5, 5:-5]).mean() < 2.0, factor


def test_align_rejects_bad_landmarks() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="5x2"):
        align_face(image, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="5x2"):
        align_face(image, np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="degenerate"):
        align_face(image, np.ones((5, 2)))


@needs_utkface
def test_realigning_utkface_chips_is_near_identity(detector: FaceDetector) -> None:
    chips = sorted(UTKFACE.glob("*.jpg"))[::2500][:8]
    displacement, mad = [], []
    grid = np.stack(np.meshgrid(np.arange(20, 180), np.arange(20, 180)), -1).reshape(-1, 2).astype(float)
    for path in chips:
        chip = load_image(path)
        pad = 100  # YuNet needs context around a face that fills the whole chip
        canvas = cv2.copyMakeBorder(chip, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(127, 127, 127))
        faces = detector.detect(canvas)
        assert faces, f"no face found in {path.name}"
        landmarks = faces[0].landmarks
        matrix = similarity_matrix(landmarks)
        moved = (grid + pad) @ matrix[:, :2].T + matrix[:, 2]  # chip pixel -> canvas -> aligned chip
        displacement.append(np.linalg.norm(moved - grid, axis=1).mean())
        aligned = align_face(canvas, landmarks)
        mad.append(np.abs(aligned[20:180, 20:180].astype(int) - chip[20:180, 20:180]).mean())
    assert np.mean(displacement) < 8.0, displacement
    assert np.mean(mad) < 25.0, mad


@pytest.mark.parametrize(("height", "width"), [(1, 1), (31, 33), (64, 64), (853, 1280), (100, 7)])
def test_yunet_input_is_the_image_zero_padded_to_multiples_of_32(height: int, width: int) -> None:
    image = np.random.default_rng(height * width).integers(1, 256, (height, width, 3), dtype=np.uint8)
    padded = detector_module._padded(image)
    assert padded.dtype == np.uint8 and padded.shape == (1, -(-height // 32) * 32, -(-width // 32) * 32, 3)
    np.testing.assert_array_equal(padded[0, :height, :width], image)
    assert not padded[0, height:].any() and not padded[0, :, width:].any()


def test_the_graph_makes_the_float_planes_itself(yunet_path: Path, photos_dir: Path) -> None:
    """The uint8 image cast and transposed inside the graph: the outputs of the file fed the float32 planes."""
    import onnx
    import onnxruntime as ort

    image = cv2.resize(load_image(photos_dir / "dlib_2007_007763.jpg"), (1000, 750))
    padded = detector_module._padded(image)
    planes = padded.transpose(0, 3, 1, 2).astype(np.float32)
    model = onnx.load(str(yunet_path))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.Clear()
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[1].Clear()
    del model.graph.value_info[:]
    as_floats = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    as_uint8 = ort.InferenceSession(detector_module._uint8_graph(yunet_path, "ONNX Runtime"),
                                    providers=["CPUExecutionProvider"])
    assert as_uint8.get_inputs()[0].type == "tensor(uint8)"
    expected = as_floats.run(None, {as_floats.get_inputs()[0].name: planes})
    got = as_uint8.run(None, {as_uint8.get_inputs()[0].name: padded})
    assert [o.shape for o in got] == [o.shape for o in expected] and len(got) == 12
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
