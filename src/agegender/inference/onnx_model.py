"""An exported model under ONNX Runtime: face chips in, decoded age and gender out. No torch needed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agegender.age_calibration import AgeCalibration
from agegender.artifacts import DEFAULT_MODEL, SHIPPED_MODELS, WeightsError, shipped_path
from agegender.model_config import ModelConfig
from agegender.outputs import Decoded, decode
from agegender.preprocess import chips_to_input

#: Prefix of every metadata entry agegender writes into an ONNX file (read here, written by ``agegender.export``).
META_PREFIX = "agegender."


class ModelError(RuntimeError):
    """The model file is missing or is not an agegender export."""


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
        raise ModelError(f"model file not found: {model} (give an ONNX file or a shipped model: "
                         f"{', '.join(SHIPPED_MODELS)})")
    return Path(model)


def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` caps the intra-op threads. Raises ModelError if it cannot load.

    Its worker threads sleep when idle instead of spinning: a spinning pool keeps the cores busy after each run
    and slows whatever runs next on them (YuNet's detection, dlib's network, the next session). On the 2-core
    development machine a 7-face photo went from 16.8 to 11.3 ms end to end, for 0.3 ms more per face when chips
    alone are predicted one at a time (``python scripts/measure/ort_spinning.py --accurate`` measures the trade)."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{path} is not a loadable ONNX model: {err}") from err


def agegender_metadata(session: ort.InferenceSession) -> dict[str, str]:
    """The ``agegender.`` entries of a session's model metadata, keys without the prefix."""
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}


class OnnxAgeGender:
    """Runs an ``agegender export`` file. ``predict(chips)`` takes aligned BGR face chips."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None) -> None:
        """``path``: an ONNX file, a shipped model's name, or ``None`` for the default (:func:`model_path`)."""
        self.path = model_path(path)
        self.session = ort_session(self.path, threads)
        self.metadata: dict[str, Any] = agegender_metadata(self.session)
        if "config" not in self.metadata:
            raise ModelError(f"{self.path} has no agegender metadata: export it with `agegender export`")
        self.config = ModelConfig.from_dict(json.loads(self.metadata["config"]))
        self.metrics: dict[str, Any] = json.loads(self.metadata.get("metrics", "{}"))
        #: The age correction ``agegender calibrate`` stored in the file (None: ages as the network decodes them).
        self.age_calibration = AgeCalibration.from_metadata(self.metadata)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def raw(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for a preprocessed batch (N x 3 x S x S float32 RGB 0..255)."""
        values = self.session.run(self.output_names, {self.input_name: pixels})
        return dict(zip(self.output_names, values, strict=True))

    def outputs(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> dict[str, np.ndarray]:
        """Raw outputs for aligned BGR chips; ``flip`` averages each chip with its mirror."""
        if not len(chips_bgr):
            raise ValueError("no face chips given")
        pixels = chips_to_input(list(chips_bgr), self.config)
        if not flip:
            return self.raw(pixels)
        from agegender.oversample import flip_average

        both = self.raw(np.concatenate([pixels, pixels[..., ::-1]]))
        n = len(pixels)
        return flip_average({k: v[:n] for k, v in both.items()}, {k: v[n:] for k, v in both.items()})

    def predict(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> Decoded:
        """Decoded predictions for aligned BGR chips (ages corrected by the file's age calibration, if any);
        ``flip`` averages each chip with its mirror."""
        decoded = decode(self.outputs(chips_bgr, flip))
        return self.age_calibration.apply(decoded) if self.age_calibration else decoded

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "config": self.config.to_dict(), "metrics": self.metrics,
                "version": self.metadata.get("version"), "quantization": self.metadata.get("quantization"),
                "age_calibration": dataclasses.asdict(self.age_calibration) if self.age_calibration else None}
