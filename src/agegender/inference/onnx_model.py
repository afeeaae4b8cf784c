"""An exported model under a runtime (:mod:`agegender.inference.backends`): face chips in, decoded age and gender
out. No torch needed."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from agegender.age_calibration import AgeCalibration, IntervalCalibration
from agegender.artifacts import DEFAULT_MODEL, SHIPPED_MODELS, WeightsError, shipped_path
from agegender.inference.backends import META_PREFIX, ModelError, Session, open_session
from agegender.inference.fused import fused_decoded, fused_graph, why_not_fused
from agegender.model_config import ModelConfig
from agegender.outputs import Decoded, decode
from agegender.oversample import average_crops, with_mirrors
from agegender.preprocess import chips_to_input, detail_side

log = logging.getLogger(__name__)

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
    """Runs an ``agegender export`` file. ``predict(chips)`` takes aligned BGR face chips.

    ``predict`` runs the network with its decoding and calibrations fused into one graph
    (:mod:`agegender.inference.fused`) where the file's outputs and calibrations allow it (``fused_why_not`` says
    why not otherwise) and, on OpenVINO, for a batch size the network is compiled for (:meth:`prepare`, or a
    thousand calls of it); the network, then NumPy elsewhere. ``outputs``, ``raw``, ``forward`` and ``finish``
    always give the network's own outputs."""

    #: Whether ``predict`` may fuse the decoding into the graph: False in a subclass whose ``outputs`` adds to the
    #: network's.
    FUSE_DECODING = True

    def __init__(self, path: str | Path | None = None, threads: int | None = None, backend: str = "auto",
                 device: str | None = None) -> None:
        """``path``: an ONNX file, a shipped model's name, or ``None`` for the default (:func:`model_path`);
        ``backend`` and ``device`` as :func:`~agegender.inference.backends.open_session` takes them."""
        self.path = model_path(path)
        self.threads = threads
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
        self._fused: dict[bool, Session] = {}  # by flip, made when first prepared or used
        self._fusing = threading.Lock()
        self._fusion_error: str | None = None  # why the fused graph could not be made, if it could not

    @property
    def fused_why_not(self) -> str | None:
        """Why ``predict`` does not fuse the decoding into the graph (None: it does)."""
        return self._fusion_error or self._unfusable

    @cached_property
    def _unfusable(self) -> str | None:
        """What in the model itself keeps its decoding out of the graph (it does not change: read once, off
        ``predict``'s path)."""
        if not self.FUSE_DECODING:
            return f"{type(self).__name__} adds to the network's outputs"
        if self.session.float_precision != "f32" and not self.metadata.get("quantization"):
            # OpenVINO would hand the last float layer's outputs on in bf16: ages 0.01-0.04 years off on a Xeon
            return f"{self.session.backend} computes this float32 file in {self.session.float_precision}"
        return why_not_fused(self.output_names, self.interval_calibration)

    def _fused_session(self, flip: bool) -> Session | None:
        """The session of this model with ``flip`` averaging, decoding and calibrations in its graph (None where
        :attr:`fused_why_not`), on the backend and device of :attr:`session`."""
        if self.fused_why_not is not None:
            return None
        with self._fusing:
            session = self._fused.get(flip)
            if session is None:
                try:
                    graph = fused_graph(self.path.read_bytes(), self.session.input_name, flip,
                                        self.age_calibration, self.interval_calibration)
                    session = open_session(self.path, self.session.backend, self.session.device, self.threads,
                                           graph)
                except Exception as err:  # e.g. a file of another opset: the NumPy path still serves it
                    self._fusion_error = f"the fused graph could not be made ({err})"
                    log.warning("%s: decoding in NumPy: %s", self.path.name, self._fusion_error)
                    return None
                self._fused[flip] = session
                log.debug("%s: decoding fused into the graph (flip %s)", self.path.name, flip)
            return session

    @property
    def input_side(self) -> int:
        """The side at which the network reads a face chip: how finely a face must be decoded. Its load size
        where the chip is averaged down to it (``"area"``); finer by linear interpolation, which samples the chip
        after its whole-block average (:func:`~agegender.preprocess.detail_side`: 100 px of a 200 px chip read at
        72). Aligning a linear model's faces from pixels coarser than that cost 0.08 years of MAE on 12 MP photos
        (docs/photos.md)."""
        return detail_side(self.config.load_size, self.config.resampling)

    def raw(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for a preprocessed batch (N x 3 x S x S float32 RGB 0..255)."""
        return self.session.run({self.session.input_name: pixels})

    def prepare(self, faces: int, flip: bool = True) -> None:
        """Get the runtime ready for batches of ``faces`` faces (OpenVINO compiles for that input shape now rather
        than after its first thousand calls: :meth:`Session.prepare <agegender.inference.backends.Session.prepare>`),
        both the network's own graph and, where ``predict`` fuses the decoding, that graph."""
        self.session.prepare(self._input_shape(faces, flip))
        fused = self._fused_session(flip)
        if fused is not None:
            fused.prepare(self._input_shape(faces, flip=False))

    def _input_shape(self, faces: int, flip: bool) -> tuple[int, int, int, int]:
        """The network's input shape for ``faces`` faces, with their mirrors when ``flip``."""
        side = self.config.input_size
        return faces * (2 if flip else 1), 3, side, side

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
        then the interval by its interval calibration, if any); ``flip`` averages each chip with its mirror. In
        one inference where the decoding is fused into the graph (see the class doc)."""
        # On OpenVINO the fused graph pays only compiled for the batch's shape (for any shape it was no faster than
        # the network's own graph and NumPy: docs/logs/fused_decoding.md), and making it costs a fraction of a
        # second: it takes over a batch size once the network's own graph has been compiled for it (prepare, or
        # the thousandth call), then is compiled for that size itself.
        if self.fused_why_not is None and self.session.ready_for(self._input_shape(len(chips_bgr), flip)):
            fused = self._fused_session(flip)
            if fused is not None:
                shape = self._input_shape(len(chips_bgr), flip=False)
                if not fused.ready_for(shape):
                    fused.prepare(shape)
                return fused_decoded(fused.run({fused.input_name: self.network_input(chips_bgr, flip=False)}))
        return self.calibrate(decode(self.outputs(chips_bgr, flip)))

    def calibrate(self, decoded: Decoded) -> Decoded:
        """The corrections stored in the file, applied to decoded outputs: the age calibration, then the interval
        calibration (each only if the file has one)."""
        if self.age_calibration:
            return self.age_calibration.apply(decoded)  # the interval calibration it carries included
        return self.interval_calibration.apply(decoded) if self.interval_calibration else decoded

    def describe(self) -> dict[str, Any]:
        cal, interval = self.age_calibration, self.interval_calibration
        why_not = self.fused_why_not
        return {"path": str(self.path), "backend": self.session.backend, "device": self.session.device,
                "float_precision": self.session.float_precision,
                "decoding": "in the graph" if why_not is None else f"NumPy ({why_not})",
                "config": self.config.to_dict(),
                "metrics": self.metrics,
                "version": self.metadata.get("version"), "quantization": self.metadata.get("quantization"),
                "age_calibration": {"knee": cal.knee, "slope": cal.slope} if cal else None,
                "age_interval_calibration": interval.to_dict() if interval else None}
