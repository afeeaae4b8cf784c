"""A monotone correction of decoded ages, fitted on held-out labelled faces and stored inside an exported model.

A network's age is the median of its predicted distribution, the best estimate only if that distribution is
calibrated. Ours are not quite: the distilled flagship over-estimates older faces (on the validation split, faces
it puts in their sixties are a median 2.6 years younger). The correction is a hinge, identity up to a ``knee``
and a straight line of gradient ``slope`` above it, the two numbers chosen for the least mean absolute error on
the validation split (``agegender calibrate``). It maps every decoded age (the point estimate and both ends of
the 80% interval), never the group probabilities or gender.

>>> cal = AgeCalibration(knee=20.0, slope=0.9)
>>> cal(np.array([10.0, 20.0, 40.0])).tolist()
[10.0, 20.0, 38.0]
>>> AgeCalibration.from_json(cal.to_json()) == cal
True
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agegender.labels import MAX_AGE
from agegender.outputs import Decoded

#: Key of the correction in an export's metadata (under the ``agegender.`` prefix).
METADATA_KEY = "age_calibration"
KNEES = np.arange(0.0, 81.0, 1.0)
SLOPES = np.round(np.arange(0.70, 1.3001, 0.005), 3)


@dataclass(frozen=True)
class AgeCalibration:
    """``age -> age`` below ``knee``, ``knee + slope * (age - knee)`` above it (years)."""

    knee: float
    slope: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.knee <= MAX_AGE:
            raise ValueError(f"age calibration knee must lie in 0..{MAX_AGE}, got {self.knee}")
        if not self.slope > 0.0:
            raise ValueError(f"age calibration slope must be positive (monotone), got {self.slope}")

    def __call__(self, ages: np.ndarray) -> np.ndarray:
        ages = np.asarray(ages, dtype=np.float64)
        return np.where(ages > self.knee, self.knee + self.slope * (ages - self.knee), ages)

    def __str__(self) -> str:
        """What the correction does, in words.

        >>> str(AgeCalibration(knee=15.0, slope=0.97))
        'an age a above 15 years becomes 15 + 0.97 x (a - 15)'
        """
        return f"an age a above {self.knee:g} years becomes {self.knee:g} + {self.slope:g} x (a - {self.knee:g})"

    def apply(self, decoded: Decoded) -> Decoded:
        """``decoded`` with its ages (point, low, high) corrected; a gender-only one unchanged."""
        if decoded.age is None:
            return decoded
        return dataclasses.replace(decoded, age=self(decoded.age), age_low=self(decoded.age_low),
                                   age_high=self(decoded.age_high))

    def to_json(self) -> str:
        return json.dumps({"knee": self.knee, "slope": self.slope})

    @classmethod
    def from_json(cls, text: str) -> AgeCalibration:
        data = json.loads(text)
        return cls(knee=float(data["knee"]), slope=float(data["slope"]))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> AgeCalibration | None:
        """The correction stored in an export's metadata (keys without their prefix), or None."""
        text = metadata.get(METADATA_KEY)
        return cls.from_json(text) if text else None

    @classmethod
    def fit(cls, predicted: np.ndarray, true: np.ndarray) -> AgeCalibration:
        """The hinge with the least mean absolute error over a grid (knees 0..80 by 1 year, slopes 0.7..1.3 by
        0.005; the identity is on it, so the fit never does worse than no correction on these faces).

        >>> rng = np.random.default_rng(0)
        >>> true = rng.uniform(1, 90, 4000)
        >>> predicted = np.where(true > 30, 30 + (true - 30) / 0.9, true) + rng.normal(0, 1, 4000)
        >>> fitted = AgeCalibration.fit(predicted, true)
        >>> abs(fitted.knee - 30) <= 3, abs(fitted.slope - 0.9) <= 0.02
        (True, True)
        """
        predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
        if predicted.shape != true.shape or predicted.ndim != 1 or not len(predicted):
            raise ValueError("fit needs two equal-length, non-empty 1-D arrays of ages")
        best = (np.abs(predicted - true).mean(), 0.0, 1.0)
        for knee in KNEES:
            above = np.maximum(predicted - knee, 0.0)
            errors = np.abs(predicted - true - np.outer(1.0 - SLOPES, above)).mean(axis=1)
            k = int(errors.argmin())
            if errors[k] < best[0] - 1e-12:
                best = (float(errors[k]), float(knee), float(SLOPES[k]))
        return cls(knee=best[1], slope=best[2])
