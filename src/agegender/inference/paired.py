"""Two single-task exports run as one model: an age network and a gender network, each reading the face chip with
its own input geometry, as Levi & Hassner deploy theirs (seed 000) and as Zhu's single-task nets are trained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agegender.inference.onnx_model import ModelError, OnnxAgeGender
from agegender.outputs import AGE_KEYS, GENDER_KEYS

__all__ = ["PairedAgeGender"]


class PairedAgeGender(OnnxAgeGender):
    """An age-only export (``path``: its preprocessing, age calibration and session are this object's own) with a
    gender-only export (``gender``) beside it. Used like :class:`OnnxAgeGender`: ``outputs`` and ``predict`` hold
    both networks' outputs, ``flip`` applies to both; ``config`` is the age network's with both networks' outputs,
    named ``AGE+GENDER``. The single-batch stages (``network_input``, ``raw``, ``forward``) stay the age
    network's own: each network preprocesses the chips its own way."""

    FUSE_DECODING = False  # the gender network's outputs join the age network's before decoding

    def __init__(self, path: str | Path, gender: str | Path, threads: int | None = None, backend: str = "auto",
                 device: str | None = None) -> None:
        super().__init__(path, threads, backend, device)
        self.gender = OnnxAgeGender(gender, threads, backend, device)
        for model, task, wanted, unwanted in ((self, "age", AGE_KEYS, GENDER_KEYS),
                                              (self.gender, "gender", GENDER_KEYS, AGE_KEYS)):
            outputs = set(model.config.outputs)
            if not outputs & wanted or outputs & unwanted:
                raise ModelError(f"{model.path} predicts {', '.join(sorted(outputs))}: as the {task} model of a "
                                 f"pair it must predict {task} alone")
        self.config = self.config.replace(name=f"{self.config.name}+{self.gender.config.name}",
                                          outputs=(*self.config.outputs, *self.gender.config.outputs))
        self.version_label = f"{self.version_label} + {self.gender.version_label}"

    @property
    def input_side(self) -> int:
        """The finer of the two networks' input sides: a face is decoded finely enough for both."""
        return max(super().input_side, self.gender.input_side)

    def prepare(self, faces: int, flip: bool = True) -> None:
        super().prepare(faces, flip)
        self.gender.prepare(faces, flip)

    def outputs(self, chips_bgr: Sequence[np.ndarray], flip: bool = True) -> dict[str, np.ndarray]:
        return {**super().outputs(chips_bgr, flip), **self.gender.outputs(chips_bgr, flip)}

    def describe(self) -> dict[str, Any]:
        """The age network's description, and the gender network's under ``gender_model`` (its file's name, not its
        path: the service publishes it)."""
        gender = {k: v for k, v in self.gender.describe().items() if k != "path"}
        return {**super().describe(), "gender_model": {"file": self.gender.path.name, **gender}}
