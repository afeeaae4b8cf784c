"""Turning a face chip into network input: one definition for training, export and inference."""

from __future__ import annotations

import cv2
import numpy as np

from agegender.model_config import ModelConfig


def chip_to_rgb(chip_bgr: np.ndarray, size: int, face_crop: float = 1.0) -> np.ndarray:
    """Center-crop ``face_crop`` of a BGR chip's side, resize to ``size`` x ``size``, return RGB uint8."""
    h, w = chip_bgr.shape[:2]
    side = min(h, w) * face_crop
    y0, x0 = (h - side) / 2, (w - side) / 2
    crop = chip_bgr[int(round(y0)):int(round(y0 + side)), int(round(x0)):int(round(x0 + side))]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)


def center_crop(batch: np.ndarray, size: int) -> np.ndarray:
    """Center ``size`` x ``size`` window of a batch N x H x W x C."""
    h, w = batch.shape[1:3]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return batch[:, y0:y0 + size, x0:x0 + size]


def chips_to_input(chips_bgr: list[np.ndarray], config: ModelConfig) -> np.ndarray:
    """Float32 N x 3 x S x S RGB batch on a 0..255 scale, as exported models take it (they normalise inside)."""
    rgb = np.stack([chip_to_rgb(c, config.load_size, config.face_crop) for c in chips_bgr])
    return np.ascontiguousarray(center_crop(rgb, config.input_size).transpose(0, 3, 1, 2), dtype=np.float32)
