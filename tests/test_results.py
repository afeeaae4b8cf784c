"""``ImageResult``: a sequence of faces that knows its image, and every output derived from it (``to_dict``,
``rows``, ``plot``, ``save``, ``save_crops``), on hand-made faces and on a real photo."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from agegender import ImageResult, Predictor
from agegender.cli.predict import Writer, csv_columns
from agegender.images import ImageError, load_image
from agegender.inference.align import align_face
from agegender.inference.detector import LANDMARK_NAMES
from agegender.inference.predictor import _face
from agegender.inference.results import FACE_SCHEMA, LANDMARK_COLUMNS, ROW_COLUMNS, Face, source_name
from agegender.labels import AGE_GROUPS, age_to_group
from agegender.outputs import Decoded
from agegender.preprocess import CHIP_SIZE

PHOTO = "mowshon_test-image.jpg"  # five faces
FACE_COLUMNS = ("face", "x", "y", "w", "h", "score", "age", "age_low", "age_high", "age_group",
                "age_group_confidence", "gender", "gender_confidence", *LANDMARK_COLUMNS)


def make_face(x: float = 10.0, age: float = 30.0, landmarks: bool = True) -> Face:
    points = np.array([[x + 5, 20], [x + 15, 20], [x + 10, 25], [x + 6, 30], [x + 14, 30]], np.float32)
    return Face(box=(x, 10.0, 20.0, 25.0), score=0.9, age=age, age_range=(age - 5, age + 5), age_group="25-32",
                age_group_confidence=0.6, gender="female", gender_confidence=0.8,
                landmarks=points if landmarks else None)


@pytest.fixture(scope="module")
def predictor(model_path: Path, yunet_path: Path) -> Predictor:
    return Predictor(model_path, detector=yunet_path)


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> Path:
    path = photos_dir / PHOTO
    if not path.is_file():
        pytest.skip(f"shared photo not found: {path}")
    return path


@pytest.fixture(scope="module")
def result(predictor: Predictor, photo: Path) -> ImageResult:
    return predictor.predict(photo)


# --- without a model -------------------------------------------------------------------------------------

def test_an_image_result_behaves_as_the_list_of_its_faces() -> None:
    faces = [make_face(10), make_face(50, age=60)]
    result = ImageResult(faces, source=Path("some/dir/a.jpg"), image=np.zeros((40, 90, 3), np.uint8))
    assert len(result) == 2 and list(result) == faces and result[0] is faces[0] and result[-1] is faces[1]
    assert result == faces and faces == result and result == tuple(faces) and result != faces[:1]
    assert faces[1] in result and result.index(faces[1]) == 1 and bool(result)
    head = result[:1]
    assert isinstance(head, ImageResult) and head == [faces[0]] and head.image is result.image
    assert result.source == "some/dir/a.jpg" and result.size == (90, 40) and (result.width, result.height) == (90, 40)
    assert "image=" not in repr(result)  # the pixels stay out of the repr
    assert not ImageResult([], size=(5, 5)) and ImageResult([], size=(5, 5)) == []
    with pytest.raises(ValueError, match="size"):
        ImageResult([])
    with pytest.raises(TypeError):
        hash(result)
    with pytest.raises(ValueError, match="holds no image"):
        ImageResult(faces, size=(90, 40)).plot()


def test_faces_with_equal_landmark_arrays_are_equal() -> None:
    assert make_face() == make_face() and make_face() != make_face(age=31) and make_face() != make_face(landmarks=False)
    assert ImageResult([make_face()], size=(9, 9)) == ImageResult([make_face()], size=(9, 9))
    assert ImageResult([make_face()], size=(9, 9)) != ImageResult([make_face()], source="x.jpg", size=(9, 9))


def test_source_names_follow_load_image() -> None:
    assert source_name(Path("a/b.jpg")) == "a/b.jpg" and source_name("c.png") == "c.png"
    assert source_name(b"\xff\xd8") == "image data" and source_name(np.zeros((2, 2))) == "array"
    assert source_name(Image.new("RGB", (2, 2))) == "PIL image"


def test_rows_flatten_the_faces_into_row_columns() -> None:
    faces = [make_face(10), make_face(50, landmarks=False)]
    rows = ImageResult(faces, source="a.jpg", size=(90, 40), model="flagship").rows()
    assert [tuple(row) for row in rows] == [ROW_COLUMNS] * 2
    first, second = rows
    assert (first["file"], first["image_width"], first["image_height"], first["model"]) == ("a.jpg", 90, 40,
                                                                                           "flagship")
    assert first["face"] == 0 and second["face"] == 1 and first["error"] is None and first["frame"] is None
    assert (first["x"], first["y"], first["w"], first["h"]) == (10.0, 10.0, 20.0, 25.0)
    assert (first["age_low"], first["age_high"]) == (25.0, 35.0)
    assert (first["right_eye_x"], first["left_mouth_y"]) == (15.0, 30.0)
    assert all(second[c] is None for c in LANDMARK_COLUMNS)


def test_an_image_without_faces_gives_one_empty_row_and_a_failed_input_an_error_row() -> None:
    (row,) = ImageResult([], source="empty.jpg", size=(64, 48)).rows()
    assert tuple(row) == ROW_COLUMNS and (row["file"], row["image_width"], row["image_height"]) == ("empty.jpg", 64, 48)
    assert all(row[c] is None for c in FACE_COLUMNS) and row["error"] is None
    error = ImageResult.error_row(Path("bad.jpg"), "cannot decode")
    assert tuple(error) == ROW_COLUMNS and error["file"] == "bad.jpg" and error["error"] == "cannot decode"
    assert all(v is None for k, v in error.items() if k not in ("file", "error"))


def test_the_cli_csv_keeps_its_columns_and_format() -> None:
    """`agegender predict --csv`: the columns of ``rows()`` up to ``error``, no row for an image without a face,
    one row for a failed input, values as ``Face.to_dict()`` rounds them."""
    assert csv_columns() == ("file", "frame", "track", "face", "x", "y", "w", "h", "score", "age", "age_low",
                             "age_high", "age_group", "age_group_confidence", "gender", "gender_confidence",
                             "error")
    assert ROW_COLUMNS[:len(csv_columns())] == csv_columns()
    stream = io.StringIO()
    writer = Writer("csv", stream)
    writer.result(ImageResult([make_face(10.04)], source="a.jpg", size=(90, 40)))
    writer.result(ImageResult([], source="none.jpg", size=(90, 40)))
    writer.result(ImageResult([make_face(10)], source="v.mp4", size=(90, 40)), frame=3, tracks=[7])
    writer.error("bad.jpg", "bad.jpg: cannot decode")
    assert stream.getvalue().splitlines() == [
        ",".join(csv_columns()),
        "a.jpg,,,0,10.0,10.0,20.0,25.0,0.9,30.0,25.0,35.0,25-32,0.6,female,0.8,",
        "v.mp4,3,7,0,10.0,10.0,20.0,25.0,0.9,30.0,25.0,35.0,25-32,0.6,female,0.8,",
        "bad.jpg,,,,,,,,,,,,,,,,bad.jpg: cannot decode"]
    stream = io.StringIO()
    Writer("json", stream).result(ImageResult([make_face()], source="a.jpg", size=(90, 40)), frame=2, tracks=[4])
    record = json.loads(stream.getvalue())
    assert list(record) == ["file", "faces", "frame"] and record["faces"][0]["track"] == 4


def test_the_http_face_model_is_generated_from_face_to_dict() -> None:
    pytest.importorskip("fastapi_offline", reason="the serve extra is not installed")
    from agegender.serving.app import FaceOut, PredictOut

    for face in (make_face(), make_face(landmarks=False)):
        d = face.to_dict()
        assert list(d) == list(FACE_SCHEMA) == list(FaceOut.model_fields)
        assert FaceOut.model_validate(d).model_dump() == d
    found = ImageResult([make_face()], size=(90, 40), model="flagship").to_dict()
    body = {"faces": found["faces"], "image": {"width": found["width"], "height": found["height"]},
            "model": found["model"], "timing_ms": {"total": 1.0}}
    assert PredictOut.model_validate(body).model_dump() == body


def test_undetected_chips_crop_their_box() -> None:
    chip = np.random.default_rng(0).integers(0, 256, (CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    face = replace(make_face(landmarks=False), box=(0.0, 0.0, float(CHIP_SIZE), float(CHIP_SIZE)))
    (crop,) = ImageResult([face], image=chip).crops()
    assert np.array_equal(crop, chip)  # what `agegender predict --no-detect --save-dir` writes


# --- the shipped model on a real photo -------------------------------------------------------------------

def test_predict_returns_an_image_result_of_the_photo(predictor: Predictor, result: ImageResult,
                                                      photo: Path) -> None:
    image = load_image(photo)
    assert isinstance(result, ImageResult) and len(result) == 5
    assert result.source == str(photo) and result.size == (image.shape[1], image.shape[0])
    assert result.model == predictor.model.config.name and np.array_equal(result.image, image)
    assert result == list(result) and result == predictor.predict(photo)  # deterministic, compared by value
    assert [f.score for f in result] == sorted((f.score for f in result), reverse=True)
    named = predictor.predict_batch([photo.read_bytes(), image, Image.open(photo)])
    assert [r.source for r in named] == ["image data", "array", "PIL image"]
    assert all(r.faces == result.faces for r in named)


def test_to_dict_and_rows_round_trip_on_a_real_photo(result: ImageResult) -> None:
    d = result.to_dict()
    assert json.loads(result.to_json()) == d
    assert list(d) == ["source", "width", "height", "model", "faces"]
    assert (d["source"], d["width"], d["height"]) == (result.source, result.width, result.height)
    assert d["faces"] == [face.to_dict() for face in result]
    rows = result.rows()
    assert len(rows) == len(result) and all(tuple(row) == ROW_COLUMNS for row in rows)
    for i, (row, face) in enumerate(zip(rows, d["faces"], strict=True)):
        assert (row["file"], row["face"], row["image_width"], row["image_height"], row["error"]) == (
            d["source"], i, d["width"], d["height"], None)
        rebuilt = {"box": [row[c] for c in "xywh"], "score": row["score"], "age": row["age"],
                   "age_range": [row["age_low"], row["age_high"]], "age_group": row["age_group"],
                   "age_group_confidence": row["age_group_confidence"], "gender": row["gender"],
                   "gender_confidence": row["gender_confidence"],
                   "landmarks": {name: [row[f"{name}_x"], row[f"{name}_y"]] for name in LANDMARK_NAMES}}
        assert rebuilt == face
    text = io.StringIO()
    csv.DictWriter(text, ROW_COLUMNS).writerows(rows)  # every value is CSV-ready
    assert len(text.getvalue().splitlines()) == len(rows)


def test_plot_and_save_draw_on_a_copy(predictor: Predictor, result: ImageResult, tmp_path: Path) -> None:
    before = result.image.copy()
    annotated = result.plot()
    assert annotated.shape == result.image.shape and annotated.dtype == np.uint8
    assert not np.array_equal(annotated, result.image) and np.array_equal(result.image, before)
    assert np.array_equal(annotated, predictor.plot(result.image, result))  # the old call still works
    path = result.save(tmp_path / "out" / "annotated.png")
    assert path.is_file() and np.array_equal(cv2.imread(str(path)), annotated)
    with pytest.raises(OSError, match="cannot write"):
        result.save(tmp_path / "annotated.unknown-format")


def test_save_crops_writes_the_aligned_chips(result: ImageResult, tmp_path: Path) -> None:
    paths = result.save_crops(tmp_path / "crops")
    assert [p.name for p in paths] == [f"{Path(PHOTO).stem}_face{i}.jpg" for i in range(len(result))]
    for path, face in zip(paths, result, strict=True):
        chip = cv2.imread(str(path))
        assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3)
        expected = align_face(result.image, face.landmarks, CHIP_SIZE)
        assert np.abs(chip.astype(int) - expected).mean() < 8  # the same chip, through JPEG
    assert [p.name for p in result[:2].save_crops(tmp_path, stem="x")] == ["x_face0.jpg", "x_face1.jpg"]


def test_an_image_without_a_face(predictor: Predictor, tmp_path: Path) -> None:
    blank = np.full((240, 320, 3), 128, np.uint8)
    result = predictor.predict(blank)
    assert len(result) == 0 and result == [] and result.source == "array" and result.size == (320, 240)
    assert result.to_dict()["faces"] == []
    (row,) = result.rows()
    assert (row["file"], row["image_width"], row["image_height"]) == ("array", 320, 240)
    assert all(row[c] is None for c in FACE_COLUMNS)
    assert np.array_equal(result.plot(), blank) and result.save_crops(tmp_path, stem="blank") == []
    with pytest.raises(ValueError, match=r"image is array, not a file.*stem="):
        result.save_crops(tmp_path)  # two arrays' crops would overwrite each other under one default name


def test_a_face_cut_by_the_border_keeps_its_box_inside_the_image(predictor: Predictor, photos_dir: Path) -> None:
    image = load_image(photos_dir / "smahesh29_man1.jpg")
    for cut in (image[:, 330:], image[110:], image[:, :420], image[:240]):  # the face reaches past each edge
        result = predictor.predict(np.ascontiguousarray(cut))
        assert len(result) == 1
        x, y, w, h = result[0].box
        assert x >= 0 and y >= 0 and x + w <= cut.shape[1] and y + h <= cut.shape[0] and w > 0 and h > 0


def test_the_group_is_that_of_the_age_as_reported() -> None:
    """56.454 years is reported as 56.5, which the gap policy puts in 60+: the group must say so too."""
    ages = np.array([56.454, 56.44])
    decoded = Decoded(age=ages, age_low=ages - 5, age_high=ages + 5, group_probs=np.full((2, 8), 1 / 8),
                      female_prob=np.array([0.2, 0.8]), group_follows_age=True)
    faces = [_face(decoded, i, None, (64, 64)) for i in range(2)]
    assert [f.to_dict()["age"] for f in faces] == [56.5, 56.4] and [f.age for f in faces] == [56.5, 56.4]
    assert [f.age_group for f in faces] == ["60+", "48-53"]
    assert all(AGE_GROUPS[age_to_group(f.to_dict()["age"])] == f.age_group for f in faces)


def test_predict_batch_wants_a_sequence_and_the_predictor_a_detector(predictor: Predictor, photo: Path) -> None:
    with pytest.raises(TypeError, match="a sequence of images"):
        predictor.predict_batch(str(photo))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="detector must be"):
        Predictor(predictor.model, detector=True)  # type: ignore[arg-type]


def test_errors_return_gives_a_failure_for_every_bad_input(predictor: Predictor, photo: Path) -> None:
    unconvertible = Image.open(photo).convert("LA").convert("La")  # Pillow cannot make RGB of "La"
    results = predictor.predict_batch(["a\0b.jpg", unconvertible, photo], errors="return")
    assert [type(r).__name__ for r in results] == ["ImageFailure", "ImageFailure", "ImageResult"]
    assert "La" in results[1].message


def test_our_size_limit_decides_past_pillows_own() -> None:
    """A header of 400 M pixels, over twice Pillow's bomb guard: refused by our limit when it is lower, and past
    the header when it is higher (Pillow's guard refused it whatever the limit asked)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="20000x20000 = 400,000,000 pixels; the limit is 300,000,000") as err:
        load_image(png, max_pixels=300_000_000)
    assert err.value.kind == "too large"
    with pytest.raises(ImageError) as err:  # read past the header: it holds no pixels
        load_image(png, max_pixels=500_000_000)
    assert err.value.kind != "too large"


def test_the_text_output_shows_the_age_its_group_belongs_to() -> None:
    """2.9 years is in 0-2 by the gap policy; printed as "3" it read as a contradiction of the group."""
    face = replace(make_face(age=2.9), age_range=(2.0, 5.1), age_group="0-2")
    stream = io.StringIO()
    Writer("text", stream).result(ImageResult([face], source="kid.jpg", size=(90, 40)))
    assert "age 2.9 [2.0-5.1], group 0-2" in stream.getvalue()
