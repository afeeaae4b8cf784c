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
    """Mean of ``a - b`` (paired per face) and its 95% bootstrap interval. A 2-D ``a`` or ``b`` holds one row per
    training seed of that model: the seeds are resampled too (with the faces, which stay paired), so the interval
    holds the spread of training as well as that of the faces.

    >>> a = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]])  # two seeds of A
    >>> mean, low, high = paired_bootstrap(a, np.zeros(4), samples=200)
    >>> mean, low <= mean <= high
    (0.625, True)
    """
    a2, b2 = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"paired scores need the same faces: {a2.shape[1]} against {b2.shape[1]}")
    rng = np.random.default_rng(seed)
    n = a2.shape[1]

    def pick(scores: np.ndarray) -> np.ndarray:
        return scores if len(scores) == 1 else scores[rng.integers(0, len(scores), len(scores))]

    means = []
    for _ in range(samples):
        faces = rng.integers(0, n, n)
        means.append(pick(a2)[:, faces].mean() - pick(b2)[:, faces].mean())
    return float(a2.mean() - b2.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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


def compare_faces(a: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                  b: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], metric: str
                  ) -> tuple[float, float, float] | None:
    """How much better A is than B on ``metric``, in its unit (``COMPARABLE``: points for shares, years for age),
    with the 95% bootstrap interval; None when no face has the figure for both. A sequence of evaluations is one
    per training seed of the model (:func:`paired_bootstrap` resamples them)."""
    runs_a, runs_b = ([a] if isinstance(a, Mapping) else list(a)), ([b] if isinstance(b, Mapping) else list(b))
    if any(not np.array_equal(runs_a[0]["path"], run["path"]) for run in [*runs_a, *runs_b]):
        raise ValueError("the two evaluations cover different faces")
    scored_a, scored_b = [face_scores(r, metric) for r in runs_a], [face_scores(r, metric) for r in runs_b]
    ok = np.logical_and.reduce([mask for _, mask in scored_a + scored_b])
    if not ok.any():
        return None
    scale = 100.0 if COMPARABLE[metric] == "pts" else 1.0
    mean, low, high = paired_bootstrap(np.stack([score[ok] for score, _ in scored_a]),
                                       np.stack([score[ok] for score, _ in scored_b]))
    return scale * mean, scale * low, scale * high
