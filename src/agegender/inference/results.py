"""Results: a ``Face`` per face, and an ``ImageResult`` per image, which is what ``Predictor.predict`` returns.

An ``ImageResult`` is a sequence of its faces (``len``, iteration, indexing, equal to a list of the same faces)
that also knows its source, its size, its pixels and the model that made it. Every output derives from it:
``to_dict()``/``to_json()`` (the JSON schema in the README), ``rows()`` (one flat row per face, the columns of
:data:`ROW_COLUMNS`: the CLI's CSV and the bulk outputs), ``plot()``/``save()`` (the annotated image) and
``crops()``/``save_crops()`` (the aligned face chips).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, overload

import cv2
import numpy as np

from agegender.images import ARRAY_NAME, BYTES_NAME, PIL_NAME
from agegender.inference.align import align_face
from agegender.inference.detector import LANDMARK_NAMES
from agegender.outputs import AGE_DECIMALS
from agegender.preprocess import CHIP_SIZE

MALE_COLOR, FEMALE_COLOR = (235, 150, 40), (120, 60, 230)  # BGR

FACE_SCHEMA: dict[str, tuple[Any, str | None]] = {
    "box": (list[float], "x, y, width, height in image pixels"),
    "score": (float, "detector confidence, 0..1"),
    "age": (float, "estimated age in years"),
    "age_range": (list[float] | None, "80% interval of the age, in years; null for a model that regresses a "
                  "point age (no distribution to bound it)"),
    "age_group": (str, None),
    "age_group_confidence": (float | None, "probability of age_group; null for a point-age model"),
    "gender": (str, "'female', 'male', or 'unknown' when both are exactly equally likely"),
    "gender_confidence": (float, "probability of the predicted gender"),
    "landmarks": (dict[str, list[float]] | None, "five facial points, name -> [x, y]"),
}
"""What ``Face.to_dict()`` writes: key -> (JSON type as a Python annotation, description). The HTTP API's
response model is generated from it."""

LANDMARK_COLUMNS = tuple(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy")
"""The landmarks in a row: ``right_eye_x, right_eye_y, ... left_mouth_y`` (empty without landmarks)."""

ROW_COLUMNS: tuple[str, ...] = (
    "file", "frame", "track", "face", "x", "y", "w", "h", "score", "age", "age_low", "age_high", "age_group",
    "age_group_confidence", "gender", "gender_confidence", "error",
    "image_width", "image_height", "model", "model_version", *LANDMARK_COLUMNS)
"""The columns of :meth:`ImageResult.rows`, in order: the ``agegender predict --csv`` columns (up to ``error``),
then the image's size, the model's name, the model's file and version, and the flattened landmarks.

