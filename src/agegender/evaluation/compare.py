"""Is one model better than another on the same faces? Per-face scores and a paired bootstrap.

Per-face arrays (``face_arrays``) hold the truth and a model's predictions, NaN (group: -1) for an output the
model lacks, so they save with ``np.savez`` and load without pickling. ``face_scores`` turns them into one score per
face whose mean is the figure (higher is better; for age, minus the absolute error), and ``paired_bootstrap``
resamples the per-face differences of two models; ``compare_faces`` does all of it for one figure.

>>> import numpy as np
>>> a, b = np.array([1.0, 1.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0, 0.0])
>>> mean, low, high = paired_bootstrap(a, b, samples=200)
>>> mean, 0.0 <= low <= mean <= high <= 1.0
(0.5, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agegender.data.records import FaceRecord
from agegender.labels import GENDER_TIE, gender_codes
from agegender.outputs import Decoded
from agegender.training.batches import record_targets

#: Figures that can be compared face by face, with how a difference of one is shown.
COMPARABLE = {"group_exact": "pts", "group_one_off": "pts", "gender_accuracy": "pts", "age_mae": "years"}
BOOTSTRAP_SAMPLES = 2000


def face_arrays(records: Sequence[FaceRecord], decoded: Decoded) -> dict[str, Any]:
    """Truth and prediction per face; an output the model lacks is NaN (group: -1), so no pickling is needed."""
    targets = record_targets(records)
    missing = np.full(len(records), np.nan)
    return {"path": np.array([r.path for r in records]), "true_age": targets["age"],
            "true_group": targets["group"], "true_gender": targets["gender"],
            "age": missing if decoded.age is None else decoded.age,
            "group": np.full(len(records), -1) if decoded.age_group is None else decoded.age_group,
            "female_prob": missing if decoded.female_prob is None else decoded.female_prob}


def face_scores(faces: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-face score whose mean is the figure (higher is better; age: minus the absolute error) and the mask
    of faces it is defined on."""
    if metric in ("group_exact", "group_one_off"):
        off = np.abs(faces["group"].astype(np.int64) - faces["true_group"])
        return (off <= (0 if metric == "group_exact" else 1)).astype(float), (faces["true_group"] >= 0) & (
            faces["group"] >= 0)
    if metric == "gender_accuracy":
        pred = gender_codes(faces["female_prob"])  # a tie counts half, as in compute_metrics
        return (pred == faces["true_gender"]) + 0.5 * (pred == GENDER_TIE), (faces["true_gender"] >= 0) & ~np.isnan(
            faces["female_prob"])
    if metric == "age_mae":
        return -np.abs(faces["age"] - faces["true_age"]), ~np.isnan(faces["true_age"]) & ~np.isnan(faces["age"])
    raise ValueError(f"faces can be compared on {', '.join(COMPARABLE)}, not {metric!r}")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Mean of ``a - b`` (paired per face) and its 95% bootstrap interval."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(samples)])
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def face_intervals(faces: Mapping[str, np.ndarray], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                   ) -> dict[str, list[float]]:
    """95% bootstrap interval (faces resampled) of every :data:`COMPARABLE` figure the faces have, in the figure's
    own unit (shares 0..1, age MAE in years).

    >>> faces = {"path": np.arange(4), "true_age": np.array([20.0, 30, 40, 50]), "age": np.array([22.0, 30, 41, 50]),
    ...          "true_group": np.full(4, -1), "group": np.full(4, -1), "true_gender": np.full(4, -1),
    ...          "female_prob": np.full(4, np.nan)}
    >>> low, high = face_intervals(faces, samples=200)["age_mae"]
    >>> 0.0 <= low <= 0.75 <= high <= 2.0
    True
    """
    rng = np.random.default_rng(seed)
    out = {}
    for metric in COMPARABLE:
        score, ok = face_scores(faces, metric)
        score = score[ok]
        if not len(score):
            continue
        means = np.array([score[rng.integers(0, len(score), len(score))].mean() for _ in range(samples)])
        sign = -1.0 if metric == "age_mae" else 1.0  # age scores are minus the error
        low, high = sorted(sign * np.percentile(means, [2.5, 97.5]))
        out[metric] = [float(low), float(high)]
    return out


def compare_faces(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], metric: str
                  ) -> tuple[float, float, float] | None:
    """How much better A is than B on ``metric``, in its unit (``COMPARABLE``: points for shares, years for age),
    with the 95% bootstrap interval; None when no face has the figure for both."""
    if not np.array_equal(a["path"], b["path"]):
        raise ValueError("the two evaluations cover different faces")
    (score_a, ok_a), (score_b, ok_b) = face_scores(a, metric), face_scores(b, metric)
    ok = ok_a & ok_b
    if not ok.any():
        return None
    scale = 100.0 if COMPARABLE[metric] == "pts" else 1.0
    mean, low, high = paired_bootstrap(score_a[ok], score_b[ok])
    return scale * mean, scale * low, scale * high
