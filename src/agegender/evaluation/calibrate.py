"""Fit an exported model's age calibration (:mod:`agegender.age_calibration`) on labelled faces, with an honest
estimate of what it buys: fitted on one half of the faces and scored on the other, both ways. The same for the
calibration of its 80% interval, fitted after the age correction."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from agegender.age_calibration import INTERVAL_COVERAGE, AgeCalibration, IntervalCalibration, age_band_edges
from agegender.data.records import FaceRecord
from agegender.evaluation.evaluate import predict_faces
from agegender.labels import AGE_GROUPS
from agegender.models import config_of
from agegender.outputs import Decoded


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


def halves(records: Sequence[FaceRecord], seed: int | None = None) -> np.ndarray:
    """A fixed half of the faces (bool mask), near-duplicate groups kept together; another ``seed`` gives another
    half (None: the one the fits here are cross-fitted on).

    >>> a = FaceRecord("a.jpg", 30, None, 0, group_id="g1")
    >>> b = FaceRecord("b.jpg", 31, None, 0, group_id="g1")
    >>> mask = halves([a, b])
    >>> bool(mask[0] == mask[1])
    True
    >>> round(float(halves([FaceRecord(f"{i}.jpg", 30, None, 0) for i in range(1000)]).mean()), 1)
    0.5
    """
    salt = "" if seed is None else f"{seed}:"
    return np.array([zlib.crc32(f"{salt}{r.group_id or r.path}".encode()) % 2 == 1 for r in records])


def fit_age_calibration(model: nn.Module, records: Sequence[FaceRecord], images: np.ndarray,
                        tta: str = "flip") -> CalibrationFit:
    """Fit the hinge on the ages ``model`` decodes (before any correction it carries) for ``records`` (cached
    uint8 ``images`` at its load size) under ``tta``."""
    decoded = predict_faces(model, images, tta, calibrated=False)
    if decoded.age is None:
        raise ValueError(f"{config_of(model).name} predicts no age: there is nothing to calibrate")
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


@dataclass(frozen=True)
class Coverage:
    """How often intervals hold the true age: overall and per band of the true age (the model card's age
    groups), with the mean width in years."""

    overall: float
    width: float
    by_band: tuple[float | None, ...]  # None for a band without faces
    n_by_band: tuple[int, ...]

    @classmethod
    def of(cls, low: np.ndarray, high: np.ndarray, true: np.ndarray) -> Coverage:
        covered = (low <= true) & (true <= high)
        band = np.searchsorted(age_band_edges(), true, side="right")
        members = [band == k for k in range(len(AGE_GROUPS))]
        return cls(overall=float(covered.mean()), width=float(np.mean(high - low)),
                   by_band=tuple(float(covered[m].mean()) if m.any() else None for m in members),
                   n_by_band=tuple(int(m.sum()) for m in members))

    def worst(self, target: float = INTERVAL_COVERAGE) -> float:
        """The largest distance from ``target`` over the whole set and its bands with faces."""
        return max(abs(c - target) for c in (self.overall, *self.by_band) if c is not None)

    def mean_band_error(self, target: float = INTERVAL_COVERAGE) -> float:
        """The mean distance from ``target`` over the bands with faces."""
        return float(np.mean([abs(c - target) for c in self.by_band if c is not None]))


@dataclass(frozen=True)
class IntervalFit:
    """A fitted interval calibration and the coverage it was judged by (faces with an age label)."""

    calibration: IntervalCalibration
    n: int
    decoded: Coverage  # the intervals as decoded and corrected by the age correction
    calibrated: Coverage  # the fit on the faces it was fitted to (optimistic)
    cross_fitted: Coverage  # each half calibrated by the fit of the other half

    @property
    def helps(self) -> bool:
        """Whether it brings the coverage of faces it was not fitted to closer to the target, on average over
        the age bands."""
        target = self.calibration.coverage
        return self.cross_fitted.mean_band_error(target) < self.decoded.mean_band_error(target)


def fit_interval_calibration(decoded: Decoded, records: Sequence[FaceRecord], by: str = "true_age",
                             correction: AgeCalibration | None = None, precision: str | None = None
                             ) -> IntervalFit:
    """Fit the interval calibration on ``decoded`` predictions (one per record, as the model decodes them)
    after ``correction`` (the age correction the model will carry, applied here; its interval part ignored),
    against the records' labels (faces without an age left out). Cross-fitted on the halves of
    :func:`halves`, the age correction held fixed. ``precision``: the model's ``quantization`` metadata, recorded
    with ``correction`` so that a model it was not fitted for does not apply it."""
    if decoded.age is None or decoded.age_low is None or decoded.age_high is None:
        raise ValueError("the model predicts no age interval: there is nothing to calibrate")
    point = None if correction is None or correction.is_identity else correction.point
    corrected = point.apply(decoded) if point else decoded
    ages = np.array([np.nan if r.age is None else r.age for r in records], dtype=np.float64)
    known = ~np.isnan(ages)
    if known.sum() < 100:
        raise ValueError(f"fitting an interval calibration needs at least 100 faces with an age, got "
                         f"{int(known.sum())}")
    age, low, high = (np.asarray(v, np.float64)[known] for v in (corrected.age, corrected.age_low,
                                                                   corrected.age_high))
    true, half = ages[known], halves(records)[known]
    calibration = dataclasses.replace(
        IntervalCalibration.fit(age, low, high, true, by),
        fitted_after=None if point is None else (point.knee, point.slope), precision=precision or None)
    return IntervalFit(calibration=calibration, n=len(true), decoded=Coverage.of(low, high, true),
                       calibrated=Coverage.of(*calibration.bounds(age, low, high), true),
                       cross_fitted=Coverage.of(*cross_fitted_bounds(age, low, high, true, half, by), true))


def cross_fitted_bounds(age: np.ndarray, low: np.ndarray, high: np.ndarray, true: np.ndarray, half: np.ndarray,
                        by: str = "true_age", bands: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each face's calibrated interval as fitted on the other side of ``half`` (bool mask), both ways
    (:meth:`IntervalCalibration.fit` with ``by`` and ``bands``)."""
    crossed_low, crossed_high = np.empty_like(age), np.empty_like(age)
    for side in (False, True):
        fit, score = half != side, half == side
        fitted = IntervalCalibration.fit(age[fit], low[fit], high[fit], true[fit], by, bands=bands, warn=False)
        crossed_low[score], crossed_high[score] = fitted.bounds(age[score], low[score], high[score])
    return crossed_low, crossed_high
