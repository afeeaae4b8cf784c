"""Test-time oversampling (Levi & Hassner 2015): score several crops of each face and average the outputs.

Images are uint8 batches ``N x H x W x C`` resized to the model's ``load_size``; crops are ``input_size``
squares. ``ten_crops`` returns crops image-major: rows ``10*i .. 10*i + 9`` belong to image ``i``, in the
order of ``CROP_ORDER`` (four corners, center) followed by the horizontal mirrors of the same five.
``center_crop`` is ``agegender.preprocess.center_crop``, re-exported: one definition of the center view.

Averaging works on the output contract of ``agegender.outputs``: class probabilities are averaged, not logits,
and turned back into logits, so the averaged outputs still go through ``decode``.

>>> import numpy as np
>>> crops = ten_crops(np.zeros((2, 256, 256, 3), np.uint8), 227)
>>> crops.shape
(20, 227, 227, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np

from agegender.outputs import ACTIVATIONS, sigmoid, softmax
from agegender.preprocess import center_crop

CROP_ORDER = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
TEN_CROP_ORDER = CROP_ORDER + tuple(f"{name}_mirrored" for name in CROP_ORDER)
TTA_MODES = ("none", "flip", "ten_crop")
#: How each test-time augmentation mode is described in reports.
TTA_TEXT = {
    "none": "center crop",
    "flip": "center crop and its mirror, averaged",
    "ten_crop": "10 crops (4 corners and center, and their mirrors), averaged (Levi & Hassner)",
}

_EPS = np.finfo(np.float64).eps


def _corners(batch: np.ndarray, crop: int) -> list[np.ndarray]:
    """The four corner crops, in ``CROP_ORDER``."""
    if batch.ndim != 4:
        raise ValueError(f"expected a batch N x H x W x C, got shape {batch.shape}")
    h, w = batch.shape[1:3]
    if not 0 < crop <= min(h, w):
        raise ValueError(f"crop {crop} does not fit images of {h} x {w}")
    return [batch[:, top : top + crop, left : left + crop] for top in (0, h - crop) for left in (0, w - crop)]


def ten_crops(batch: np.ndarray, crop: int) -> np.ndarray:
    """Four corner crops and the center crop of every image, then their mirrors: ``(N*10) x crop x crop x C``,
    image-major in ``TEN_CROP_ORDER``. The center crop is ``preprocess.center_crop``'s (offset
    ``(H - crop) // 2``), the single view every other evaluation uses.

    >>> img = np.arange(9, dtype=np.uint8).reshape(1, 3, 3, 1)
    >>> ten_crops(img, 2)[:, 0, 0, 0].tolist()  # top-left pixel of each crop
    [0, 1, 3, 4, 0, 1, 2, 4, 5, 1]
    """
    five = np.stack([*_corners(batch, crop), center_crop(batch, crop)], axis=1)
    ten = np.concatenate([five, five[:, :, :, ::-1]], axis=1)
    return np.ascontiguousarray(ten.reshape(-1, crop, crop, batch.shape[3]))


def with_mirrors(pixels: np.ndarray) -> np.ndarray:
    """Each image of an ``N x C x H x W`` batch followed by its horizontal mirror: ``2N`` images, image-major, as
    :func:`average_crops` takes them with ``n_crops=2``.

    >>> with_mirrors(np.arange(4).reshape(2, 1, 1, 2))[:, 0, 0].tolist()
    [[0, 1], [1, 0], [2, 3], [3, 2]]
    """
    return np.stack([pixels, pixels[..., ::-1]], axis=1).reshape(-1, *pixels.shape[1:])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.minimum(np.maximum(p, _EPS), 1 - _EPS)  # np.clip's, at less cost per call
    return np.log(p) - np.log1p(-p)


def average_crops(outputs: Mapping[str, np.ndarray], n_crops: int,
                  weights: Mapping[str, Sequence[float]] | None = None) -> dict[str, np.ndarray]:
    """Average model outputs over the ``n_crops`` consecutive rows of each image (image-major, as
    ``ten_crops``) and return outputs for ``N`` images that still follow the output contract.

    Softmax heads: mean of probabilities, returned as their log; sigmoid heads: mean of probabilities,
    returned as their logit; ``age``: plain mean. ``weights`` gives an output's ``n_crops`` weights (a
    weighted mean; equal weights for outputs it does not name). Keys outside the contract are dropped, as
    ``decode`` drops them.

    >>> out = average_crops({"gender_logit": np.array([0.0, np.log(3.0)]), "age": np.array([20.0, 30.0])}, 2)
    >>> sigmoid(out["gender_logit"]).round(3).tolist(), out["age"].tolist()  # mean of P = 0.5 and 0.75
    ([0.625], [25.0])
    """
    averaged = {}
    for key, value in outputs.items():
        if key not in ACTIVATIONS:
            continue
        value = np.asarray(value, dtype=np.float64)
        if len(value) % n_crops:
            raise ValueError(f"{key}: {len(value)} rows is not a multiple of {n_crops} crops")
        grouped = value.reshape(len(value) // n_crops, n_crops, *value.shape[1:])
        w = (weights or {}).get(key)
        if w is not None and len(w) != n_crops:
            raise ValueError(f"{key}: {len(w)} weights for {n_crops} crops or models")
        rule = ACTIVATIONS[key]
        mean = _mean if w is None else partial(np.average, axis=1, weights=w)
        if rule == "softmax":
            averaged[key] = np.log(np.maximum(mean(softmax(grouped)), np.finfo(np.float64).tiny))
        elif rule == "sigmoid":
            averaged[key] = _logit(mean(sigmoid(grouped)))
        else:
            averaged[key] = mean(grouped)
    return averaged


def _mean(grouped: np.ndarray) -> np.ndarray:
    """The unweighted mean over the crops axis (``np.average``'s result, at a fraction of its cost for a few faces)."""
    return np.add.reduce(grouped, axis=1) / grouped.shape[1]


def average_outputs(outputs: Sequence[Mapping[str, np.ndarray]],
                    weights: Mapping[str, Sequence[float]] | None = None) -> dict[str, np.ndarray]:
    """Average several sets of outputs for the same N faces (views of them, or models), as ``average_crops``
    does, over the keys they all hold; ``weights`` gives an output's weight for each set (default equal).

    >>> out = average_outputs([{"age": np.array([20.0])}, {"age": np.array([30.0])}, {"age": np.array([40.0])}])
    >>> out["age"].tolist()
    [30.0]
    >>> a = {"gender_logit": np.array([0.0])}, {"gender_logit": np.array([np.log(9.0)])}  # P = 0.5 and 0.9
    >>> sigmoid(average_outputs(a, {"gender_logit": [0.3, 0.7]})["gender_logit"]).round(2).tolist()
    [0.78]
    """
    keys = set.intersection(*(set(o) for o in outputs))
    stacked = {key: np.stack([np.asarray(o[key]) for o in outputs], axis=1) for key in keys}
    return average_crops({key: v.reshape(-1, *v.shape[2:]) for key, v in stacked.items()}, len(outputs), weights)


def flip_average(outputs_plain: Mapping[str, np.ndarray], outputs_flipped: Mapping[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """Average the outputs of images and their mirrors: the 2-view case of ``average_outputs``.

    >>> a = {"age_group_logits": np.log([[0.2, 0.8]])}
    >>> b = {"age_group_logits": np.log([[0.6, 0.4]])}
    >>> softmax(flip_average(a, b)["age_group_logits"]).round(3).tolist()
    [[0.4, 0.6]]
    """
    return average_outputs([outputs_plain, outputs_flipped])


__all__ = ["CROP_ORDER", "TEN_CROP_ORDER", "average_crops", "average_outputs", "center_crop",
           "flip_average", "ten_crops", "with_mirrors"]
