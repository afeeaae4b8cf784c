"""Batch augmentation on uint8 images: one affine warp per image plus photometric jitter.

Covers seed 003's Keras-style augmentation (flip, rotation, zoom, translation, shear, brightness/contrast) and
seed 000's random ``input_size`` crops of the ``resize`` image with mirroring (``random_crop``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """The ``data.augment`` section of a training config; every range is "either way" around no change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flip: bool = False
    random_crop: bool = False  # Levi-Hassner: a random window instead of the center one
    rotation: float = Field(default=0.0, ge=0, le=180)  # max degrees either way
    zoom: float = Field(default=0.0, ge=0, lt=1)  # max relative scale change either way (1 could flip the scale)
    translate: float = Field(default=0.0, ge=0, le=1)  # max shift as a fraction of the side
    shear: float = Field(default=0.0, ge=0, lt=90)  # max degrees either way
    brightness: float = Field(default=0.0, ge=0, le=1)  # max additive change as a fraction of 255
    contrast: float = Field(default=0.0, ge=0, le=1)  # max relative change of contrast (above 1 could invert it)

    @property
    def geometric(self) -> bool:
        return any((self.rotation, self.zoom, self.translate, self.shear))


def _affine(rng: np.random.Generator, cfg: AugmentConfig, src: int, out: int, offset: tuple[float, float],
            flip: bool) -> np.ndarray:
    """2x3 matrix mapping source pixels to output pixels (a random similarity + shear about the center)."""
    angle = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
    scale = 1.0 + rng.uniform(-cfg.zoom, cfg.zoom)
    shear = math.tan(math.radians(rng.uniform(-cfg.shear, cfg.shear)))
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * out
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    lin = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    if flip:
        lin = lin @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    c_src = np.array([src / 2 + offset[0], src / 2 + offset[1]]) - 0.5
    c_out = np.array([out / 2, out / 2]) - 0.5
    t = c_out + np.array([tx, ty]) - lin @ c_src
    return np.hstack([lin, t[:, None]])


def augment_batch(images: np.ndarray, out_size: int, cfg: AugmentConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Augmented float32 batch N x out x out x 3 (0..255) from uint8 N x S x S x 3, S >= out_size."""
    n, src = len(images), images.shape[1]
    out = np.empty((n, out_size, out_size, 3), dtype=np.float32)
    margin = src - out_size
    for i in range(n):
        flip = cfg.flip and rng.random() < 0.5
        if cfg.random_crop and margin > 0:
            dy, dx = rng.integers(0, margin + 1, size=2)
        else:
            dy = dx = margin // 2
        if cfg.geometric:
            offset = (dx - margin / 2, dy - margin / 2)
            m = _affine(rng, cfg, src, out_size, offset, flip)
            out[i] = cv2.warpAffine(images[i], m, (out_size, out_size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT101)
        else:
            window = images[i, dy:dy + out_size, dx:dx + out_size]
            out[i] = window[:, ::-1] if flip else window
    if cfg.brightness or cfg.contrast:
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast, size=(n, 1, 1, 1))
        b = rng.uniform(-cfg.brightness, cfg.brightness, size=(n, 1, 1, 1)) * 255.0
        out = np.clip((out - mean) * c + mean + b, 0.0, 255.0, out=out)
    return out
