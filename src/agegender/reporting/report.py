"""Evaluation report: ``metrics.json``, confusion matrices as CSV and PNG, breakdown PNGs and ``report.md``.

``write_report`` takes a ``compute_metrics`` result or a ``summarize_folds`` result (overall figures given as
mean and std, plus a per-fold table). Without matplotlib (the base install) it writes everything but the PNGs.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agegender.oversample import TTA_TEXT
from agegender.reporting.metrics import METRIC_LABELS, folds_note, format_metric

BREAKDOWNS = {"by_age_group": "true age group", "by_gender": "gender", "by_race": "race"}


def _format(key: str, value: Any, n_folds: int | None = None) -> str:
    """One cell: a plain figure, or ``mean ± std`` for a k-fold summary (``over k of n folds`` where the figure
    is undefined in some of its ``n_folds``)."""
    if isinstance(value, Mapping):
        over = folds_note(value, n_folds) if n_folds is not None else ""
        return f"{format_metric(key, value['mean'])} ± {format_metric(key, value['std'])}{over}"
    return format_metric(key, value)


def _short(key: str) -> str:
    """Column header for a figure: its label without the parenthesised detail."""
    return METRIC_LABELS.get(key, key).split(" (")[0]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _figure_table(rows: Mapping[str, Mapping[str, Any]], row_title: str) -> list[str]:
    """Subgroups (or folds) as rows, their figures as columns, ``n`` first."""
    keys = ["n", *(k for k in METRIC_LABELS if k != "n" and any(k in r for r in rows.values()))]
    return _table([row_title, *map(_short, keys)],
                  [[name, *(_format(k, r.get(k)) for k in keys)] for name, r in rows.items()])


def _write_matrix_csv(path: Path, labels: Sequence[str], matrix: Sequence[Sequence[float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([label, *row] for label, row in zip(labels, matrix, strict=True))


def protocol_text(what: str, tta: str) -> str:
    """A report's protocol, one sentence form for every report: what was evaluated and how (data set, split,
    faces, selection), then the test-time augmentation (a mode of :data:`agegender.oversample.TTA_MODES`).

    >>> protocol_text("UTKFace: the validation split (2,078 faces)", "flip")
    'UTKFace: the validation split (2,078 faces). Test-time augmentation: center crop and its mirror, averaged.'
    """
    return f"{what.rstrip('. ')}. Test-time augmentation: {TTA_TEXT[tta]}."


def write_report(metrics: Mapping[str, Any], out_dir: str | Path, title: str, protocol: str,
                 history_csv: str | Path | None = None, figures: bool = True) -> Path:
    """Write the report files for ``metrics`` into ``out_dir`` and return the path of ``report.md``.

    ``protocol`` says in a sentence or two what was evaluated and how (data set, split, oversampling); it heads
    the report and is stored in ``metrics.json`` beside the figures. ``history_csv``, the training engine's
    log, adds learning curves. ``figures=False`` writes the tables alone (no PNG figures), for records that are
    committed by the hundred.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**metrics, "protocol": protocol}, indent=2, allow_nan=False)
                                      + "\n")
    draw = figures and importlib.util.find_spec("matplotlib") is not None
    if draw:
        from agegender.reporting import plots

    md = [f"# {title}", "", f"**Protocol.** {protocol}", ""]
    if "n_folds" in metrics:
        md += [f"Figures are mean ± sample standard deviation over {metrics['n_folds']} folds.", ""]
    md += ["## Overall", ""]
    intervals = metrics.get("intervals", {})
    md += _table(["Metric", "Value", *(["95% interval (bootstrap over faces)"] if intervals else [])],
                 [[METRIC_LABELS.get(k, k), _format(k, v, metrics.get("n_folds")),
                   *([" to ".join(format_metric(k, x) for x in intervals[k]) if k in intervals else ""]
                     if intervals else [])]
                  for k, v in metrics["overall"].items()])

    for name, entry in metrics.get("confusion", {}).items():
        heading = name.replace("_", " ").capitalize()
        labels = entry["labels"]
        _write_matrix_csv(out / f"confusion_{name}.csv", labels, entry["counts"])
        _write_matrix_csv(out / f"confusion_{name}_normalized.csv", labels, entry["normalized"])
        md += [f"## Confusion matrix: {heading}", "",
               "Rows are true labels, columns predictions; a row gives the share (%) of its faces predicted "
               f"as each label. Counts: [confusion_{name}.csv](confusion_{name}.csv).", ""]
        md += _table(["true \\ predicted", *labels],
                     [[label, *(f"{100 * p:.1f}" for p in row)]
                      for label, row in zip(labels, entry["normalized"], strict=True)])
        if draw:
            plots.plot_confusion(entry["normalized"], labels, f"{title}: {heading.lower()}",
                                 out / f"confusion_{name}.png")
            md += [f"![{heading} confusion matrix](confusion_{name}.png)", ""]

    for key, what in BREAKDOWNS.items():
        if key not in metrics:
            continue
        md += [f"## By {what}", ""] + _figure_table(metrics[key], what.capitalize())
        if draw and plots.plot_breakdown(metrics, key, out / f"breakdown_{key}.png"):
            md += [f"![Figures by {what}](breakdown_{key}.png)", ""]

    if "folds" in metrics:
        md += ["## Per fold", ""]
        md += _figure_table({f"Fold {i}": fold for i, fold in enumerate(metrics["folds"], 1)}, "Fold")
    if history_csv is not None and draw:
        plots.plot_learning_curves(history_csv, out / "learning_curves.png")
        md += ["## Learning curves", "", "![Learning curves](learning_curves.png)", ""]
    if figures and not draw:
        md += ["_Figures were not drawn: matplotlib is not installed (`pip install agegender[train]`)._", ""]

    report = out / "report.md"
    report.write_text("\n".join(md))
    return report
