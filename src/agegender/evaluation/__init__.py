"""Evaluation: metrics with per-group breakdowns, k-fold summaries, test-time oversampling and reports.

Plain NumPy; the figures in ``plots`` (and the PNGs of ``write_report``) need matplotlib, imported only when
drawing.
"""

from agegender.evaluation.metrics import (
    GENDER_THRESHOLD,
    METRIC_LABELS,
    PRF,
    binary_prf,
    compute_metrics,
    confusion_matrix,
    cumulative_score,
    exact_accuracy,
    format_metric,
    macro_f1,
    mae,
    mean_std,
    normalize_rows,
    one_off_accuracy,
    summarize_folds,
)
from agegender.evaluation.oversample import (
    CROP_ORDER,
    TEN_CROP_ORDER,
    average_crops,
    center_crop,
    flip_average,
    ten_crops,
)
from agegender.evaluation.report import write_report

__all__ = [
    "CROP_ORDER", "GENDER_THRESHOLD", "METRIC_LABELS", "PRF", "TEN_CROP_ORDER",
    "average_crops", "binary_prf", "center_crop", "compute_metrics", "confusion_matrix", "cumulative_score",
    "exact_accuracy", "flip_average", "format_metric", "macro_f1", "mae", "mean_std", "normalize_rows",
    "one_off_accuracy", "summarize_folds", "ten_crops", "write_report",
]
