"""The faces of one photo: detected on a (possibly reduced) decode, each aligned from pixels that hold it at the
network's resolution.

A JPEG decoded at 1/2, 1/4 or 1/8 scale (:func:`agegender.images.load_scaled`) still holds every face the
detector can find, and a face that is large there is aligned from it. A face is *small* when the reduced image
holds fewer pixels across its chip than the network reads from a chip (``CHIP_SIZE / input_side`` chip pixels per
image pixel, e.g. 200 / 72 for a model that averages its chip down to 72 px, 200 / 100 for one that interpolates:
:func:`agegender.preprocess.detail_side`): the photo is decoded once more, at the coarsest DCT scale that holds
the smallest such face at the network's resolution (often 1/2 rather than full size, a quarter of the pixels),
and the small faces are aligned from that. Only the part of the photo their chips are sampled from is decoded
where the ``agegender._jpeg_region`` extension is built (libjpeg-turbo skips the rows above it, crops the columns
and stops after its last row: a 12 MP photo's top strip in about 2 ms against 30 for the whole image). Boxes and
landmarks are always in full-resolution coordinates.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol

import numpy as np

from agegender.images import ScaledImage
from agegender.inference.align import align_face, chip_corners_in_image, similarity_matrix
from agegender.inference.detector import Detection
from agegender.preprocess import CHIP_SIZE

__all__ = ["Detects", "Redecode", "locate_faces"]


class Detects(Protocol):
    """What :func:`locate_faces` needs of a detector: :meth:`FaceDetector.detect`'s call."""

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


class Redecode(Protocol):
    """Decodes the photo again with its longer side at least ``min_side`` pixels, e.g.
    ``partial(redecode_jpeg, path, full_size=...)``; ``box`` (x0, y0, x1, y1, full resolution): the part needed,
    which it may decode alone (a window: ``origin`` says where it lies)."""

    def __call__(self, *, min_side: int, box: tuple[float, float, float, float] | None = None) -> ScaledImage: ...


def _to_full(detection: Detection, scale: float) -> Detection:
    if scale == 1.0:
        return detection
    landmarks = (detection.landmarks / scale).astype(np.float32)
    landmarks.flags.writeable = False
    x, y, w, h = detection.box
    return replace(detection, box=(x / scale, y / scale, w / scale, h / scale), landmarks=landmarks)


def locate_faces(image: ScaledImage, detector: Detects, input_side: int,
                 redecode: Redecode | None = None) -> tuple[list[Detection], list[np.ndarray]]:
    """Detections (full-resolution coordinates, most confident first) and their aligned BGR chips
    (``CHIP_SIZE`` square). ``input_side``: the side the network reads a chip at (its load size); ``redecode``
    decodes the photo at a finer scale for its small faces (None: the reduced pixels serve every face)."""
    found = detector.detect(image.pixels)
    limit = CHIP_SIZE / input_side  # chip pixels per image pixel beyond which the reduced image is too coarse
    located = [_to_full(det, image.scale) for det in found]
    # The scale each face needs: chip pixels per full-resolution pixel over the limit (<= image.scale: coarse
    # enough already).
    needed = [image.scale * _magnification(det.landmarks) / limit for det in found]
    finer: ScaledImage | None = None
    if redecode is not None and image.scale < 1.0 and max(needed, default=0.0) > image.scale:
        small = [full.landmarks for full, scale in zip(located, needed, strict=True) if scale > image.scale]
        finer = redecode(min_side=math.ceil(max(needed) * max(image.full_size)), box=_footprint(small))
    chips = []
    for det, full, scale in zip(found, located, needed, strict=True):
        if finer is not None and scale > image.scale:
            chips.append(align_face(finer.pixels, full.landmarks * finer.scale - finer.origin, CHIP_SIZE))
        else:
            chips.append(align_face(image.pixels, det.landmarks, CHIP_SIZE))
    return located, chips


def _footprint(landmarks: list[np.ndarray]) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) of the pixels the chips of these faces are sampled from (the chip's corners mapped
    back into the image), which a window decode widens by what sampling reads around it."""
    points = np.concatenate([chip_corners_in_image(similarity_matrix(marks, CHIP_SIZE)) for marks in landmarks])
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _magnification(landmarks: np.ndarray) -> float:
    """Chip pixels per image pixel of the alignment that maps ``landmarks`` onto the chip template."""
    return math.sqrt(abs(float(np.linalg.det(similarity_matrix(landmarks, CHIP_SIZE)[:, :2]))))
