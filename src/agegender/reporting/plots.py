"""Figures for evaluation reports, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

matplotlib is imported inside the functions, so the base install, which lacks it, can import this module.
Every function writes a PNG (creating its folder) and returns its path.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from agegender.reporting.metrics import METRIC_LABELS, SHARE_METRICS, format_metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Figures ``plot_breakdown`` draws by default, one panel each, when the breakdown holds them.
BREAKDOWN_FIGURES = ("age_mae", "group_exact", "gender_accuracy")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_confusion(matrix_normalised: ArrayLike, labels: Sequence[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix with every cell annotated, as Levi & Hassner's Table 5
    (rows: true label, columns: prediction)."""
    matrix = np.asarray(matrix_normalised, dtype=np.float64)
    size = 1.5 + 0.75 * len(labels)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45 if len(labels) > 4 else 0)
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_breakdown(metrics: Mapping[str, Any], key: str, path: str | Path,
                   figures: Sequence[str] = BREAKDOWN_FIGURES) -> Path | None:
    """Bar chart of ``figures`` per subgroup of ``metrics[key]`` (e.g. ``"by_age_group"``, ``"by_race"``), one
    panel per figure, each bar labelled with its value and each subgroup with its size; undefined values show
    as a dash. Writes nothing and returns None when no subgroup has any of ``figures``."""
    groups: Mapping[str, Mapping[str, Any]] = metrics[key]
    panels = [f for f in figures if any(g.get(f) is not None for g in groups.values())]
    if not panels:
        return None
    names = list(groups)
    fig = _figure(max(4.0, 0.7 * len(names)) * len(panels), 3.4)
    ticks = [f"{name}\nn={groups[name]['n']}" for name in names]
    for ax, figure in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        values = [groups[name].get(figure) for name in names]
        scale = 100.0 if figure in SHARE_METRICS else 1.0
        bars = ax.bar(range(len(names)), [0.0 if v is None else scale * v for v in values], color="tab:blue")
        ax.bar_label(bars, labels=[format_metric(figure, v) for v in values], fontsize=7)
        ax.set_xticks(range(len(names)), ticks, fontsize=7)
        ax.set(title=METRIC_LABELS.get(figure, figure), ylabel="%" if scale == 100.0 else "years")
        ax.margins(y=0.15)
    fig.suptitle("By " + key.removeprefix("by_").replace("_", " "))
    return _save(fig, path)


def _read_columns(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV; blank cells become nan."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} holds no rows")
    return {name: np.array([float(row[name]) if row.get(name) else math.nan for row in rows])
            for name in rows[0]}


def plot_learning_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Learning curves from the training log: train and validation loss in one panel, then one panel per other
    ``val_*`` column, against ``epoch``."""
    columns = _read_columns(csv_path)
    epoch = columns["epoch"]
    losses = [name for name in ("train_loss", "val_loss") if name in columns]
    others = [name for name in columns if name.startswith("val_") and name != "val_loss"]
    n_cols = min(3, 1 + len(others))
    n_rows = math.ceil((1 + len(others)) / n_cols)
    fig = _figure(4.0 * n_cols, 3.0 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for loss in losses:
        axes[0].plot(epoch, columns[loss], marker="o", markersize=3, label=loss)
    axes[0].set(xlabel="epoch", ylabel="loss", title="Loss")
    axes[0].legend()
    for ax, name in zip(axes[1:], others, strict=False):
        ax.plot(epoch, columns[name], marker="o", markersize=3, color="tab:green")
        ax.set(xlabel="epoch", title=name)
    for ax in axes[1 + len(others):]:
        ax.set_axis_off()
    return _save(fig, png_path)
