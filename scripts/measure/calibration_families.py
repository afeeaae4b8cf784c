"""Which age correction family should ``agegender calibrate`` fit? Each candidate is fitted on a random half of
the validation faces and scored on the other half, over many random halvings; the table gives the mean change of
the held-out MAE (negative: the correction helps faces it was not fitted to). First, what there is to correct:
the median of (true - predicted) age for the faces predicted in each decade.

    python scripts/measure/calibration_families.py src/agegender/weights/flagship.onnx [--halvings 20]

Candidates: the hinge ``agegender calibrate`` fits (:class:`agegender.age_calibration.AgeCalibration`), a constant
shift by the median residual, and piecewise-linear corrections through the median residual of k bins of equal
counts of predicted age. Ages are the model's own decodes (any correction stored in the file is not applied).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agegender.age_calibration import AgeCalibration
from agegender.data.datasets import DataConfig, dataset_splits, decode_split
from agegender.evaluation.evaluate import load_evaluable, predict_faces
from agegender.models import config_of
from agegender.oversample import TTA_MODES

Correction = Callable[[np.ndarray], np.ndarray]


def fit_shift(predicted: np.ndarray, true: np.ndarray) -> Correction:
    shift = float(np.median(true - predicted))
    return lambda ages: ages + shift


def fit_bins(bins: int) -> Callable[[np.ndarray, np.ndarray], Correction]:
    def fit(predicted: np.ndarray, true: np.ndarray) -> Correction:
        edges = np.quantile(predicted, np.linspace(0, 1, bins + 1))
        inside = [(predicted >= lo) & (predicted <= hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        centres = [float(np.median(predicted[m])) for m in inside]
        residuals = [float(np.median(true[m] - predicted[m])) for m in inside]
        return lambda ages: ages + np.interp(ages, centres, residuals)
    return fit


FAMILIES: dict[str, Callable[[np.ndarray, np.ndarray], Correction]] = {
    "hinge (agegender calibrate)": AgeCalibration.fit,
    "constant shift": fit_shift,
    **{f"piecewise linear, {k} bins": fit_bins(k) for k in (3, 5, 8, 12)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported .onnx model or a checkpoint")
    parser.add_argument("--root", help="UTKFace folder (default: the shared one)")
    parser.add_argument("--tta", default="flip", choices=TTA_MODES)
    parser.add_argument("--halvings", type=int, default=20)
    args = parser.parse_args()
    model = load_evaluable(args.model)
    records = dataset_splits(DataConfig(dataset="utkface", root=args.root), progress=False)["val"]
    data = decode_split(records, config_of(model), progress=True)
    predicted = predict_faces(model, data.images, args.tta, calibrated=False).age
    true = np.array([r.age for r in data.records], dtype=np.float64)
    rng = np.random.default_rng(0)
    halvings = [rng.permutation(len(true)) for _ in range(args.halvings)]
    print(f"{args.model}: UTKFace validation split, {len(true)} faces, tta {args.tta}, decoded MAE "
          f"{np.abs(predicted - true).mean():.3f}; {args.halvings} random halvings")
    print("| Predicted age | faces | median true - predicted (years) |\n|---|---|---|")
    for decade in range(0, 100, 10):
        inside = (predicted >= decade) & (predicted < decade + 10)
        if inside.any():
            print(f"| {decade}-{decade + 9} | {inside.sum()} | {np.median(true[inside] - predicted[inside]):+.1f} |")
    print("| Correction | held-out MAE change (years) | sd |\n|---|---|---|")
    for name, fit in FAMILIES.items():
        changes = []
        for order in halvings:
            a, b = order[: len(order) // 2], order[len(order) // 2:]
            corrected = fit(predicted[a], true[a])(predicted[b])
            changes.append(np.abs(corrected - true[b]).mean() - np.abs(predicted[b] - true[b]).mean())
        print(f"| {name} | {np.mean(changes):+.3f} | {np.std(changes):.3f} |")


if __name__ == "__main__":
    main()
