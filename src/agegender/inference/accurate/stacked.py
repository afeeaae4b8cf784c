"""The accurate mode: the flagship stacked with a head on dlib's face-recognition descriptors.

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, CC0; trained to tell about 7,500
people apart, never on age or gender labels) describes an aligned face by 128 numbers. A small head trained by
our code on those numbers (``weights/descriptor_head.onnx``, made by ``scripts/build/descriptor_teacher.py
--export-head``) predicts the age distribution and P(female); its probabilities are averaged with the flagship's,
with per-output weights chosen on the validation split and stored in the head's file.

The dlib network is not shipped: its weights are found by :func:`locate_dlib_resnet` (an explicit path,
``$AGEGENDER_DLIB_RESNET``, an installed face_recognition_models package, the cache, else a download from
dlib-models checked by sha256) and converted once into an ONNX file in the cache
by :mod:`agegender.inference.accurate.dlib_format` (needs the ``onnx`` package: the ``accurate`` extra). It costs far
more than the flagship per face; the figures are in the model card.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from agegender.age_calibration import AgeCalibration, IntervalCalibration
from agegender.artifacts import RemoteFile, WeightsError, artifact, sha256_of, shipped_path
from agegender.inference.accurate.dlib_format import installed_model_path, read_dlib_resnet
from agegender.inference.accurate.onnx_graph import to_onnx
from agegender.inference.align import load_template
from agegender.inference.backends import open_session
from agegender.inference.onnx_model import ModelError, OnnxAgeGender
from agegender.oversample import average_outputs
from agegender.paths import default_cache_dir
from agegender.preprocess import CHIP_SIZE, resize_square

DLIB_RESNET = cast(RemoteFile, artifact("dlib-resnet"))

#: dlib's mean face (five landmarks, image-left eye first) in its unit template box, and the chip the
#: descriptor network expects: ``dlib.get_face_chip(img, shape, size=150, padding=0.25)``.
DLIB_MEAN_FACE = np.array([[0.2255, 0.2160], [0.7547, 0.2160], [0.4901, 0.5156],
                           [0.2541, 0.7802], [0.7261, 0.7802]], dtype=np.float32)
DESCRIPTOR_CHIP_SIZE, DESCRIPTOR_CHIP_PADDING = 150, 0.25


def chip_transform() -> np.ndarray:
    """2x3 similarity from our 200 px chip template onto dlib's 150 px descriptor chip."""
    dst = (DESCRIPTOR_CHIP_PADDING + DLIB_MEAN_FACE) / (1 + 2 * DESCRIPTOR_CHIP_PADDING) * DESCRIPTOR_CHIP_SIZE
    matrix, _ = cv2.estimateAffinePartial2D(load_template().astype(np.float32), dst.astype(np.float32),
                                            method=cv2.LMEDS)
    return matrix


