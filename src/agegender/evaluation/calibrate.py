"""Fit an exported model's age calibration (:mod:`agegender.age_calibration`) on labelled faces, with an honest
estimate of what it buys: fitted on one half of the faces and scored on the other, both ways."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from agegender.age_calibration import AgeCalibration
from agegender.data.records import FaceRecord
from agegender.evaluation.evaluate import model_config, predict_faces


@dataclass(frozen=True)
class CalibrationFit:
    """A fitted correction and the mean absolute errors (years) it was judged by."""

    calibration: AgeCalibration
    n: int
    mae_decoded: float  # ages as the network decodes them
    mae_calibrated: float  # the fitted correction on the faces it was fitted to (optimistic)
    mae_cross_fitted: float  # each half corrected by the fit of the other half

    @property
    def helps(self) -> bool:
        """Whether the correction lowers the error on faces it was not fitted to."""
        return self.mae_cross_fitted < self.mae_decoded


def halves(records: Sequence[FaceRecord]) -> np.ndarray:
    """A fixed half of the faces (bool mask), near-duplicate groups kept together.

    >>> a = FaceRecord("a.jpg", 30, None, 0, group_id="g1")
    >>> b = FaceRecord("b.jpg", 31, None, 0, group_id="g1")
    >>> mask = halves([a, b])
    >>> bool(mask[0] == mask[1])
    True
    >>> round(float(halves([FaceRecord(f"{i}.jpg", 30, None, 0) for i in range(1000)]).mean()), 1)
    0.5
    """
    return np.array([zlib.crc32((r.group_id or r.path).encode()) % 2 == 1 for r in records])


def fit_age_calibration(model: nn.Module, records: Sequence[FaceRecord], images: np.ndarray,
                        tta: str = "flip") -> CalibrationFit:
    """Fit the hinge on the ages ``model`` decodes (before any correction it carries) for ``records`` (cached
    uint8 ``images`` at its load size) under ``tta``."""
    decoded = predict_faces(model, images, tta, calibrated=False)
    if decoded.age is None:
        raise ValueError(f"{model_config(model).name} predicts no age: there is nothing to calibrate")
    return fit_on_predictions(decoded.age, records)


def fit_on_predictions(predicted: np.ndarray, records: Sequence[FaceRecord]) -> CalibrationFit:
    """Fit the hinge on predicted ages (one per record, years) against the records' labels; faces without an
    age label are left out."""
    ages = np.array([np.nan if r.age is None else r.age for r in records], dtype=np.float64)
    known = ~np.isnan(ages)
    if known.sum() < 100:
        raise ValueError(f"fitting an age calibration needs at least 100 faces with an age, got {int(known.sum())}")
    predicted, true, half = np.asarray(predicted, np.float64)[known], ages[known], halves(records)[known]
    calibration = AgeCalibration.fit(predicted, true)
    crossed = np.empty_like(predicted)
    for side in (False, True):
        fitted = AgeCalibration.fit(predicted[half != side], true[half != side])
        crossed[half == side] = fitted(predicted[half == side])
    return CalibrationFit(calibration=calibration, n=len(true),
                          mae_decoded=float(np.abs(predicted - true).mean()),
                          mae_calibrated=float(np.abs(calibration(predicted) - true).mean()),
                          mae_cross_fitted=float(np.abs(crossed - true).mean()))
