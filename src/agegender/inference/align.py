"""Five-point similarity alignment onto the geometry of UTKFace's 200x200 training chips.

The landmark template (``chip_template.json``, next to this module) holds the median positions of
YuNet's five landmarks on UTKFace chips, learned by ``scripts/build/learn_chip_template.py``. Aligning a
face from any photo with :func:`align_face` therefore produces a chip framed like the training data:
same scale, centre and roll.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from agegender.artifacts import shipped_path
from agegender.preprocess import CHIP_SIZE

__all__ = ["align_face", "chip_corners_in_image", "load_template", "similarity_matrix"]


@lru_cache(maxsize=4)
def _read_template(path: str | None) -> np.ndarray:
    text = Path(shipped_path("chip-template") if path is None else path).read_text(encoding="utf-8")
    points = np.asarray(json.loads(text)["points"], dtype=np.float32)
    if points.shape != (5, 2):
        raise ValueError(f"template {path or 'chip_template.json'} must hold 5 (x, y) points")
    points.flags.writeable = False
    return points


def load_template(path: str | Path | None = None) -> np.ndarray:
    """The 5x2 landmark template in a 200x200 chip frame (read-only); default: the packaged one."""
    return _read_template(None if path is None else str(path))


def _check_points(landmarks: np.ndarray, what: str) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"{what} must be a finite 5x2 array of (x, y) points, got shape {points.shape}")
    return points


def similarity_matrix(
    landmarks: np.ndarray, size: int = CHIP_SIZE, *, template: np.ndarray | None = None
) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, translation) mapping ``landmarks`` onto the template
    scaled to a ``size`` x ``size`` chip, least squares over all five points."""
    src = _check_points(landmarks, "landmarks")
    dst = _check_points(load_template() if template is None else template, "template")
    dst = dst * (size / CHIP_SIZE)
    # A threshold no residual can reach keeps all points as inliers, so the refined model is the plain
    # least-squares fit (the default RANSAC would drop points and depend on random sampling).
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, ransacReprojThreshold=1e9)
    if matrix is None:
        raise ValueError("landmarks are degenerate (e.g. all equal); cannot estimate an alignment")
    return matrix


def align_face(
    image_bgr: np.ndarray,
    landmarks: np.ndarray,
    size: int = CHIP_SIZE,
    *,
    template: np.ndarray | None = None,
) -> np.ndarray:
    """Cut a ``size`` x ``size`` face chip from ``image_bgr``, aligned so that ``landmarks`` (5x2, YuNet
    order, image pixels) land on the UTKFace chip template. Pixels outside the image replicate the edge.

    When the face is shrunk by more than 2x, the source region is first area-downsampled, so the chip
    is not aliased (bilinear sampling alone would skip pixels).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    matrix = similarity_matrix(landmarks, size, template=template)
    scale = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        image_bgr, matrix = _prefilter(image_bgr, matrix, size, scale)
    return cv2.warpAffine(
        image_bgr, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def chip_corners_in_image(matrix: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """The image points (4 x 2, float64) that the corners of a ``size`` x ``size`` chip cut by ``matrix`` (a
    :func:`similarity_matrix`) are sampled from."""
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    return corners @ cv2.invertAffineTransform(matrix).T


def _prefilter(
    image: np.ndarray, matrix: np.ndarray, size: int, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Area-resize the part of ``image`` the chip samples by ``scale``; return it and the adjusted matrix. As
    :func:`agegender.preprocess.resize_square` does, the integer part of the shrink averages k x k blocks and an
    area resize does the rest (a 1,600 px region of a 12 MP photo to a 200 px chip in 2.5 ms against 8.2 for one
    area resize by the whole factor, one timing beside a training; ``scripts/measure/large_faces.py`` measures
    the accuracy)."""
    source = chip_corners_in_image(matrix, size)
    height, width = image.shape[:2]
    x0, y0 = (max(0, math.floor(v) - 2) for v in source.min(axis=0))
    x1 = min(width, math.ceil(source[:, 0].max()) + 3)
    y1 = min(height, math.ceil(source[:, 1].max()) + 3)
    factor = int(1.0 / scale)  # >= 2: the integer part of the shrink is a box average, OpenCV's fast area path
    x1, y1 = _whole_blocks(x0, x1, width, factor), _whole_blocks(y0, y1, height, factor)
    if x1 - x0 < factor or y1 - y0 < factor:  # the chip lies (almost) entirely outside the image
        return image, matrix
    roi = image[y0:y1, x0:x1]
    new_size = (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale)))
    boxed = cv2.resize(roi, (roi.shape[1] // factor, roi.shape[0] // factor), interpolation=cv2.INTER_AREA)
    small = cv2.resize(boxed, new_size, interpolation=cv2.INTER_AREA)
    fx, fy = new_size[0] / roi.shape[1], new_size[1] / roi.shape[0]
    # small pixel (u, v) sits at image pixel ((u + 0.5) / fx - 0.5 + x0, (v + 0.5) / fy - 0.5 + y0)
    linear = matrix[:, :2] @ np.diag([1.0 / fx, 1.0 / fy])
    offset = matrix[:, :2] @ np.array([0.5 / fx - 0.5 + x0, 0.5 / fy - 0.5 + y0]) + matrix[:, 2]
    return small, np.column_stack([linear, offset])


def _whole_blocks(start: int, end: int, limit: int, factor: int) -> int:
    """``end`` moved so that ``[start, end)`` holds whole blocks of ``factor`` pixels: up where the image has
    the pixels, else down."""
    up = start + -(-(end - start) // factor) * factor
    return up if up <= limit else start + (end - start) // factor * factor
