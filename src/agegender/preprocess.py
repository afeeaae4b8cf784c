"""Turning a face chip into network input: one definition for training, export and inference."""

from __future__ import annotations

import cv2
import numpy as np

from agegender.model_config import RESAMPLINGS, ModelConfig

#: Side of a face chip: UTKFace's 200 x 200 chips, the frame every face is aligned to (its landmark template is
#: expressed in it) and the models were trained on.
CHIP_SIZE = 200
def resize_square(image: np.ndarray, size: int, *, resampling: str = "area",
                  as_float32: bool = False) -> np.ndarray:
    """A square uint8 image resized to ``size`` x ``size``. Shrinking by 2x or more first averages k x k blocks
    (OpenCV's fast integer-factor area path, after trimming at most k - 1 border pixels), then goes the rest of the
    way by ``resampling`` (:data:`~agegender.model_config.RESAMPLINGS`): ``"area"`` averages (0.1 ms for a 200 px
    chip to 72 px, against 0.2 ms for one non-integer area resize), ``"linear"`` interpolates (about half that).
    Enlarging interpolates either way. ValueError for another resampling.

    ``as_float32`` gives the same values as float32 (what a network takes): an area step then runs in float32 and
    is rounded, which OpenCV does faster than in uint8 (48 against 66 us for 100 -> 72 px, one timing on a 2-core
    EPYC beside a training), with no conversion after it.

    >>> resize_square(np.full((200, 200, 3), 7, np.uint8), 72).shape
    (72, 72, 3)
    >>> resize_square(np.full((200, 200, 3), 7, np.uint8), 72, resampling="linear", as_float32=True).dtype
    dtype('float32')
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling must be one of {', '.join(RESAMPLINGS)}, got {resampling!r}")
    side = image.shape[0]
    factor = side // size
    if factor >= 2:
        trim = side % factor
        start = trim // 2
        image = image[start:start + side - trim, start:start + side - trim]
        image = cv2.resize(image, ((side - trim) // factor,) * 2, interpolation=cv2.INTER_AREA)
    if image.shape[0] > size and resampling == "area":
        if as_float32:
            return np.rint(cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA))
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32) if as_float32 else resized


def detail_side(size: int, resampling: str, side: int = CHIP_SIZE) -> int:
    """How many pixels across a ``side`` px image :func:`resize_square` reads detail from when it makes it
    ``size`` px: ``size`` by area averaging (each output pixel averages its own patch); by linear interpolation the
    side after its whole k x k block average, whose pixels it samples between (finer detail shows through as
    aliasing). So a face must be decoded at least this finely for its chip to read as it does from a sharp image.

    >>> detail_side(72, "area"), detail_side(72, "linear"), detail_side(224, "linear")
    (72, 100, 224)
    """
    if resampling == "area" or side <= size:
        return size
    return side // (side // size)


def chip_to_bgr(chip_bgr: np.ndarray, size: int, face_crop: float = 1.0, *, resampling: str = "area",
                as_float32: bool = False) -> np.ndarray:
    """Center-crop ``face_crop`` of a BGR chip's side and resize it to ``size`` x ``size`` by ``resampling``
    (float32 values with ``as_float32``, as :func:`resize_square` gives them)."""
    h, w = chip_bgr.shape[:2]
    side = min(h, w) * face_crop
    y0, x0 = (h - side) / 2, (w - side) / 2
    crop = chip_bgr[int(round(y0)):int(round(y0 + side)), int(round(x0)):int(round(x0 + side))]
    return resize_square(crop, size, resampling=resampling, as_float32=as_float32)


def chip_to_rgb(chip_bgr: np.ndarray, size: int, face_crop: float = 1.0, resampling: str = "area") -> np.ndarray:
    """:func:`chip_to_bgr` as RGB uint8 (the layout of the training caches)."""
    return cv2.cvtColor(chip_to_bgr(chip_bgr, size, face_crop, resampling=resampling), cv2.COLOR_BGR2RGB)


def center_crop(batch: np.ndarray, size: int) -> np.ndarray:
    """Center ``size`` x ``size`` window of a batch N x H x W x C."""
    h, w = batch.shape[1:3]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return batch[:, y0:y0 + size, x0:x0 + size]


def normalization(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (mean, std) the network's input is normalised by, ``(pixel - mean) / std`` on RGB 0..255:
    the one definition training batches and exported graphs use.

    >>> normalization(ModelConfig("m", 64, ("age",)))[0].tolist()
    [127.5, 127.5, 127.5]
    """
    return np.asarray(config.mean, dtype=np.float32), np.asarray(config.std, dtype=np.float32)


def chips_to_input(chips_bgr: list[np.ndarray], config: ModelConfig) -> np.ndarray:
    """Float32 N x 3 x S x S RGB batch on a 0..255 scale, as exported models take it (they normalise inside).
    An area step resizes in float32 (faster, see :func:`resize_square`); an interpolating one in uint8, the batch
    converted in the copy that lays it out."""
    area = config.resampling == "area"
    bgr = np.stack([chip_to_bgr(c, config.load_size, config.face_crop, resampling=config.resampling,
                                as_float32=area) for c in chips_bgr])
    return np.ascontiguousarray(center_crop(bgr, config.input_size)[..., ::-1].transpose(0, 3, 1, 2),
                                dtype=np.float32)
