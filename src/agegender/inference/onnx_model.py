"""An exported model under a runtime (:mod:`agegender.inference.backends`): face chips in, decoded age and gender
out. No torch needed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agegender.age_calibration import AgeCalibration, IntervalCalibration
from agegender.artifacts import DEFAULT_MODEL, SHIPPED_MODELS, WeightsError, shipped_path
from agegender.inference.backends import META_PREFIX, ModelError, open_session
from agegender.model_config import ModelConfig
from agegender.outputs import Decoded, decode
from agegender.oversample import average_crops, with_mirrors
from agegender.preprocess import chips_to_input

__all__ = ["META_PREFIX", "ModelError", "OnnxAgeGender", "model_path", "shipped_model_path"]


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model that ships inside the package (:data:`agegender.artifacts.SHIPPED_MODELS`)."""
    if name not in SHIPPED_MODELS:
        raise ModelError(f"no shipped model {name!r}: choose one of {', '.join(SHIPPED_MODELS)}, or give a path")
    try:
        return shipped_path(name)
    except WeightsError as err:
        raise ModelError(f"{err}, or pass a model path") from err


def model_path(model: str | Path | None) -> Path:
    """A model given as a shipped name (:data:`agegender.artifacts.SHIPPED_MODELS`), an existing file, or
    ``None`` for the default.

    >>> model_path(None).name, model_path("flagship").name
    ('flagship_int8.onnx', 'flagship.onnx')
    """
    if model is None:
        return shipped_model_path()
    if isinstance(model, str) and model in SHIPPED_MODELS:
        return shipped_model_path(model)
    if not Path(model).is_file():
        problem = f"{model} is a folder, not a model file" if Path(model).is_dir() else f"model file not found: {model}"
        raise ModelError(f"{problem} (give an ONNX file or a shipped model: {', '.join(SHIPPED_MODELS)})")
    return Path(model)


def _merge_mirrors(raw: Mapping[str, np.ndarray], flip: bool) -> dict[str, np.ndarray]:
    """Outputs of a :func:`~agegender.oversample.with_mirrors` batch averaged per face when ``flip``; as they are
    otherwise."""
    return average_crops(raw, 2) if flip else dict(raw)


class OnnxAgeGender:
    """Runs an ``agegender export`` file. ``predict(chips)`` takes aligned BGR face chips."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None, backend: str = "auto",
                 device: str | None = None) -> None:
        """``path``: an ONNX file, a shipped model's name, or ``None`` for the default (:func:`model_path`);
        ``backend`` and ``device`` as :func:`~agegender.inference.backends.open_session` takes them."""
        self.path = model_path(path)
        self.session = open_session(self.path, backend, device, threads)
        self.metadata: dict[str, Any] = dict(self.session.metadata)
        if "config" not in self.metadata:
            raise ModelError(f"{self.path} has no agegender metadata: export it with `agegender export`")
        self.config = ModelConfig.from_dict(json.loads(self.metadata["config"]))
        self.metrics: dict[str, Any] = json.loads(self.metadata.get("metrics", "{}"))
        #: The age correction ``agegender calibrate`` stored in the file (None: ages as the network decodes them);
        #: it carries the interval calibration fitted after it.
        self.age_calibration = AgeCalibration.from_metadata(self.metadata)
        #: The interval calibration ``agegender calibrate`` stored in the file, applied after the age correction
        #: (None: the interval as the network decodes it).
        self.interval_calibration = (self.age_calibration.interval if self.age_calibration
                                     else IntervalCalibration.stored(self.metadata))
        self.output_names = self.session.output_names
        #: The file and the version that exported it, as tabular outputs record them.
        self.version_label = f"{self.path.name} (agegender {self.metadata.get('version', 'unknown')})"

    @property
    def input_side(self) -> int:
        """The side at which the network reads a face chip (its load size): how finely a face must be decoded."""
        return self.config.load_size

    def raw(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for a preprocessed batch (N x 3 x S x S float32 RGB 0..255)."""
        return self.session.run({self.session.input_name: pixels})

    def prepare(self, faces: int, flip: bool = True) -> None:
        """Get the runtime ready for batches of ``faces`` faces (OpenVINO compiles for that input shape now rather
        than after its first thousand calls: :meth:`Session.prepare <agegender.inference.backends.Session.prepare>`)."""
        side = self.config.input_size
        self.session.prepare((faces * (2 if flip else 1), 3, side, side))

    def network_input(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> np.ndarray:
        """The batch the network runs on for aligned BGR chips: their pixels, each followed by its mirror when
        ``flip``."""
        if not len(chips_bgr):
            raise ValueError("no face chips given")
        pixels = chips_to_input(list(chips_bgr), self.config)
        return with_mirrors(pixels) if flip else pixels

    def outputs(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> dict[str, np.ndarray]:
        """Raw outputs for aligned BGR chips; ``flip`` averages each chip with its mirror."""
        return _merge_mirrors(self.raw(self.network_input(chips_bgr, flip)), flip)

    def forward(self, pixels: np.ndarray, flip: bool = True) -> dict[str, np.ndarray]:
        """Raw outputs for a preprocessed batch (as :meth:`raw` takes it); ``flip`` averages each face with its
        mirror."""
        return _merge_mirrors(self.raw(with_mirrors(pixels) if flip else pixels), flip)

    def finish(self, raw: Mapping[str, np.ndarray], flip: bool = True) -> Decoded:
        """Decoded, calibrated predictions from the network's outputs for a :meth:`network_input` batch: the last
        of the three stages :meth:`predict` runs (a subclass that adds to :meth:`outputs` adds to them)."""
        return self.calibrate(decode(_merge_mirrors(raw, flip)))

    def predict(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> Decoded:
        """Decoded predictions for aligned BGR chips (ages corrected by the file's age calibration, if any, and
        then the interval by its interval calibration, if any); ``flip`` averages each chip with its mirror."""
        return self.calibrate(decode(self.outputs(chips_bgr, flip)))

    def calibrate(self, decoded: Decoded) -> Decoded:
        """The corrections stored in the file, applied to decoded outputs: the age calibration, then the interval
        calibration (each only if the file has one)."""
        if self.age_calibration:
            return self.age_calibration.apply(decoded)  # the interval calibration it carries included
        return self.interval_calibration.apply(decoded) if self.interval_calibration else decoded

    def describe(self) -> dict[str, Any]:
        cal, interval = self.age_calibration, self.interval_calibration
        return {"path": str(self.path), "backend": self.session.backend, "device": self.session.device,
                "float_precision": self.session.float_precision, "config": self.config.to_dict(),
                "metrics": self.metrics,
                "version": self.metadata.get("version"), "quantization": self.metadata.get("quantization"),
                "age_calibration": {"knee": cal.knee, "slope": cal.slope} if cal else None,
                "age_interval_calibration": interval.to_dict() if interval else None}