def descriptor_chip(chip_bgr: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """Our aligned BGR chip (any size, resized to 200 px) as dlib's 150 px RGB descriptor chip."""
    if chip_bgr.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
        chip_bgr = resize_square(chip_bgr, CHIP_SIZE)
    chip = cv2.warpAffine(chip_bgr, chip_transform() if matrix is None else matrix,
                          (DESCRIPTOR_CHIP_SIZE, DESCRIPTOR_CHIP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(cv2.cvtColor(chip, cv2.COLOR_BGR2RGB))


def stack_weights(age: float, gender: float) -> dict[str, list[float]]:
    """``average_outputs`` weights for [our outputs, the head's]: the head weighs ``age`` and ``gender``."""
    return {"age_dist_logits": [1 - age, age], "gender_logit": [1 - gender, gender]}


def locate_dlib_resnet(weights: str | os.PathLike | None = None) -> tuple[Path, str]:
    """dlib's ``.dat`` and its sha256: ``weights`` or ``$AGEGENDER_DLIB_RESNET`` as given, else the copy in an
    installed face_recognition_models package (the ``teacher`` extra) when it is the pinned file, else the
    verified cache or a download (:data:`DLIB_RESNET`). Each file is hashed once."""
    given = weights is not None or bool(os.environ.get(DLIB_RESNET.env_var))
    if not given:
        installed = installed_model_path()
        if installed is not None and sha256_of(installed) == DLIB_RESNET.sha256:
            return installed, DLIB_RESNET.sha256
    path = DLIB_RESNET.locate(weights)
    return path, sha256_of(path) if given else DLIB_RESNET.sha256  # the cache copy was verified by locate


def _converted(digest: str) -> Path:
    """Where the ONNX conversion of the ``.dat`` whose sha256 is ``digest`` is cached."""
    return default_cache_dir() / f"dlib_face_recognition_resnet_{digest[:16]}.onnx"


def descriptor_network(weights: str | os.PathLike | None = None) -> Path:
    """The dlib network as ONNX: converted once from the located ``.dat`` into the cache, keyed by its sha256.
    Where no ``.dat`` is named, the pinned one's conversion in the cache serves without the ``.dat`` (offline,
    with the download's copy gone)."""
    if weights is None and not os.environ.get(DLIB_RESNET.env_var) and _converted(DLIB_RESNET.sha256).is_file():
        return _converted(DLIB_RESNET.sha256)
    source, digest = locate_dlib_resnet(weights)
    target = _converted(digest)
    if target.is_file():
        return target
    try:
        network = read_dlib_resnet(source)
    except (ValueError, OSError) as err:
        raise WeightsError(f"cannot convert {source} into ONNX: {err}. {DLIB_RESNET.fix_hint()}") from err
    try:  # the weights were read: a failure now is the cache's, not theirs
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".{os.getpid()}.partial")
        to_onnx(network, partial)
        partial.replace(target)
    except OSError as err:
        raise WeightsError(f"cannot write the converted dlib network into the cache {target.parent}: {err} (set "
                           "AGEGENDER_CACHE to a folder that can be written)") from err
    return target


class StackedAgeGender(OnnxAgeGender):
    """The accurate mode: an ``agegender export`` model (default: the shipped float32 flagship, with which the
    head's weights were chosen and its metrics measured) whose probabilities are averaged with those of a head
    on dlib face descriptors. Used like :class:`OnnxAgeGender`; ``flip`` applies to the flagship only."""

    FUSE_DECODING = False  # the head's outputs join the network's before decoding

    def __init__(self, path: str | Path | None = None, threads: int | None = None,
                 descriptor_weights: str | os.PathLike | None = None, head: str | Path | None = None,
                 backend: str = "auto", device: str | None = None) -> None:
        super().__init__("flagship" if path is None else path, threads, backend, device)
        self.head_path = Path(head) if head else shipped_path("descriptor-head")
        self.head = open_session(self.head_path, backend, device, threads)
        meta = self.head.metadata
        if "stack_weights" not in meta:
            raise ModelError(f"{self.head_path} is not a descriptor head: export it with "
                             "`python scripts/build/descriptor_teacher.py ... --export-head`")
        self.weights: dict[str, float] = json.loads(meta["stack_weights"])
        self.metrics = json.loads(meta.get("metrics", "{}"))
        # the stack's own correction and interval calibration, if its head carries them: the flagship's were
        # fitted to the flagship alone (an interval calibration in the head applies after the head's correction)
        self.age_calibration = AgeCalibration.from_metadata(meta)
        self.interval_calibration = (self.age_calibration.interval if self.age_calibration
                                     else IntervalCalibration.stored(meta))
        self.network_path = descriptor_network(descriptor_weights)
        self.network = open_session(self.network_path, backend, device, threads)
        self._matrix = chip_transform()
        # rows and results say which mode made them (the network's name alone reads as the plain flagship's)
        self.version_label = f"{self.version_label} + {self.head_path.name} (accurate mode)"

    def descriptors(self, chips_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """dlib's 128 numbers for each aligned BGR chip."""
        pixels = np.stack([descriptor_chip(c, self._matrix) for c in chips_bgr]).transpose(0, 3, 1, 2)
        return self.network.run({"image": pixels.astype(np.float32)})["descriptor"]

    def outputs(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> dict[str, np.ndarray]:
        ours = super().outputs(chips_bgr, flip)
        head = self.head.run({"descriptor": self.descriptors(chips_bgr)})
        return average_outputs([ours, head], stack_weights(self.weights["age"], self.weights["gender"]))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "metrics": self.metrics, "descriptor_head": self.head_path.name,
                "stack_weights": self.weights}
