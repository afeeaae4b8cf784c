"""Evaluation metrics for age and gender, plain NumPy.

Scalar metrics return ``nan`` when they are undefined (no samples, or a zero denominator); ``compute_metrics``
turns that into ``None`` so its result stays strict JSON. Confusion matrices have true labels on the rows and
predictions on the columns, as Levi & Hassner's Table 5.

Gender: the positive class is **female (1)**, the class the models predict a probability for; a face counts as
predicted female when ``P(female) > 0.5``, male below, and a tie at exactly 0.5 (``labels.gender_codes``) counts as
half right in ``gender_accuracy`` (the chance of a fair coin) and is reported as ``gender_ties``; precision,
recall, F1 and the confusion matrix are over the faces that are not ties. ``gender_macro_f1`` averages the F1 of
both classes.

Age interval: ``age_interval_coverage`` is the share of faces whose true age lies within ``[age_low, age_high]``
(the bounds count as inside; nominally 80%), ``age_interval_width`` the mean of ``age_high - age_low`` in years;
both only for a model that gives an interval (some face with ``age_high > age_low``).

>>> import numpy as np
>>> from agegender.outputs import decode
>>> decoded = decode({"age": np.array([3.0, 30.0, 70.0]), "gender_logit": np.array([2.0, -2.0, 2.0])})
>>> m = compute_metrics(np.array([5.0, 38.0, 62.0]), None, np.array([1, 0, 0]), decoded)
>>> m["overall"]["age_mae"], m["overall"]["group_exact"], m["by_gender"]["male"]["n"]
(6.0, 0.6666666666666666, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from agegender.labels import AGE_GROUPS, GENDER_TIE, GENDERS, NUM_AGE_GROUPS, RACES, ages_to_groups, gender_codes
from agegender.outputs import Decoded

CS_TOLERANCE = 5

#: Every overall figure ``compute_metrics`` may report, in report order, with its human name.
METRIC_LABELS: dict[str, str] = {
    "age_mae": "Age MAE (years)",
    "age_cs5": f"Age CS@{CS_TOLERANCE} (share within {CS_TOLERANCE} years)",
    "age_interval_coverage": "Age interval coverage (share of true ages within age_range, nominal 80%)",
    "age_interval_width": "Age interval width (mean, years)",
    "group_exact": "Age group exact accuracy",
    "group_one_off": "Age group 1-off accuracy",
    "gender_accuracy": "Gender accuracy",
    "gender_ties": "Gender ties (P(female) exactly 0.5, counted half right)",
    "gender_precision": "Gender precision (female positive)",
    "gender_recall": "Gender recall (female positive)",
    "gender_f1": "Gender F1 (female positive)",
    "gender_macro_f1": "Gender macro-F1",
    "n": "Faces",
}
#: Figures that are shares in [0, 1] (reports print them as percentages).
#: Figures that count faces (printed as integers) and figures in years; every other figure is a share.
COUNT_METRICS = frozenset({"n", "gender_ties"})
SHARE_METRICS = frozenset(METRIC_LABELS) - {"age_mae", "age_interval_width"} - COUNT_METRICS
#: Figures a checkpoint can be selected by: higher is better for every one of them but the age MAE (lower).
SELECTABLE_METRICS = tuple(k for k in METRIC_LABELS if k not in COUNT_METRICS | {"age_interval_coverage",
                                                                                   "age_interval_width"})


def format_metric(key: str, value: float | None) -> str:
    """A figure as reports print it: shares as percentages, counts as integers, the rest with 2 decimals,
    undefined as a dash.

    >>> figures = [("group_exact", 0.5071), ("age_mae", 4.567), ("n", 12), ("age_mae", None)]
    >>> [format_metric(k, v) for k, v in figures]
    ['50.7%', '4.57', '12', '–']
    """
    if value is None or math.isnan(value):
        return "–"
    if key in SHARE_METRICS:
        return f"{100 * value:.1f}%"
    return f"{value:.0f}" if key in COUNT_METRICS else f"{value:.2f}"


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred).reshape(-1), np.asarray(true).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"predictions and labels differ in length: {len(pred)} vs {len(true)}")
    return pred, true


def _share(hits: np.ndarray) -> float:
    """Mean of a boolean or float array, nan when empty."""
    return float(np.mean(hits)) if hits.size else math.nan


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def mae(pred_age: ArrayLike, true_age: ArrayLike) -> float:
    """Mean absolute error in years.

    >>> mae([10, 20, 35], [12, 20, 30])
    2.3333333333333335
    """
    pred, true = _pair(pred_age, true_age)
    return _share(np.abs(pred.astype(np.float64) - true))


def cumulative_score(pred: ArrayLike, true: ArrayLike, tolerance: float = CS_TOLERANCE) -> float:
    """Share of ages predicted within ``tolerance`` years (CS@5 by default; the bound counts as a hit).

    >>> cumulative_score([10, 20, 36], [15, 26, 30])
    0.3333333333333333
    """
    pred, true = _pair(pred, true)
    return _share(np.abs(pred.astype(np.float64) - true) <= tolerance)


def interval_coverage(low: ArrayLike, high: ArrayLike, true: ArrayLike) -> float:
    """Share of true values within their interval ``[low, high]`` (the bounds count as inside).

    >>> interval_coverage([20, 30, 0], [30, 40, 2], [25, 41, 2])
    0.6666666666666666
    """
    low, true = _pair(low, true)
    high, _ = _pair(high, true)
    return _share((low <= true) & (true <= high))


def exact_accuracy(pred_group: ArrayLike, true_group: ArrayLike) -> float:
    """Share of predictions equal to the label (age groups, genders, any categorical label).

    >>> exact_accuracy([0, 3, 4, 7], [0, 3, 5, 5])
    0.5
    """
    pred, true = _pair(pred_group, true_group)
    return _share(pred == true)


def one_off_accuracy(pred_group: ArrayLike, true_group: ArrayLike) -> float:
    """Share of age groups predicted exactly or one group off (Levi & Hassner's "1-off").

    >>> one_off_accuracy([0, 3, 4, 7], [0, 3, 5, 5])
    0.75
    """
    pred, true = _pair(pred_group, true_group)
    return _share(np.abs(pred.astype(np.int64) - true) <= 1)


def binary_prf(pred: ArrayLike, true: ArrayLike, positive: int = 1) -> PRF:
    """Precision, recall and F1 of class ``positive`` (female = 1 for gender).

    F1 is ``2TP / (2TP + FP + FN)``, defined even when precision or recall is not; each is nan when its
    denominator is zero.

    >>> binary_prf([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])  # TP 2, FP 1, FN 1
    PRF(precision=0.6666666666666666, recall=0.6666666666666666, f1=0.6666666666666666)
    >>> binary_prf([0, 0], [0, 0]).f1
    nan
    """
    pred, true = _pair(pred, true)
    predicted, actual = pred == positive, true == positive
    tp = int(np.sum(predicted & actual))
    fp, fn = int(np.sum(predicted)) - tp, int(np.sum(actual)) - tp
    return PRF(_ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn))


def macro_f1(pred: ArrayLike, true: ArrayLike, n_classes: int = 2) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions (as scikit-learn's macro average).

    >>> macro_f1([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])  # female F1 2/3, male F1 2*1/(2+1+1) = 1/2
    0.5833333333333333
    >>> macro_f1([0, 0], [0, 0])  # only males: the female class is left out
    1.0
    """
    scores = [binary_prf(pred, true, positive=c).f1 for c in range(n_classes)]
    defined = [s for s in scores if not math.isnan(s)]
    return float(np.mean(defined)) if defined else math.nan


def confusion_matrix(pred: ArrayLike, true: ArrayLike, n: int) -> np.ndarray:
    """Counts of (true, predicted) label pairs: rows are true labels, columns predictions.

    >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    array([[1, 0, 0],
           [0, 1, 0],
           [0, 1, 1]])
    """
    pred, true = _pair(pred, true)
    pred, true = pred.astype(np.int64), true.astype(np.int64)
    if pred.size and (min(pred.min(), true.min()) < 0 or max(pred.max(), true.max()) >= n):
        raise ValueError(f"labels must lie in 0..{n - 1}")
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def normalize_rows(matrix: ArrayLike) -> np.ndarray:
    """Each row divided by its sum, so row ``i`` gives P(predicted | true = i); empty rows stay zero.

    >>> normalize_rows([[1, 3], [0, 0]])
    array([[0.25, 0.75],
           [0.  , 0.  ]])
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the defined values; nan where undefined.

    >>> mean_std([0.5, 0.6, None, 0.7])
    (0.6, 0.09999999999999998)
    """
    defined = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    mean = float(defined.mean()) if defined.size else math.nan
    std = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
    return mean, std


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _labels(values: ArrayLike | None, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as float array plus validity mask; None, nan and negative entries count as missing."""
    if values is None:
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries for {n} predictions")
    with np.errstate(invalid="ignore"):
        return arr, np.isfinite(arr) & (arr >= 0)


def _confusion_entry(counts: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    return {"labels": list(labels), "counts": counts.tolist(), "normalized": normalize_rows(counts).tolist()}


def compute_metrics(
    true_age: ArrayLike | None,
    true_group: ArrayLike | None,
    true_gender: ArrayLike | None,
    decoded: Decoded,
    races: ArrayLike | None = None,
) -> dict[str, Any]:
    """All figures for one evaluation set, as a JSON-serialisable dict.

    Missing labels are masked per task: pass None for a whole column (Adience has no ages in years), or
    None / nan / -1 entries. ``true_group`` None derives groups from ``true_age``. Age figures appear only
    when some true ages exist, gender figures only when gender labels and a gender output exist.

    Returns ``{"overall": {...}, "confusion": {"age_group": ..., "gender": ...}, "by_age_group": {...},
    "by_gender": {...}, "by_race": {...}}``; each breakdown maps a subgroup name to the overall figures
    computed on that subgroup (``n`` faces, figures None when undefined, e.g. an empty subgroup). Subgroups
    follow the true labels; ``races`` holds indices into ``labels.RACES``. Within one gender, precision,
    recall and F1 are degenerate, so ``by_gender`` gives only ``gender_accuracy`` (that class's recall).
    """
    n = decoded.n
    age, age_ok = _labels(true_age, n, "true_age")
    if true_group is None:
        true_group = np.where(age_ok, ages_to_groups(np.where(age_ok, age, 0.0)), -1)
    group, group_ok = _labels(true_group, n, "true_group")
    gender, gender_ok = _labels(true_gender, n, "true_gender")
    race, race_ok = _labels(races, n, "races")
    has_age = decoded.age is not None and bool(age_ok.any())
    pred_age = np.zeros(n) if decoded.age is None else decoded.age
    interval_low = np.zeros(n) if decoded.age_low is None else decoded.age_low
    interval_high = np.zeros(n) if decoded.age_high is None else decoded.age_high
    has_interval = has_age and bool(np.any(interval_high > interval_low))
    has_group = decoded.age_group is not None
    has_gender = decoded.female_prob is not None and bool(gender_ok.any())
    pred_group = decoded.age_group if decoded.age_group is not None else np.zeros(n, dtype=np.int64)
    female_prob = np.zeros(n) if decoded.female_prob is None else decoded.female_prob
    pred_gender = gender_codes(female_prob)
    decided = pred_gender != GENDER_TIE

    def figures(rows: np.ndarray, gender_prf: bool = True) -> dict[str, float | int | None]:
        out: dict[str, float] = {}
        if has_age:
            m = rows & age_ok
            out["age_mae"] = mae(pred_age[m], age[m])
            out["age_cs5"] = cumulative_score(pred_age[m], age[m])
        if has_interval:
            m = rows & age_ok
            low, high = interval_low[m], interval_high[m]
            out["age_interval_coverage"] = interval_coverage(low, high, age[m])
            out["age_interval_width"] = _share(high - low)
        if has_group:
            m = rows & group_ok
            out["group_exact"] = exact_accuracy(pred_group[m], group[m])
            out["group_one_off"] = one_off_accuracy(pred_group[m], group[m])
        if has_gender:
            m = rows & gender_ok
            ties = m & ~decided
            out["gender_accuracy"] = _share((pred_gender[m] == gender[m]) + 0.5 * ~decided[m])
            if ties.any():
                out["gender_ties"] = int(ties.sum())
            m = m & decided
            if gender_prf:
                prf = binary_prf(pred_gender[m], gender[m], positive=1)
                out["gender_precision"], out["gender_recall"], out["gender_f1"] = prf
                out["gender_macro_f1"] = macro_f1(pred_gender[m], gender[m])
        return {**{k: _json_number(v) for k, v in out.items()}, "n": int(rows.sum())}

    def breakdown(labels: np.ndarray, ok: np.ndarray, names: Sequence[str], gender_prf: bool = True
                  ) -> dict[str, dict]:
        return {name: figures(ok & (labels == k), gender_prf) for k, name in enumerate(names)}

    everyone = np.ones(n, dtype=bool)
    result: dict[str, Any] = {"overall": figures(everyone), "confusion": {},
                              "by_age_group": breakdown(group, group_ok, AGE_GROUPS)}
    if has_group:
        result["confusion"]["age_group"] = _confusion_entry(
            confusion_matrix(pred_group[group_ok], group[group_ok], NUM_AGE_GROUPS), AGE_GROUPS)
    if has_gender:
        sure = gender_ok & decided
        result["confusion"]["gender"] = _confusion_entry(
            confusion_matrix(pred_gender[sure], gender[sure], len(GENDERS)), GENDERS)
        result["by_gender"] = breakdown(gender, gender_ok, GENDERS, gender_prf=False)
    if race_ok.any():
        result["by_race"] = breakdown(race, race_ok, RACES)
    return result


def folds_note(figure: Mapping[str, Any], n_folds: int) -> str:
    """For one figure of :func:`summarize_folds`: over how many of the ``n_folds`` it is defined, when not all.

    >>> folds_note({"mean": 0.6, "std": None, "folds": 1}, 3), folds_note({"mean": 0.6, "folds": 3}, 3)
    (' (over 1 of 3 folds)', '')
    """
    some = figure.get("folds", n_folds)
    return f" (over {some} of {n_folds} folds)" if some != n_folds else ""


def summarize_folds(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """k-fold summary of ``compute_metrics`` results: mean and sample std of every overall figure over the folds
    where it is defined (``folds``: how many; a gender precision is undefined in a fold that called no face
    female), confusion matrices pooled over the folds (counts summed), and each fold's overall figures.

    >>> folds = [{"overall": {"group_exact": 0.5, "n": 10}}, {"overall": {"group_exact": 0.7, "n": 12}}]
    >>> s = summarize_folds(folds)
    >>> s["n_folds"], s["overall"]["group_exact"]
    (2, {'mean': 0.6, 'std': 0.14142135623730948, 'folds': 2})
    """
    keys = list(dict.fromkeys(k for fold in folds for k in fold["overall"]))
    overall = {}
    for key in keys:
        values = [fold["overall"].get(key) for fold in folds]
        mean, std = mean_std(values)
        overall[key] = {"mean": _json_number(mean), "std": _json_number(std),
                        "folds": sum(v is not None and not math.isnan(v) for v in values)}
    confusion = {}
    for name in dict.fromkeys(k for fold in folds for k in fold.get("confusion", {})):
        entries = [fold["confusion"][name] for fold in folds if name in fold.get("confusion", {})]
        counts = np.sum([entry["counts"] for entry in entries], axis=0)
        confusion[name] = _confusion_entry(counts, entries[0]["labels"])
    return {"n_folds": len(folds), "overall": overall, "confusion": confusion,
            "folds": [dict(fold["overall"]) for fold in folds]}
