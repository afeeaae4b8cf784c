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

The interval then gets a calibration of its own (:class:`IntervalCalibration`, stored beside the correction under
:data:`INTERVAL_METADATA_KEY`): the decoded 10th-90th percentile interval is too wide for babies and too narrow
for teenagers, so the reach of the interval on each side is scaled, per age band, by factors chosen on held-out
faces (split conformal prediction) so that it holds 80% of true ages in every band. It moves ``age_low`` and
``age_high`` only, never the age itself, and always keeps ``age_low <= age <= age_high``. An export's
:class:`AgeCalibration` carries it (``interval``), so whatever applies the age correction applies both; a file
with an interval calibration but no age correction has it alone (``IntervalCalibration.stored``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agegender.labels import AGE_GROUPS, MAX_AGE, ages_to_groups
from agegender.outputs import Decoded

log = logging.getLogger(__name__)

#: Key of the correction in an export's metadata (under the ``agegender.`` prefix).
METADATA_KEY = "age_calibration"
#: Key of the interval calibration in an export's metadata, beside the correction.
INTERVAL_METADATA_KEY = "age_interval_calibration"
#: Version of the interval calibration's JSON; a reader skips (with a warning) a format it does not know.
INTERVAL_FORMAT = 1
#: What the interval promises: the share of true ages inside ``[age_low, age_high]``.
INTERVAL_COVERAGE = 0.8
#: ``by`` of an :class:`IntervalCalibration`: bands of the true age (label-conditional: 80% in every band of the
#: model card) or of the predicted age (80% among the faces given a similar age).
INTERVAL_BANDS = ("true_age", "predicted_age")
KNEES = np.arange(0.0, 81.0, 1.0)
SLOPES = np.round(np.arange(0.70, 1.3001, 0.005), 3)


@dataclass(frozen=True)
class AgeCalibration:
    """``age -> age`` below ``knee``, ``knee + slope * (age - knee)`` above it (years); then, if ``interval`` is set,
    the interval calibration fitted after this correction (not part of equality: two corrections are equal when
    they map ages alike)."""

    knee: float
    slope: float
    interval: IntervalCalibration | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.knee <= MAX_AGE:
            raise ValueError(f"age calibration knee must lie in 0..{MAX_AGE}, got {self.knee}")
        if not self.slope > 0.0:
            raise ValueError(f"age calibration slope must be positive (monotone), got {self.slope}")

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0

    @property
    def point(self) -> AgeCalibration:
        """The hinge alone, without the interval calibration."""
        return dataclasses.replace(self, interval=None)

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
        """``decoded`` with its ages (point, low, high) corrected, then its interval calibrated when ``interval``
        is set; a gender-only one unchanged, an age regression's point corrected."""
        if decoded.age is None:
            return decoded
        if decoded.age_low is None or decoded.age_high is None:  # an age regression: a point, no interval
            return dataclasses.replace(decoded, age=self(decoded.age))
        age, low, high = self(np.stack([decoded.age, decoded.age_low, decoded.age_high]))
        if self.interval:
            low, high = self.interval.bounds(age, low, high)
        return dataclasses.replace(decoded, age=age, age_low=low, age_high=high)

    def to_json(self) -> str:
        return json.dumps({"knee": self.knee, "slope": self.slope})

    @classmethod
    def from_json(cls, text: str) -> AgeCalibration:
        data = json.loads(text)
        return cls(knee=float(data["knee"]), slope=float(data["slope"]))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> AgeCalibration | None:
        """The correction stored in an export's metadata (keys without their prefix), or None; it carries the
        interval calibration stored beside it when that applies (:meth:`IntervalCalibration.stored`)."""
        text = metadata.get(METADATA_KEY)
        if not text:
            return None
        point = cls.from_json(text)
        interval = IntervalCalibration.stored(metadata)
        return dataclasses.replace(point, interval=interval) if interval else point

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


def age_band_edges() -> tuple[float, ...]:
    """Edges (years) between the model card's 8 age bands: each Adience group with the gap ages the gap policy
    gives it (``labels.age_to_group``), reaching half a year beyond its first and last whole age.

    >>> age_band_edges()
    (2.5, 6.5, 13.5, 22.5, 34.5, 45.5, 56.5)
    """
    groups = ages_to_groups(np.arange(MAX_AGE + 1))
    return tuple(a - 0.5 for a in range(1, MAX_AGE + 1) if groups[a] != groups[a - 1])


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) coverage)``-th smallest of ``n`` scores (the largest when that exceeds ``n``): a further
    score exchangeable with them is at most this with probability at least ``coverage`` (split conformal).

    >>> conformal_quantile(np.arange(1.0, 11.0), 0.8)  # ceil(11 x 0.8) = 9th of 1..10
    9.0
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(ordered):
        raise ValueError("a conformal quantile needs at least one score")
    k = min(math.ceil((len(ordered) + 1) * coverage - 1e-9), len(ordered))
    return float(ordered[max(k, 1) - 1])