``file`` is the input (a path, or a name such as ``image data`` for bytes); ``frame`` and ``track`` are for
videos, filled by the caller (empty for images); ``face`` is the face's index in the image (most confident
first); ``x, y, w, h`` the box; ``age_low, age_high`` the 80% interval (empty, as ``age_group_confidence``, for
a point-age regression); ``error`` is empty for an image that was read (see :meth:`ImageResult.error_row`). An
image without a face gives one row whose face columns are empty.
Values are those of ``Face.to_dict()`` (same rounding); an empty value is ``None``.
"""


#: Each column's type in tabular outputs (Parquet's schema): ``str``, ``int`` or ``float``.
ROW_TYPES: dict[str, str] = {
    column: "str" if column in ("file", "age_group", "gender", "error", "model", "model_version")
    else "int" if column in ("frame", "track", "face", "image_width", "image_height") else "float"
    for column in ROW_COLUMNS}


@dataclass(frozen=True)
class Face:
    """One face: where it is, and its age and gender.

    ``box`` is (x, y, w, h) in image pixels, clipped to the image (the whole image for an undetected chip);
    ``landmarks`` may lie past the border of a face the border cuts. ``age`` and ``age_range`` (an 80% interval)
    are in years to a tenth (:data:`~agegender.outputs.AGE_DECIMALS`), ``age_group`` the group of that age
    where it comes from the same distribution, ``gender_confidence`` the probability of the predicted gender.
    ``age_group_probabilities``: the probability of each group of :data:`~agegender.labels.AGE_GROUPS`, in that
    order (``age_group_confidence`` is the one of ``age_group``); not in ``to_dict()`` or the rows. A model that
    regresses a point age (Zhu's, Vu's, the UTKFace study's) has no distribution: its ``age_range``,
    ``age_group_confidence`` and ``age_group_probabilities`` are None, and ``age_group`` is the group of its age.
    """

    box: tuple[float, float, float, float]
    score: float
    age: float
    age_range: tuple[float, float] | None
    age_group: str
    age_group_confidence: float | None
    gender: str
    gender_confidence: float
    landmarks: np.ndarray | None = None
    age_group_probabilities: tuple[float, ...] | None = None

    def __eq__(self, other: object) -> bool:
        """Field by field; the landmarks (an array) compare by value."""
        if not isinstance(other, Face):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    @property
    def label(self) -> str:
        """What ``plot()`` writes by the box, e.g. ``F 34 (28-41)`` (without the interval for a point age)."""
        if self.age_range is None:
            return f"{self.gender[0].upper()} {self.age:.0f}"
        return f"{self.gender[0].upper()} {self.age:.0f} ({self.age_range[0]:.0f}-{self.age_range[1]:.0f})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the keys of :data:`FACE_SCHEMA`; the schema is documented in the README."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "age": round(float(self.age), AGE_DECIMALS),
            "age_range": None if self.age_range is None else [round(float(v), AGE_DECIMALS) for v in self.age_range],
            "age_group": self.age_group,
            "age_group_confidence": None if self.age_group_confidence is None
            else round(float(self.age_group_confidence), 4),
            "gender": self.gender,
            "gender_confidence": round(float(self.gender_confidence), 4),
            "landmarks": None if self.landmarks is None else {
                name: [round(float(x), 1), round(float(y), 1)]
                for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks, strict=True)},
        }

    def to_row(self) -> dict[str, Any]:
        """This face's columns of a row (see :data:`ROW_COLUMNS`), from ``to_dict()``."""
        d = self.to_dict()
        x, y, w, h = d["box"]
        low, high = d["age_range"] or (None, None)
        row = {"x": x, "y": y, "w": w, "h": h, "score": d["score"], "age": d["age"],
               "age_low": low, "age_high": high, "age_group": d["age_group"],
               "age_group_confidence": d["age_group_confidence"], "gender": d["gender"],
               "gender_confidence": d["gender_confidence"]}
        points = d["landmarks"] or {}
        for name in LANDMARK_NAMES:
            row[f"{name}_x"], row[f"{name}_y"] = points.get(name, (None, None))
        return row


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is not None and b is not None and np.array_equal(a, b)
    return bool(a == b)


def source_name(source: Any) -> str:
    """How a result names its input: the path of a file, else what ``load_image`` calls the input."""
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return BYTES_NAME
    if isinstance(source, np.ndarray):
        return ARRAY_NAME
    return PIL_NAME if hasattr(source, "getexif") else type(source).__name__


@dataclass(frozen=True, eq=False)
class ImageResult(Sequence[Face]):
    """The faces found in one image (most confident detection first), with the image they were found in.

    A sequence of :class:`Face`: ``len(result)``, ``for face in result``, ``result[0].age``, and
    ``result == [face, ...]`` all work as on the list of faces; ``result[1:]`` is an ``ImageResult`` with those
    faces. ``source`` names the input (its path, ``"image data"`` for bytes, ``"array"``, ``"PIL image"``),
    ``size`` is the image's (width, height) as displayed (EXIF orientation applied; the boxes refer to it),
    ``image`` the decoded BGR pixels (needed by ``plot`` and ``save``, and by ``crops`` and ``save_crops``
    without ``chips``; ``None`` if the result was built without them) at ``scale`` of ``size`` (a JPEG decoded at
    a reduced scale keeps those pixels: the plot is drawn on them), ``model`` the name of the model that predicted
    the faces. ``chips``: the
    aligned chip of each face that the model read (a small face of a reduced JPEG is aligned from a finer decode
    than ``image``), which ``crops`` returns; without them, ``crops`` aligns the faces from ``image``.

    Two results are equal when their faces, source, size and model are; the pixels are not compared.
    """

    faces: Sequence[Face]  # stored as a tuple
    source: str = ARRAY_NAME
    size: tuple[int, int] = (0, 0)
    image: np.ndarray | None = field(default=None, repr=False)
    model: str | None = None
    scale: float = 1.0
    model_version: str | None = None
    chips: Sequence[np.ndarray] | None = field(default=None, repr=False)  # stored as a tuple, one per face

    def __post_init__(self) -> None:
        object.__setattr__(self, "faces", tuple(self.faces))
        if self.chips is not None:
            object.__setattr__(self, "chips", tuple(self.chips))
            if len(self.chips) != len(self.faces):
                raise ValueError(f"{len(self.chips)} chips for {len(self.faces)} faces")
        object.__setattr__(self, "source", source_name(self.source))
        if self.size == (0, 0):
            if self.image is None:
                raise ValueError("an ImageResult needs its image or its size=(width, height)")
            object.__setattr__(self, "size", (int(self.image.shape[1]), int(self.image.shape[0])))
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    # --- the sequence of faces ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.faces)

    @overload
    def __getitem__(self, index: int) -> Face: ...

    @overload
    def __getitem__(self, index: slice) -> ImageResult: ...

    def __getitem__(self, index: int | slice) -> Face | ImageResult:
        if isinstance(index, slice):
            return replace(self, faces=self.faces[index], chips=None if self.chips is None else self.chips[index])
        return self.faces[index]

    def __iter__(self) -> Iterator[Face]:
        return iter(self.faces)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ImageResult):
            return (self.faces, self.source, self.size, self.model) == (other.faces, other.source, other.size,
                                                                        other.model)
        if isinstance(other, list | tuple):
            return list(self.faces) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # --- outputs -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"source", "width", "height", "model", "faces": [Face.to_dict(), ...]}``."""
        return {"source": self.source, "width": self.width, "height": self.height, "model": self.model,
                "faces": [face.to_dict() for face in self.faces]}

    def to_json(self, **options: Any) -> str:
        """``to_dict()`` as JSON text; ``options`` go to ``json.dumps``."""
        return json.dumps(self.to_dict(), **options)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per face with every column of :data:`ROW_COLUMNS` in order; one row with empty face
        columns when the image has no face."""
        image = {"file": self.source, "image_width": self.width, "image_height": self.height, "model": self.model,
                 "model_version": self.model_version}
        if not self.faces:
            return [_row(image)]
        return [_row({**image, "face": i, **face.to_row()}) for i, face in enumerate(self.faces)]

    @classmethod
    def error_row(cls, source: Any, message: str) -> dict[str, Any]:
        """The row (columns of :data:`ROW_COLUMNS`) for an input that could not be read or predicted."""
        return _row({"file": source_name(source), "error": message})

    def plot(self) -> np.ndarray:
        """A copy of the image with each face's box and label drawn (see :func:`plot`)."""
        return plot(self._pixels(), [_scaled(face, self.scale) for face in self.faces])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the annotated image (``plot()``) to ``path``, its format from the suffix; returns the path."""
        return _write(Path(path), self.plot())

    def crops(self) -> list[np.ndarray]:
        """Each face's chip: aligned on its landmarks at ``CHIP_SIZE`` x ``CHIP_SIZE`` (what the model saw: the
        result's ``chips`` where it holds them), or, for a face without landmarks (``detector=None``), the pixels
        of its box (the whole chip)."""
        if self.chips is not None:
            return list(self.chips)
        image = self._pixels()
        faces = [_scaled(face, self.scale) for face in self.faces]
        return [align_face(image, face.landmarks, CHIP_SIZE) if face.landmarks is not None
                else _box_pixels(image, face.box) for face in faces]

    def save_crops(self, directory: str | os.PathLike, stem: str | None = None) -> list[Path]:
        """Write ``crops()`` as ``DIRECTORY/STEM_face{i}.jpg`` (``stem``: default the source's file stem; needed
        for an image that did not come from a file); returns the paths written, in face order."""
        if stem is None:
            if self.source in (BYTES_NAME, ARRAY_NAME, PIL_NAME):
                raise ValueError(f"this result's image is {self.source}, not a file, so its crops have no name: pass "
                                 "save_crops(directory, stem=...)")
            stem = Path(self.source).stem
        return [_write(Path(directory) / f"{stem}_face{i}.jpg", chip) for i, chip in enumerate(self.crops())]

    def _pixels(self) -> np.ndarray:
        if self.image is None:
            raise ValueError(f"this result for {self.source} holds no image: build it with image=...")
        return self.image


@dataclass(frozen=True)
class ImageFailure:
    """An input that could not be read or predicted, in place of its :class:`ImageResult` (``predict_batch(...,
    errors="return")``): ``kind`` names the reason in a few words (see :class:`agegender.images.ImageError`)."""

    source: str
    kind: str
    message: str

    def rows(self) -> list[dict[str, Any]]:
        """Its one row: :meth:`ImageResult.error_row`."""
        return [ImageResult.error_row(self.source, self.message)]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": self.message, "error_kind": self.kind}


def _scaled(face: Face, scale: float) -> Face:
    """``face`` with its box and landmarks in the coordinates of pixels at ``scale``."""
    if scale == 1.0:
        return face
    x, y, w, h = face.box
    return replace(face, box=(x * scale, y * scale, w * scale, h * scale),
                   landmarks=None if face.landmarks is None else face.landmarks * scale)


def _row(values: dict[str, Any]) -> dict[str, Any]:
    """A row with every column of ``ROW_COLUMNS``, in order, ``None`` where ``values`` has nothing."""
    return {column: values.get(column) for column in ROW_COLUMNS}


def _box_pixels(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in box)
    x0, y0 = max(x, 0), max(y, 0)
    return image[y0:max(y + h, y0), x0:max(x + w, x0)]


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = image.size > 0 and cv2.imwrite(str(path), image)
    except cv2.error as err:  # e.g. a suffix no encoder knows
        raise OSError(f"cannot write {path}: {getattr(err, 'err', err)}") from err
    if not written:
        raise OSError(f"cannot write {path}")
    return path


def plot(image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of the image with each face's box and label drawn (blue male, magenta female)."""
    canvas = image_bgr.copy()
    scale = max(canvas.shape[:2]) / 800
    thick, font = max(1, round(2 * scale)), 0.5 * max(scale, 0.6)
    for face in faces:
        x, y, w, h = (int(round(v)) for v in face.box)
        color = MALE_COLOR if face.gender == "male" else FEMALE_COLOR
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thick)
        (tw, th), base = cv2.getTextSize(face.label, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        top = max(y - th - base - 4, 0)
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 4), color, -1)
        cv2.putText(canvas, face.label, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    thick, cv2.LINE_AA)
    return canvas
