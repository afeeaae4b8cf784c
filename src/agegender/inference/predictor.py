"""``Predictor``: age and gender for every face in a photo, or for aligned face chips, as an ``ImageResult``
per image.

Its work comes in two halves that the bulk path runs in different processes: :func:`prepare_image` decodes one
photo (a JPEG at the reduced scale that still holds the detector's working size), finds its faces and aligns
each from pixels that hold it at the network's resolution (:mod:`agegender.inference.faces`);
:meth:`Predictor.finish` runs the model over the chips of many photos in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from agegender.images import (
    ARRAY_NAME,
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageSource,
    ScaledImage,
    finer_decoder,
    load_scaled,
)
from agegender.inference.detector import DETECT_SIZE, Detection, FaceDetector
from agegender.inference.faces import Redecode, locate_faces
from agegender.inference.onnx_model import ModelError, OnnxAgeGender
from agegender.inference.results import Face, ImageFailure, ImageResult, plot, source_name
from agegender.labels import AGE_GROUPS, gender_codes, gender_name
from agegender.outputs import AGE_KEYS, GENDER_KEYS, Decoded, reported_ages

_AUTO = "auto"


@dataclass(frozen=True)
class PreparedImage:
    """One photo ready for the model: its source, full size, detections (full-resolution coordinates; ``None``
    for a chip given as is), their aligned chips, and the decoded pixels at ``scale`` (None when not kept)."""

    source: str
    size: tuple[int, int]
    detections: list[Detection | None]
    chips: list[np.ndarray]
    image: np.ndarray | None = None
    scale: float = 1.0


def prepare_image(source: ImageSource, detector: FaceDetector | None, input_side: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS, reduced: bool = True,
                  keep_pixels: bool = True) -> PreparedImage:
    """Decode, detect and align one input (see the module doc); ``detector=None`` takes the whole input as an
    aligned chip. ``reduced``: decode a JPEG at the smallest DCT scale that still holds the detector's working
    size (its ``max_side``), so that it finds the same faces (``scripts/measure/photo_scale.py`` measures it).
    Raises :class:`~agegender.images.ImageError` for an input that cannot be decoded."""
    name = source_name(source)
    min_side = detector.max_side if reduced and detector is not None else None
    scaled = load_scaled(source, min_side=min_side, max_pixels=max_pixels)
    return prepare_pixels(scaled, name, detector, input_side, finer_decoder(source, scaled), keep_pixels)


def prepare_pixels(scaled: ScaledImage, name: str, detector: FaceDetector | None, input_side: int,
                   redecode: Redecode | None = None,
                   keep_pixels: bool = True) -> PreparedImage:
    """:func:`prepare_image` for pixels already decoded; ``redecode``: see
    :func:`~agegender.inference.faces.locate_faces`."""
    image = scaled.pixels if keep_pixels else None
    if detector is None:
        return PreparedImage(name, scaled.full_size, [None], [scaled.pixels], image, scaled.scale)
    detections, chips = locate_faces(scaled, detector, input_side, redecode)
    return PreparedImage(name, scaled.full_size, list(detections), chips, image, scaled.scale)


class Predictor:
    """Detect, align and predict.

    >>> predictor = Predictor()  # doctest: +SKIP
    >>> faces = predictor.predict("group.jpg")  # doctest: +SKIP
    >>> faces[0].age, faces[0].gender  # doctest: +SKIP
    (31.4, 'female')
    >>> faces.save("group_annotated.jpg")  # doctest: +SKIP

    ``predict`` returns an :class:`ImageResult`: the sequence of faces, with the image, its source and size,
    ``to_dict()``, ``rows()``, ``plot()``, ``save()`` and ``save_crops()``.

    ``model``: an ``agegender export`` ONNX file or a loaded model (default: the shipped flagship). ``detector``:
    a ``FaceDetector``, ``"auto"`` (YuNet, located as ``FaceDetector`` documents) or ``None`` to treat every
    input as an already aligned face chip. ``flip``: average each face with its mirror image. ``reduced``: decode
    large JPEGs at a reduced scale (:func:`prepare_image`); False decodes every photo at full size.
    ``detect_size``: the longer side a detector the Predictor makes (``"auto"`` or a path) detects photos at
    (:data:`~agegender.inference.detector.DETECT_SIZE`); a ``FaceDetector`` given keeps its own ``max_side``.
    """

    def __init__(self, model: str | Path | OnnxAgeGender | None = None,
                 detector: FaceDetector | str | None = _AUTO, threads: int | None = None,
                 flip: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, reduced: bool = True,
                 backend: str = "auto", device: str | None = None, detect_size: int = DETECT_SIZE) -> None:
        self.model = model if isinstance(model, OnnxAgeGender) else OnnxAgeGender(model, threads, backend, device)
        outputs = set(self.model.config.outputs)
        if not (outputs & AGE_KEYS and outputs & GENDER_KEYS):
            raise ModelError(f"{self.model.path} predicts only {', '.join(sorted(outputs))}; the Predictor needs "
                             "a model with both age and gender outputs, or an age-only export paired with a "
                             "gender-only one (--gender-model; load_model(AGE, gender_model=GENDER))")
        if isinstance(detector, str | Path):
            detector = FaceDetector(None if detector == _AUTO else detector, max_side=detect_size, threads=threads)
        elif detector is not None and not isinstance(detector, FaceDetector):
            raise TypeError(f"detector must be a FaceDetector, 'auto', a YuNet file's path or None, got "
                            f"{type(detector).__name__}")
        self.detector: FaceDetector | None = detector
        self.flip, self.max_pixels, self.reduced = flip, max_pixels, reduced

    @property
    def input_side(self) -> int:
        """The side at which the network reads a chip (:attr:`OnnxAgeGender.input_side`)."""
        return self.model.input_side

    def predict(self, image: ImageSource) -> ImageResult:
        """Faces in one image (path, bytes, BGR numpy array or PIL image), most confident detection first."""
        (result,) = self.predict_batch([image])
        assert isinstance(result, ImageResult)  # errors="raise": a failure raised instead
        return result

    def predict_batch(self, images: Sequence[ImageSource], errors: Literal["raise", "return"] = "raise"
                      ) -> list[ImageResult | ImageFailure]:
        """Faces of many images, all of them in one forward pass; a path's result names it as its source. With
        ``errors="return"`` an input that cannot be decoded gives an :class:`ImageFailure` in its place instead
        of raising :class:`~agegender.images.ImageError`."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        if isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray)):
            raise TypeError(f"predict_batch() takes a sequence of images, got one {type(images).__name__}; "
                            "pass a list, or call predict() for one image")
        prepared: list[PreparedImage | ImageFailure] = []
        for image in images:
            try:
                prepared.append(prepare_image(image, self.detector, self.input_side, self.max_pixels,
                                              self.reduced))
            except ImageError as err:
                if errors == "raise":
                    raise
                prepared.append(ImageFailure(source_name(image), err.kind, str(err)))
        return self.finish(prepared)

    def predict_arrays(self, images_bgr: Sequence[np.ndarray],
                       sources: Sequence[str] | None = None) -> list[ImageResult]:
        """Like ``predict_batch`` for images already decoded to BGR uint8 arrays; ``sources`` names them
        (default ``"array"``)."""
        if sources is not None and len(sources) != len(images_bgr):
            raise ValueError(f"{len(sources)} sources for {len(images_bgr)} images")
        names = [ARRAY_NAME] * len(images_bgr) if sources is None else sources
        prepared = [prepare_pixels(ScaledImage(img, 1.0, (img.shape[1], img.shape[0])), name, self.detector,
                                   self.input_side) for img, name in zip(images_bgr, names, strict=True)]
        return self.finish(prepared)  # type: ignore[return-value]

    def finish(self, prepared: Sequence[PreparedImage | ImageFailure]) -> list[ImageResult | ImageFailure]:
        """The model over every chip of ``prepared`` in one batch; one result per item (failures pass through)."""
        chips = [chip for item in prepared if isinstance(item, PreparedImage) for chip in item.chips]
        decoded = self.model.predict(chips, flip=self.flip) if chips else None
        results: list[ImageResult | ImageFailure] = []
        i = 0
        for item in prepared:
            if isinstance(item, ImageFailure):
                results.append(item)
                continue
            faces = []
            for det in item.detections:
                faces.append(_face(decoded, i, det, item.size))
                i += 1
            results.append(ImageResult(faces, source=item.source, size=item.size, image=item.image,
                                       model=self.model.config.name, scale=item.scale,
                                       model_version=self.model.version_label,
                                       chips=None if item.image is None else item.chips))
        return results

    def plot(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``image_bgr`` with ``faces`` drawn; for a prediction's own image, ``result.plot()`` does the same."""
        return plot(image_bgr, faces)


def _in_image(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A detection's ``(x, y, w, h)`` clipped to the image (a face cut by the border reaches past it).

    >>> _in_image((-2.0, 5.0, 20.0, 10.0), (15, 12))
    (0.0, 5.0, 15.0, 7.0)
    """
    x0, y0 = min(max(box[0], 0.0), size[0]), min(max(box[1], 0.0), size[1])
    x1, y1 = min(max(box[0] + box[2], 0.0), size[0]), min(max(box[1] + box[3], 0.0), size[1])
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _face(decoded: Decoded | None, i: int, det: Detection | None, size: tuple[int, int]) -> Face:
    assert decoded is not None  # the Predictor needs age and gender outputs:
    assert decoded.female_prob is not None and decoded.age is not None
    groups = decoded.age_group
    assert groups is not None
    female = float(decoded.female_prob[i])
    group = int(groups[i])
    age = float(reported_ages(decoded.age[i]))
    age_range = None  # an age regression gives a point (outputs.decode)
    if decoded.age_low is not None and decoded.age_high is not None:
        low, high = reported_ages([decoded.age_low[i], decoded.age_high[i]])
        age_range = (float(low), float(high))
    probs = None if decoded.group_probs is None else tuple(float(v) for v in decoded.group_probs[i])
    return Face(
        box=_in_image(det.box, size) if det is not None else (0.0, 0.0, float(size[0]), float(size[1])),
        score=det.score if det is not None else 1.0, age=age, age_range=age_range,
        age_group=AGE_GROUPS[group], age_group_confidence=None if probs is None else probs[group],
        gender=gender_name(int(gender_codes(female))), gender_confidence=max(female, 1 - female),
        landmarks=None if det is None else det.landmarks, age_group_probabilities=probs)
