"""``Predictor``: age and gender for every face in a photo, or for aligned face chips, as an ``ImageResult``
per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agegender.images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from agegender.inference.align import align_face
from agegender.inference.detector import Detection, FaceDetector
from agegender.inference.onnx_model import ModelError, OnnxAgeGender
from agegender.inference.results import Face, ImageResult, plot, source_name
from agegender.labels import AGE_GROUPS, GENDERS
from agegender.outputs import AGE_KEYS, GENDER_KEYS, Decoded
from agegender.preprocess import CHIP_SIZE

_AUTO = "auto"


class Predictor:
    """Detect, align and predict.

    >>> predictor = Predictor()  # doctest: +SKIP
    >>> faces = predictor.predict("group.jpg")  # doctest: +SKIP
    >>> faces[0].age, faces[0].gender  # doctest: +SKIP
    (31.4, 'female')
    >>> faces.save("group_annotated.jpg")  # doctest: +SKIP

    ``predict`` returns an :class:`ImageResult`: the sequence of faces, with the image, its source and size,
    ``to_dict()``, ``rows()``, ``plot()``, ``save()`` and ``save_crops()``.

    ``model``: an ``agegender export`` ONNX file (default: the shipped flagship). ``detector``: a
    ``FaceDetector``, ``"auto"`` (YuNet, located as ``FaceDetector`` documents) or ``None`` to treat every input
    as an already aligned face chip. ``flip``: average each face with its mirror image.
    """

    def __init__(self, model: str | Path | OnnxAgeGender | None = None,
                 detector: FaceDetector | str | None = _AUTO, threads: int | None = None,
                 flip: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.model = model if isinstance(model, OnnxAgeGender) else OnnxAgeGender(model, threads=threads)
        outputs = set(self.model.config.outputs)
        if not (outputs & AGE_KEYS and outputs & GENDER_KEYS):
            raise ModelError(f"{self.model.path} predicts only {', '.join(sorted(outputs))}; the Predictor needs "
                             "a model with both age and gender outputs")
        if detector == _AUTO:
            detector = FaceDetector()
        elif isinstance(detector, str | Path):
            detector = FaceDetector(detector)
        self.detector: FaceDetector | None = detector
        self.flip, self.max_pixels = flip, max_pixels

    def predict(self, image: ImageSource) -> ImageResult:
        """Faces in one image (path, bytes, BGR numpy array or PIL image), most confident detection first."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageSource]) -> list[ImageResult]:
        """Faces of many images, all of them in one forward pass; a path's result names it as its source."""
        decoded_images = [load_image(img, max_pixels=self.max_pixels) for img in images]
        return self.predict_arrays(decoded_images, sources=[source_name(img) for img in images])

    def predict_arrays(self, images_bgr: Sequence[np.ndarray],
                       sources: Sequence[str] | None = None) -> list[ImageResult]:
        """Like ``predict_batch`` for images already decoded to BGR uint8 arrays; ``sources`` names them
        (default ``"array"``)."""
        if sources is not None and len(sources) != len(images_bgr):
            raise ValueError(f"{len(sources)} sources for {len(images_bgr)} images")
        chips: list[np.ndarray] = []
        located: list[list[Detection | None]] = []
        for image in images_bgr:
            if self.detector is None:
                chips.append(image)
                located.append([None])
                continue
            detections = self.detector.detect(image)
            chips.extend(align_face(image, d.landmarks, CHIP_SIZE) for d in detections)
            located.append(list(detections))
        found: list[list[Face]] = [[] for _ in images_bgr]
        if chips:
            decoded, i = self.model.predict(chips, flip=self.flip), 0
            for faces, image, dets in zip(found, images_bgr, located, strict=True):
                for det in dets:
                    faces.append(_face(decoded, i, det, image.shape))
                    i += 1
        names = ["array"] * len(images_bgr) if sources is None else sources
        return [ImageResult(faces, source=name, image=image, model=self.model.config.name)
                for faces, image, name in zip(found, images_bgr, names, strict=True)]

    def plot(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``image_bgr`` with ``faces`` drawn; for a prediction's own image, ``result.plot()`` does the same."""
        return plot(image_bgr, faces)


def _face(decoded: Decoded, i: int, det: Detection | None, shape: tuple[int, ...]) -> Face:
    female = float(decoded.female_prob[i])  # the Predictor only accepts models with a gender output
    group = int(decoded.age_group[i])
    box = det.box if det is not None else (0.0, 0.0, float(shape[1]), float(shape[0]))
    return Face(
        box=tuple(float(v) for v in box), score=det.score if det is not None else 1.0,
        age=float(decoded.age[i]), age_range=(float(decoded.age_low[i]), float(decoded.age_high[i])),
        age_group=AGE_GROUPS[group], age_group_confidence=float(decoded.group_probs[i, group]),
        gender=GENDERS[int(female >= 0.5)], gender_confidence=max(female, 1 - female),
        landmarks=None if det is None else det.landmarks)
