"""Large JPEGs decoded at a reduced DCT scale give the faces, ages and genders of a full decode; small faces are
aligned from the coarsest decode that holds them at the network's resolution."""

from __future__ import annotations

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

    def redecode(*, min_side: int) -> ScaledImage:
        asked.append(finer(min_side=min_side))
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
