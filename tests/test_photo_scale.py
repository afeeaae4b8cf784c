"""Large JPEGs decoded at a reduced DCT scale give the faces, ages and genders of a full decode; small faces are
aligned from the coarsest decode that holds them at the network's resolution."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from agegender import images
from agegender.cli import main
from agegender.images import ScaledImage, finer_decoder, load_image, load_scaled
from agegender.inference.align import align_face
from agegender.inference.detector import FaceDetector
from agegender.inference.faces import locate_faces
from agegender.inference.predictor import Predictor
from agegender.preprocess import CHIP_SIZE

INPUT_SIDE = 72  # the side a model that averages its chip down to 72 px reads (v14's)


def upscaled(photos_dir: Path, name: str, width: int, folder: Path) -> Path:
    """``name`` from the shared photos enlarged to ``width`` pixels across, as a JPEG a phone might write."""
    image = Image.open(photos_dir / name).convert("RGB")
    path = folder / f"{Path(name).stem}_{width}.jpg"
    image.resize((width, round(image.height * width / image.width)), Image.Resampling.BILINEAR).save(path,
                                                                                                    quality=90)
    return path


@pytest.fixture(scope="module")
def detector(yunet_path: Path) -> FaceDetector:
    return FaceDetector(yunet_path)


def test_a_12_mp_photo_decoded_reduced_gives_the_faces_of_a_full_decode(
        photos_dir: Path, detector: FaceDetector, tmp_path: Path) -> None:
    path = upscaled(photos_dir, "dlib_2007_007763.jpg", 4032, tmp_path)
    reduced = Predictor(detector=detector, reduced=True).predict(path)
    full = Predictor(detector=detector, reduced=False).predict(path)
    assert len(reduced) == len(full) == 7
    # Faces come most confident first, and near-equal scores may swap: pair each with the nearest full one.
    centre = np.array([[x + w / 2, y + h / 2] for x, y, w, h in (f.box for f in full)])
    pairs = [(a, full[int(np.argmin(np.linalg.norm(centre - [a.box[0] + a.box[2] / 2, a.box[1] + a.box[3] / 2],
                                                      axis=1)))]) for a in reduced]
    assert len({id(b) for _, b in pairs}) == 7
    for a, b in pairs:
        assert np.allclose(a.box, b.box, atol=0.01 * 4032)  # detected on the same working-size pixels
    ages = np.abs([a.age - b.age for a, b in pairs])
    # Flagship v14 (area resampling) differed by a median 0.3 years here, v18 (linear) by 1.3 (0.8 to 2.0), though by
    # 0.10 on 1,200 labelled chips enlarged to 800 px (docs/photos.md): this photo is not typical.
    assert np.median(ages) < 1.6 and ages.max() < 3.0
    # The same gender wherever either decode is sure of it; a face near 50% may land either side (over 1,193
    # labelled faces in 12 MP photos the two agree on 99.2%: docs/logs/photo_scale.md).
    assert all(a.gender == b.gender for a, b in pairs if max(a.gender_confidence, b.gender_confidence) >= 0.6)


def test_a_smaller_detect_size_decodes_coarser_and_still_finds_large_faces(
        photos_dir: Path, yunet_path: Path, tmp_path: Path) -> None:
    path = upscaled(photos_dir, "dlib_2007_007763.jpg", 4032, tmp_path)  # faces about 300-500 px wide
    predictor = Predictor(detector=str(yunet_path), detect_size=640)
    assert predictor.detector is not None and predictor.detector.max_side == 640
    faces = predictor.predict(path)
    assert len(faces) == 7 and faces.scale == 0.25  # 1008 px: the smallest DCT scale that holds 640
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(path), "--detect-size", "16"])
    assert stop.value.code == 2


def test_small_faces_come_from_the_coarsest_decode_that_holds_them(
        photos_dir: Path, detector: FaceDetector, tmp_path: Path) -> None:
    path = upscaled(photos_dir, "mowshon_test-image-2.jpg", 5664, tmp_path)  # 24 MP, faces 130-300 px
    scaled = load_scaled(path, min_side=detector.max_side)
    assert scaled.scale == 0.25
    asked: list[ScaledImage] = []
    finer = finer_decoder(path, scaled)
    assert finer is not None

    def redecode(*, min_side: int, box: tuple[float, float, float, float] | None = None) -> ScaledImage:
        asked.append(finer(min_side=min_side, box=box))  # a window where the extension is built, as the Predictor's
        return asked[-1]

    detections, chips = locate_faces(scaled, detector, INPUT_SIDE, redecode)
    assert len(asked) == 1 and asked[0].scale == 0.5  # a quarter of the full decode's pixels
    full = load_image(path)
    found = detector.detect(scaled.pixels)
    small = 0
    for det, located, chip in zip(found, detections, chips, strict=True):
        np.testing.assert_allclose(located.landmarks, det.landmarks / scaled.scale, rtol=1e-5)
        if np.array_equal(chip, align_face(scaled.pixels, det.landmarks, CHIP_SIZE)):
            continue  # large enough in the reduced decode
        small += 1
        from_full = align_face(full, located.landmarks, CHIP_SIZE)
        # The same face as a full decode would give, up to resampling.
        assert np.abs(chip.astype(np.int16) - from_full).mean() < 4.0
    assert 0 < small < len(chips)
    # The shipped model interpolates its chip from the chip's 2x2 block average (100 px): its small faces need
    # the full decode here. The Predictor takes the same path, end to end, and its crops are the chips the model
    # read (they were aligned again from the reduced image: a small face's crop blurred).
    predictor = Predictor(detector=detector)
    assert predictor.input_side == 100
    asked.clear()
    _, chips = locate_faces(scaled, detector, predictor.input_side, redecode)
    assert len(asked) == 1 and asked[0].scale == 1.0
    faces = predictor.predict(path)
    assert len(faces) == len(chips) and faces.scale == 0.25
    for crop, chip in zip(faces.crops(), chips, strict=True):
        assert np.array_equal(crop, chip)
    assert all(np.array_equal(a, b) for a, b in zip(faces[1:].crops(), chips[1:], strict=True))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpegs_decode_to_pillows_pixels_at_every_scale_and_orientation(
        photos_dir: Path, tmp_path: Path, orientation: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg-turbo's decode is Pillow's, pixel for pixel: at full and reduced scale, for all 8 EXIF orientations;
    a CMYK JPEG, which libjpeg-turbo refuses, goes to Pillow at the same scale."""
    image = Image.open(photos_dir / "mowshon_test-image.jpg").convert("RGB").resize((1500, 1000))
    exif = image.getexif()
    exif[274] = orientation
    path = tmp_path / "turned.jpg"
    image.save(path, quality=90, exif=exif.tobytes())
    decoded = []  # what libjpeg-turbo decoded: every colour JPEG here, none of the CMYK one
    turbo = images.simplejpeg.decode_jpeg
    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", lambda *a, **kw: decoded.append(kw) or turbo(*a, **kw))
    for min_side, k in ((None, 1), (700, 2), (300, 4)):
        ours = load_scaled(path, min_side=min_side)
        with Image.open(path) as pil:
            if k > 1:
                pil.draft("RGB", (1500 // k, 1000 // k))
            upright = np.asarray(ImageOps.exif_transpose(pil.convert("RGB")))[..., ::-1]
        assert np.array_equal(ours.pixels, upright) and ours.scale == 1 / k
        assert ours.full_size == ((1500, 1000) if orientation < 5 else (1000, 1500))
    image.convert("CMYK").save(path, quality=90)
    cmyk = load_scaled(path, min_side=700)
    assert cmyk.pixels.shape == (500, 750, 3) and cmyk.scale == 0.5 and len(decoded) == 3
    finer = finer_decoder(path, cmyk)  # its small faces: the finer decode goes to Pillow too
    assert finer is not None and finer(min_side=1000).pixels.shape == (1000, 1500, 3)
    if orientation == 1:  # a multi-picture JPEG (some cameras): its first picture, reduced; a greyscale JPEG
        image.save(path, "MPO", save_all=True, append_images=[image.rotate(90)], quality=90)
        with Image.open(path) as pil:
            pil.draft("RGB", (750, 500))
            assert np.array_equal(load_scaled(path, min_side=700).pixels, np.asarray(pil.convert("RGB"))[..., ::-1])
        image.convert("L").save(path, quality=90)
        with Image.open(path) as pil:
            pil.draft("RGB", (750, 500))
            assert np.array_equal(load_scaled(path, min_side=700).pixels, np.asarray(pil.convert("RGB"))[..., ::-1])
        assert len(decoded) == 5


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_finer_decode_has_the_first_decodes_orientation_and_pixels(
        photos_dir: Path, tmp_path: Path, orientation: int) -> None:
    """The second, finer decode turns the photo as the first did, and gives its pixels."""
    image = Image.open(photos_dir / "mowshon_test-image.jpg").convert("RGB").resize((2400, 1800))
    exif = image.getexif()
    exif[274] = orientation  # EXIF Orientation
    path = tmp_path / "turned.jpg"
    image.save(path, quality=92, exif=exif.tobytes())
    first = load_scaled(path, min_side=500)
    assert first.scale == 0.25 and first.full_size == ((2400, 1800) if orientation in (1, 3) else (1800, 2400))
    finer = finer_decoder(path, first)
    assert finer is not None and finer_decoder(load_image(path), first) is None
    for min_side, scale in ((1200, 0.5), (2400, 1.0)):
        again = finer(min_side=min_side)
        reference = load_scaled(path, min_side=min_side) if scale < 1 else ScaledImage(load_image(path), 1.0,
                                                                                       first.full_size)
        assert again.scale == reference.scale == scale and again.full_size == first.full_size
        assert again.pixels.shape == reference.pixels.shape
        assert np.abs(again.pixels.astype(np.int16) - reference.pixels).mean() < 0.5
    from_bytes = finer_decoder(path.read_bytes(), first)
    assert from_bytes is not None and np.array_equal(from_bytes(min_side=1200).pixels, finer(min_side=1200).pixels)
    assert finer_decoder(path, load_scaled(path)) is None  # already at full scale


needs_window = pytest.mark.skipif(
    images._jpeg_region is None,
    reason="the agegender._jpeg_region extension was not built (libjpeg's headers, e.g. Debian's libjpeg62-turbo-dev, "
           "were missing at install)")


@needs_window
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_window_holds_the_whole_decodes_pixels_at_every_scale_and_orientation(
        photos_dir: Path, tmp_path: Path, orientation: int) -> None:
    """A window decoded alone is the whole decode's pixels where it lies, for all 8 EXIF orientations, at full and
    half scale, for boxes inside the photo, at its edges and past them, in baseline, progressive and greyscale
    JPEGs (chroma subsampled 4:2:0: the edge columns a crop must not upsample alone)."""
    image = Image.open(photos_dir / "mowshon_test-image.jpg").convert("RGB").resize((2403, 1801))
    exif = image.getexif()
    exif[274] = orientation
    shown = (2403, 1801) if orientation < 5 else (1801, 2403)
    boxes = [(0.0, 0.0, 1.0, 1.0), (1000.4, 700.6, 1133.2, 901.9), (17.0, 1500.5, 1790.0, 1799.0),
             (-40.0, -3.0, 77.7, 2500.0), (1700.0, 1.0, 1801.0, 20.0)]
    for kind, options in (("baseline", {}), ("progressive", {"progressive": True}), ("grey", {})):
        path = tmp_path / f"{kind}.jpg"
        (image.convert("L") if kind == "grey" else image).save(path, quality=90, exif=exif.tobytes(), **options)
        first = load_scaled(path, min_side=500)
        assert first.full_size == shown
        finer = finer_decoder(path, first)
        assert finer is not None
        for min_side in (1200, 2403):
            whole = finer(min_side=min_side)
            for box in boxes:
                window = finer(min_side=min_side, box=box)
                assert (window.scale, window.full_size) == (whole.scale, whole.full_size)
                (x, y), (h, w) = window.origin, window.pixels.shape[:2]
                assert np.array_equal(window.pixels, whole.pixels[y:y + h, x:x + w]), (kind, min_side, box)
                # it holds the box, widened by the pad, within the photo
                s, pad = window.scale, images.WINDOW_PAD
                assert x <= max(0, box[0] * s - pad) and y <= max(0, box[1] * s - pad)
                assert x + w >= min(whole.pixels.shape[1], box[2] * s + pad)
                assert y + h >= min(whole.pixels.shape[0], box[3] * s + pad)
                assert w * h < whole.pixels.shape[0] * whole.pixels.shape[1] or box[3] >= 2400


@needs_window
def test_a_window_falls_back_to_the_whole_decode_and_its_errors(photos_dir: Path, tmp_path: Path) -> None:
    """What libjpeg-turbo will not decode as a window (CMYK) is decoded whole, as before; a file cut after its
    first decode raises the whole decode's error; the extension checks what it is given."""
    image = Image.open(photos_dir / "mowshon_test-image.jpg").convert("RGB").resize((2400, 1800))
    cmyk = tmp_path / "cmyk.jpg"
    image.convert("CMYK").save(cmyk, quality=90)
    first = load_scaled(cmyk, min_side=500)
    finer = finer_decoder(cmyk, first)
    assert finer is not None
    window = finer(min_side=2400, box=(10.0, 10.0, 50.0, 50.0))
    assert window.origin == (0, 0) and window.pixels.shape == (1800, 2400, 3)
    path = tmp_path / "cut.jpg"
    image.save(path, quality=90)
    first = load_scaled(path, min_side=500)
    finer = finer_decoder(path, first)
    assert finer is not None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(images.ImageError):
        finer(min_side=2400, box=(10.0, 1700.0, 50.0, 1750.0))
    image.resize((1200, 900)).save(path, quality=90)  # another photo under the same name: refused, window or not
    for box in ((10.0, 10.0, 50.0, 50.0), None):
        with pytest.raises(images.ImageError, match="changed between its two decodes"):
            finer(min_side=2400, box=box)
    path.unlink()  # gone between the two decodes: the whole decode's message
    with pytest.raises(images.ImageError, match="cannot read"):
        finer(min_side=2400, box=(10.0, 1700.0, 50.0, 1750.0))
    odd = tmp_path / "odd.jpg"  # an EXIF orientation outside 1-8 turns nothing, window or not
    exif = image.getexif()
    exif[274] = 9
    image.save(odd, quality=90, exif=exif.tobytes())
    first = load_scaled(odd, min_side=500)
    finer = finer_decoder(odd, first)
    assert finer is not None and first.full_size == (2400, 1800)
    window, whole = finer(min_side=2400, box=(100.0, 200.0, 300.0, 400.0)), finer(min_side=2400)
    (x, y), (h, w) = window.origin, window.pixels.shape[:2]
    pad = images.WINDOW_PAD
    assert (x, y) == (100 - pad, 200 - pad) and np.array_equal(window.pixels, whole.pixels[y:y + h, x:x + w])
    data = (photos_dir / "mowshon_test-image.jpg").read_bytes()
    with pytest.raises(ValueError, match="1/3"):
        images._jpeg_region.decode(data, 3, 0, 0, 10, 10)
    with pytest.raises(ValueError, match="outside"):
        images._jpeg_region.decode(data, 1, 0, 0, 100_000, 10)
    with pytest.raises(ValueError, match="empty"):
        images._jpeg_region.decode(data, 1, 5, 0, 5, 10)


@needs_window
def test_small_faces_from_a_window_are_those_from_the_whole_decode(
        photos_dir: Path, detector: FaceDetector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Predictor decodes only the part of a 24 MP photo that its small faces' chips are sampled from, and reads
    the same faces as from the whole decode (up to the rounding of landmarks moved by the window's origin)."""
    path = upscaled(photos_dir, "mowshon_test-image-2.jpg", 5664, tmp_path)  # its smallest faces need full scale
    predictor = Predictor(detector=detector)
    asked: list[ScaledImage] = []
    decode = images.redecode_jpeg

    def spy(*args: object, **kwargs: object) -> ScaledImage:
        asked.append(decode(*args, **kwargs))  # type: ignore[arg-type]
        return asked[-1]

    monkeypatch.setattr(images, "redecode_jpeg", spy)
    windowed = predictor.predict(path)
    assert len(asked) == 1 and asked[0].scale == 1.0 and asked[0].origin != (0, 0)
    assert asked[0].pixels.size < 0.2 * 5664 * 3776 * 3  # the faces at the top of the photo only
    monkeypatch.setattr(images, "_jpeg_region", None)
    whole = predictor.predict(path)
    assert asked[-1].origin == (0, 0) and len(windowed) == len(whole) > 0
    for a, b in zip(windowed, whole, strict=True):
        assert a.box == b.box and abs(a.age - b.age) < 0.2 and a.gender == b.gender
    for a, b in zip(windowed.crops(), whole.crops(), strict=True):
        assert np.abs(a.astype(np.int16) - b).max() <= 2


@needs_window
def test_a_corrupt_jpeg_window_raises_or_decodes_and_never_crashes(photos_dir: Path) -> None:
    """libjpeg's errors and warnings come back as ValueError (the caller then decodes the whole image, which names
    the error), whatever bytes the entropy-coded data, the tables or the header hold: 400 seeded corruptions of a
    real photo, baseline and progressive, windows anywhere (a crash here would take a bulk run down with it)."""
    rng = np.random.default_rng(7)
    image = Image.open(photos_dir / "mowshon_test-image.jpg").convert("RGB")
    for options in ({}, {"progressive": True}):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90, **options)
        clean = np.frombuffer(buffer.getvalue(), np.uint8)
        outcomes = {"decoded": 0, "refused": 0}
        for _ in range(200):
            data = clean.copy()
            at = rng.integers(2, len(data), size=int(rng.integers(1, 16)))
            data[at] = rng.integers(0, 256, size=len(at), dtype=np.uint8)
            if rng.random() < 0.2:
                data = data[: int(rng.integers(2, len(data)))]  # cut short
            k = int(rng.choice([1, 2, 4, 8]))
            x0, y0 = int(rng.integers(0, 1100 // k)), int(rng.integers(0, 825 // k))
            x1, y1 = x0 + int(rng.integers(1, 200)), y0 + int(rng.integers(1, 200))
            try:
                pixels, width, height = images._jpeg_region.decode(data.tobytes(), k, x0, y0, x1, y1)
            except ValueError:
                outcomes["refused"] += 1
                continue
            assert len(pixels) == (x1 - x0) * (y1 - y0) * 3 and x1 <= width and y1 <= height
            outcomes["decoded"] += 1
        assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes
