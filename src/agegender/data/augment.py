"""Batch augmentation on uint8 images: one affine warp per image plus photometric jitter.

Covers seed 003's Keras-style augmentation (flip, rotation, zoom, translation, shear, brightness/contrast) and
seed 000's random ``input_size`` crops of the ``resize`` image with mirroring (``random_crop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Draws:
    """The random choices of one augmented batch of ``n`` images, drawn by :func:`draw` and applied by
    :func:`augment_batch` here or by :class:`~agegender.training.batches.DeviceBatches` on a GPU."""

    flips: np.ndarray  # (n,) bool: mirrored
    offsets: np.ndarray  # (n, 2) int: (dx, dy) of the crop window in the source
    matrices: np.ndarray | None  # (n, 2, 3): source pixels -> output pixels, when the config is geometric
    contrast: np.ndarray | None  # (n,) factors about each image's mean, when there is photometric jitter
    brightness: np.ndarray | None  # (n,) additive, 0..255 scale


def draw(n: int, src: int, out_size: int, cfg: AugmentConfig, rng: np.random.Generator) -> Draws:
    """The random choices for ``n`` images of side ``src`` augmented to ``out_size`` (one stream of ``rng``
    draws, in one order, whoever applies them)."""
    margin = src - out_size
    flips = np.zeros(n, dtype=bool)
    offsets = np.full((n, 2), margin // 2, dtype=np.int64)
    matrices = np.empty((n, 2, 3)) if cfg.geometric else None
    for i in range(n):
        flips[i] = cfg.flip and rng.random() < 0.5
        if cfg.random_crop and margin > 0:
            dy, dx = rng.integers(0, margin + 1, size=2)
            offsets[i] = dx, dy
        if matrices is not None:
            dx, dy = offsets[i]
            matrices[i] = _affine(rng, cfg, src, out_size, (dx - margin / 2, dy - margin / 2), bool(flips[i]))
    contrast = brightness = None
    if cfg.brightness or cfg.contrast:
        contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast, size=n)
        brightness = rng.uniform(-cfg.brightness, cfg.brightness, size=n) * 255.0
    return Draws(flips, offsets, matrices, contrast, brightness)


def augment_batch(images: np.ndarray, out_size: int, cfg: AugmentConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Augmented float32 batch N x out x out x 3 (0..255) from uint8 N x S x S x 3, S >= out_size."""
    n = len(images)
    d = draw(n, images.shape[1], out_size, cfg, rng)
    out = np.empty((n, out_size, out_size, 3), dtype=np.float32)
    for i in range(n):
        if d.matrices is not None:
            out[i] = cv2.warpAffine(images[i], d.matrices[i], (out_size, out_size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT101)
        else:
            dx, dy = d.offsets[i]
            window = images[i, dy:dy + out_size, dx:dx + out_size]
            out[i] = window[:, ::-1] if d.flips[i] else window
    if d.contrast is not None and d.brightness is not None:
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        out = np.clip((out - mean) * d.contrast.reshape(-1, 1, 1, 1) + mean + d.brightness.reshape(-1, 1, 1, 1),
                      0.0, 255.0, out=out)
    return out
