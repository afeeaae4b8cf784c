"""The faces of one photo: detected on a (possibly reduced) decode, each aligned from pixels that hold it at the
network's resolution.

A JPEG decoded at 1/2, 1/4 or 1/8 scale (:func:`agegender.images.load_scaled`) still holds every face the
detector can find, and a face that is large there is aligned from it. A face is *small* when the reduced image
holds fewer pixels across its chip than the network reads from a chip (``CHIP_SIZE / input_side`` chip pixels per
image pixel, e.g. 200 / 72): such a face is aligned from the full-resolution image, decoded once for the photo
when the first small face asks for it. Boxes and landmarks are always in full-resolution coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from agegender.images import ScaledImage
from agegender.inference.align import align_face, similarity_matrix
from agegender.inference.detector import Detection, FaceDetector
from agegender.preprocess import CHIP_SIZE

__all__ = ["locate_faces"]


def _to_full(detection: Detection, scale: float) -> Detection:
    if scale == 1.0:
        return detection
    landmarks = (detection.landmarks / scale).astype(np.float32)
    landmarks.flags.writeable = False
    return replace(detection, box=tuple(v / scale for v in detection.box), landmarks=landmarks)


def locate_faces(image: ScaledImage, detector: FaceDetector, input_side: int,
                 full_image: Callable[[], np.ndarray] | None = None) -> tuple[list[Detection], list[np.ndarray]]:
    """Detections (full-resolution coordinates, most confident first) and their aligned BGR chips
    (``CHIP_SIZE`` square). ``input_side``: the side the network reads a chip at (its load size); ``full_image``
    decodes the photo at full resolution (None: the reduced pixels serve every face)."""
    found = detector.detect(image.pixels)
    limit = CHIP_SIZE / input_side  # chip pixels per image pixel beyond which the reduced image is too coarse
    full: np.ndarray | None = None
    detections, chips = [], []
    for det in found:
        magnification = math.sqrt(abs(float(np.linalg.det(similarity_matrix(det.landmarks, CHIP_SIZE)[:, :2]))))
        located = _to_full(det, image.scale)
        if image.scale < 1.0 and magnification > limit and full_image is not None:
            if full is None:
                full = full_image()
            chips.append(align_face(full, located.landmarks, CHIP_SIZE))
        else:
            chips.append(align_face(image.pixels, det.landmarks, CHIP_SIZE))
        detections.append(located)
    return detections, chips