def _warn_thin_bands(names: Sequence[str], counts: Sequence[int], coverage: float) -> None:
    """Log the bands whose scale the faces cannot set: none (the scale stays 1, the interval as decoded), or too few
    for the ``coverage`` quantile (``ceil((n + 1) coverage) > n``: the largest score is taken)."""
    for name, n in zip(names, counts, strict=True):
        if not n:
            log.warning("interval calibration: no face in band %s; its scale stays 1 (the interval as decoded)", name)
        elif math.ceil((n + 1) * coverage - 1e-9) > n:
            log.warning("interval calibration: %d face(s) in band %s, too few for a %g%% quantile; its scale is the "
                        "largest of their scores", n, name, 100 * coverage)


@dataclass(frozen=True)
class IntervalCalibration:
    """The decoded interval's reach on each side of the age, scaled per age band.

    A face with (corrected) age ``a`` and interval ``[lo, hi]`` reaches ``r_lo = max(a - lo, m)`` years below its
    age and ``r_hi = max(hi - a, m)`` above it (``m``: ``min_half_width``); band ``k`` (between ``edges``) has the
    scale ``scales[k]``.

    - ``by="predicted_age"``: the face's band is its age's; its interval becomes ``[a - s r_lo, a + s r_hi]``.
    - ``by="true_age"`` (label-conditional, "Mondrian" conformal prediction): the interval holds every age ``y``
      with ``a - s_k r_lo <= y <= a + s_k r_hi``, ``k`` being the band of ``y`` itself: each band of ages is
      reached as far as the held-out faces whose true age lies in it needed, whatever they were predicted (an
      over-estimated teenager's interval reaches down into the teens). The interval is the span of that set.

    Both keep ``age_low <= age <= age_high`` (a scale of 0 shrinks a side to the age) within 0..100 years.
    :meth:`fit` chooses the scales on held-out faces as conformal quantiles of each face's distance from its age
    to its true age, in reaches, so that ``coverage`` of the faces of every band are covered.
    ``fitted_after`` (knee, slope) and ``precision`` record the age correction and the model precision it was
    fitted with: on another it is stale (:meth:`fits`).

    >>> cal = IntervalCalibration(by="predicted_age", edges=(20.0,), scales=(0.5, 2.0))
    >>> low, high = cal.bounds(np.array([10.0, 30.0]), np.array([8.0, 25.0]), np.array([14.0, 33.0]))
    >>> low.tolist(), high.tolist()
    ([9.0, 20.0], [12.0, 36.0])
    >>> IntervalCalibration.from_json(cal.to_json()) == cal
    True
    """

    by: str
    edges: tuple[float, ...]
    scales: tuple[float, ...]
    coverage: float = INTERVAL_COVERAGE
    min_half_width: float = 0.5
    fitted_after: tuple[float, float] | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.fitted_after is not None:
            object.__setattr__(self, "fitted_after", tuple(float(v) for v in self.fitted_after))
        if self.by not in INTERVAL_BANDS:
            raise ValueError(f"interval calibration by {self.by!r}: use one of {', '.join(INTERVAL_BANDS)}")
        if len(self.scales) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} band edges need {len(self.edges) + 1} scales, got {len(self.scales)}")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"band edges must increase: {self.edges}")
        if not all(math.isfinite(s) and s >= 0 for s in self.scales):
            raise ValueError(f"interval scales must be finite and >= 0, got {self.scales}")
        if not 0 < self.coverage < 1 or not self.min_half_width > 0:
            raise ValueError("interval coverage must lie in (0, 1) and min_half_width be positive")

    # --- what it does -------------------------------------------------------------------------------------------

    def band_names(self) -> list[str]:
        """A name per band: the model card's age groups for its bands, else the edges in years."""
        if self.edges == age_band_edges():
            return list(AGE_GROUPS)
        bounds = [f"{e:g}" for e in self.edges]
        return [f"<{bounds[0]}", *(f"{a}-{b}" for a, b in zip(bounds, bounds[1:], strict=False)),
                f"{bounds[-1]}+"] if bounds else ["all"]

    def __str__(self) -> str:
        """What it does, in words.

        >>> str(IntervalCalibration(by="predicted_age", edges=(20.0,), scales=(0.5, 2.0))).split(": ")[1]
        '<20 0.5, 20+ 2'
        """
        scales = ", ".join(f"{name} {s:.3g}" for name, s in zip(self.band_names(), self.scales, strict=True))
        if self.by == "true_age":
            return (f"the {100 * self.coverage:g}% interval reaches into each band of true ages this many times as far "
                    f"from the age as decoded: {scales}")
        return (f"the {100 * self.coverage:g}% interval reaches this many times as far from the age as decoded, by "
                f"band of the predicted age: {scales}")

    def bounds(self, age: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated ``(age_low, age_high)`` of faces with (corrected) ``age`` and interval ``[low, high]``."""
        return self._bounds(np.asarray(self.scales), np.asarray(age, np.float64), np.asarray(low, np.float64),
                            np.asarray(high, np.float64))

    def _bounds(self, scales: np.ndarray, age: np.ndarray, low: np.ndarray, high: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        below = np.maximum(age - low, self.min_half_width)
        above = np.maximum(high - age, self.min_half_width)
        if self.by == "predicted_age":
            scale = scales[np.searchsorted(self.edges, age, side="right")]
            new_low, new_high = age - scale * below, age + scale * above
        else:
            # faces x bands: how far down (up) each band lets the interval reach, kept where that band is reached
            starts, ends = np.array([-np.inf, *self.edges]), np.array([*self.edges, np.inf])
            a = age[:, None]
            reach = np.maximum(starts, a - scales * below[:, None])  # the lowest age of each band within reach
            new_low = np.minimum(age, np.where(reach < np.minimum(ends, a), reach, np.inf).min(axis=1))
            reach = np.minimum(ends, a + scales * above[:, None])  # the highest
            new_high = np.maximum(age, np.where(reach > np.maximum(starts, a), reach, -np.inf).max(axis=1))
        # clipped to [0, age] and [age, max(age, 100)] (np.minimum and np.maximum: np.clip costs more per call)
        return (np.minimum(np.maximum(new_low, 0.0), age),
                np.minimum(np.maximum(new_high, age), np.maximum(age, float(MAX_AGE))))

    def apply(self, decoded: Decoded) -> Decoded:
        """``decoded`` with its interval calibrated (the age itself unchanged); a gender-only one unchanged."""
        if decoded.age is None or decoded.age_low is None or decoded.age_high is None:
            return decoded
        low, high = self.bounds(decoded.age, decoded.age_low, decoded.age_high)
        return dataclasses.replace(decoded, age_low=low, age_high=high)

    def fits(self, correction: AgeCalibration | None, precision: str | None) -> bool:
        """Whether it was fitted after ``correction`` (None or the identity: no correction) on a model of
        ``precision`` (an export's ``quantization`` metadata; None for float32)."""
        after = None if correction is None or correction.is_identity else (correction.knee, correction.slope)
        return after == self.fitted_after and (precision or None) == (self.precision or None)

    # --- storage --------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": INTERVAL_FORMAT, "by": self.by, "coverage": self.coverage, "edges": list(self.edges),
                # rounded up: a scale set at a face's score, rounded down, left that face outside its interval
                "scales": [math.ceil(s * 1e6) / 1e6 for s in self.scales], "min_half_width": self.min_half_width,
                "fitted_after": None if self.fitted_after is None
                else {"knee": self.fitted_after[0], "slope": self.fitted_after[1]},
                "precision": self.precision}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping) -> IntervalCalibration:
        if data.get("format") != INTERVAL_FORMAT:
            raise ValueError(f"interval calibration format {data.get('format')!r}: this version reads format "
                             f"{INTERVAL_FORMAT}")
        after = data.get("fitted_after")
        return cls(by=data["by"], edges=tuple(data["edges"]), scales=tuple(data["scales"]),
                   coverage=float(data["coverage"]), min_half_width=float(data["min_half_width"]),
                   fitted_after=None if after is None else (float(after["knee"]), float(after["slope"])),
                   precision=data.get("precision"))

    @classmethod
    def from_json(cls, text: str) -> IntervalCalibration:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> IntervalCalibration | None:
        """The interval calibration stored in an export's metadata, or None (also, with a warning, for a format
        this version does not read)."""
        text = metadata.get(INTERVAL_METADATA_KEY)
        if not text:
            return None
        data = json.loads(text)
        if data.get("format") != INTERVAL_FORMAT:
            log.warning("the stored age interval calibration has format %r, this version reads %d: not applied",
                        data.get("format"), INTERVAL_FORMAT)
            return None
        return cls.from_dict(data)

    @classmethod
    def stored(cls, metadata: Mapping[str, str]) -> IntervalCalibration | None:
        """The interval calibration an export applies: the stored one when it was fitted after the age correction
        stored beside it (or none, as there is none) on a model of this precision; else None, with a warning, for
        a stale one (copied by ``agegender quantize``, or left behind by a new correction)."""
        interval = cls.from_metadata(metadata)
        if interval is None:
            return None
        text = metadata.get(METADATA_KEY)
        if not interval.fits(AgeCalibration.from_json(text) if text else None, metadata.get("quantization")):
            log.warning("the stored age interval calibration was fitted after another age correction or on another "
                        "precision of the model: not applied (`agegender calibrate MODEL.onnx` fits a new one)")
            return None
        return interval

    # --- fitting ---------------------------------------------------------------------------------------------------

    @staticmethod
    def scores(age: np.ndarray, low: np.ndarray, high: np.ndarray, true: np.ndarray,
               min_half_width: float = 0.5) -> np.ndarray:
        """Each face's distance from its age to its true age in reaches of its interval on that side (0 when
        they are equal): the face is covered by a scale at least this.

        >>> IntervalCalibration.scores(np.array([30.0, 30.0]), np.array([20.0, 20.0]), np.array([35.0, 35.0]),
        ...                            np.array([25.0, 45.0])).tolist()
        [0.5, 3.0]
        """
        below = (age - true) / np.maximum(age - low, min_half_width)
        above = (true - age) / np.maximum(high - age, min_half_width)
        return np.where(true < age, below, np.where(true > age, above, 0.0))

    @classmethod
    def fit(cls, age: np.ndarray, low: np.ndarray, high: np.ndarray, true: np.ndarray, by: str = "true_age",
            coverage: float = INTERVAL_COVERAGE, bands: int | None = None, min_half_width: float = 0.5,
            rounds: int = 3, warn: bool = True) -> IntervalCalibration:
        """Scales for which ``coverage`` of these faces' true ages fall inside their intervals, in every band.

        ``by="true_age"``: the model card's 8 bands of the true age (or ``bands`` bands of about equal counts
        of it, between whole ages); each scale is the conformal quantile of the
        scores of the faces of its band (so each band's faces are covered at least that often by the set), then
        lowered, ``rounds`` times over the bands, as far as the faces of its band stay covered that often by the
        interval spanning the set (the span covers more than the set). ``by="predicted_age"``: ``bands`` (10)
        bands of equal counts of the predicted age, each scale the conformal quantile of its faces' scores. A band
        without a face keeps scale 1 (the decoded interval); ``warn``: log such bands, and those too thin for the
        quantile (off for the fits on halves that cross-fitting makes, which are not the one stored).

        >>> rng = np.random.default_rng(0)
        >>> true = rng.uniform(0, 80, 5000); age = true + rng.normal(0, 2, 5000)
        >>> fitted = IntervalCalibration.fit(age, age - 5, age + 5, true)  # intervals 2.5x too wide
        >>> low, high = fitted.bounds(age, age - 5, age + 5)
        >>> bool(abs(np.mean((low <= true) & (true <= high)) - 0.8) < 0.02), bool(np.mean(high - low) < 6)
        (True, True)
        """
        age, low, high, true = (np.asarray(v, np.float64) for v in (age, low, high, true))
        if not (age.shape == low.shape == high.shape == true.shape) or age.ndim != 1 or not len(age):
            raise ValueError("fit needs four equal-length, non-empty 1-D arrays")
        if by == "predicted_age":
            quantiles = np.quantile(age, np.linspace(0, 1, (bands or 10) + 1)[1:-1])
            edges = tuple(float(e) for e in np.unique(np.round(quantiles, 1)))
        elif bands:
            quantiles = np.quantile(true, np.linspace(0, 1, bands + 1)[1:-1])
            edges = tuple(float(e) for e in np.unique(np.floor(quantiles) + 0.5))
        else:
            edges = age_band_edges()
        shell = cls(by=by, edges=edges, scales=(1.0,) * (len(edges) + 1), coverage=coverage,
                    min_half_width=min_half_width)
        band = np.searchsorted(shell.edges, age if by == "predicted_age" else true, side="right")
        score = cls.scores(age, low, high, true, min_half_width)
        members = [band == k for k in range(len(shell.scales))]
        if warn:
            _warn_thin_bands(shell.band_names(), [int(m.sum()) for m in members], coverage)
        plain = np.array([conformal_quantile(score[m], coverage) if m.any() else 1.0 for m in members])
        scales = plain.copy()
        for _ in range(rounds if by == "true_age" else 0):
            for k, m in enumerate(members):
                if not m.any():
                    continue
                need = min(math.ceil((m.sum() + 1) * coverage - 1e-9), int(m.sum()))
                candidates = np.unique(np.append(score[m], 0.0))
                candidates = candidates[candidates <= plain[k]]

                def enough(value: float, k: int = k, m: np.ndarray = m, need: int = need) -> bool:
                    trial = scales.copy()
                    trial[k] = value
                    new_low, new_high = shell._bounds(trial, age[m], low[m], high[m])
                    return int(np.sum((new_low <= true[m]) & (true[m] <= new_high))) >= need

                lo, hi = 0, len(candidates) - 1  # the last candidate, the plain quantile, is always enough
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if enough(candidates[mid]) else (mid + 1, hi)
                scales[k] = candidates[lo]
        return dataclasses.replace(shell, scales=tuple(float(s) for s in scales))
