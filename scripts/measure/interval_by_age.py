"""Where the 80% age interval misses, by exact true age, and whether finer bands of the true age help.

The shipped interval is calibrated per model-card age band (``docs/intervals.md``). This measures, on the
validation split only (flip-averaged, after the file's age correction), the cross-fitted coverage of each whole
true age, and compares the card's 8 bands with finer bands of equal counts of the true age over random halvings of
the faces (near-duplicate groups kept together). It reads the test split's labels (not its predictions) to show
how its ages are spread inside the bands.

    python scripts/measure/logged.py docs/logs/interval_by_age.md -- python scripts/measure/interval_by_age.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from agegender.age_calibration import METADATA_KEY, AgeCalibration, age_band_edges
from agegender.data.datasets import decode_split
from agegender.evaluation.calibrate import Coverage, cross_fitted_bounds, halves
from agegender.evaluation.evaluate import evaluation_records, load_evaluable, predict_faces
from agegender.labels import AGE_GROUPS
from agegender.models import config_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("src/agegender/weights/flagship_int8.onnx"))
    parser.add_argument("--root", type=Path, default=None, help="UTKFace folder (default: the shared one)")
    parser.add_argument("--halvings", type=int, default=10)
    parser.add_argument("--bands", type=int, nargs="+", default=[12, 16, 20], help="finer bands to compare")
    args = parser.parse_args()

    model = load_evaluable(args.model)
    records, description = evaluation_records("utkface", args.root, "val", progress=False)
    data = decode_split(records, config_of(model), False)
    decoded = predict_faces(model, data.images, "flip", calibrated=False)
    assert decoded.age is not None and decoded.age_low is not None and decoded.age_high is not None
    stored = dict(model.onnx.metadata).get(METADATA_KEY)
    correct = AgeCalibration.from_json(stored).point if stored else (lambda a: a)
    age, low, high = (np.asarray(correct(np.asarray(v, np.float64))) for v in
                      (decoded.age, decoded.age_low, decoded.age_high))
    true = np.array([r.age for r in data.records], np.float64)
    test_records, _ = evaluation_records("utkface", args.root, "test", progress=False)
    test_ages = np.array([r.age for r in test_records], np.float64)
    print(f"{args.model}; {description}; flip; after the file's age correction; {args.halvings} random "
          "halvings (groups kept together), each half calibrated on the other\n")

    covered = np.zeros(len(true))
    for seed in range(args.halvings):
        new_low, new_high = cross_fitted_bounds(age, low, high, true, halves(data.records, seed))
        covered += (new_low <= true) & (true <= new_high)
    covered /= args.halvings
    print("Card bands (as shipped), cross-fitted coverage by whole true age, ages with at least 20 validation "
          "faces:\n")
    print("| true age | card band | validation faces | coverage % | test faces |\n|---|---|---|---|---|")
    band = np.searchsorted(age_band_edges(), true, side="right")
    for a in np.unique(true):
        m = true == a
        if m.sum() >= 20:
            print(f"| {a:.0f} | {AGE_GROUPS[band[m][0]]} | {m.sum()} | {100 * covered[m].mean():.1f} | "
                  f"{int((test_ages == a).sum())} |")

    print("\nCard bands against finer bands of the true age (mean over the halvings; within 25-32: the spread, "
          "as a standard deviation, of the coverage of its whole ages with 25 or more faces):\n")
    print("| bands | all | " + " | ".join(AGE_GROUPS) + " | worst distance from 80 | spread in 25-32 | width |")
    print("|---" * (len(AGE_GROUPS) + 5) + "|")
    inside = [a for a in range(23, 35) if (true == a).sum() >= 25]
    for bands in (None, *args.bands):
        rows = []
        for seed in range(args.halvings):
            new_low, new_high = cross_fitted_bounds(age, low, high, true, halves(data.records, seed), bands=bands)
            cov = Coverage.of(new_low, new_high, true)
            hit = (new_low <= true) & (true <= new_high)
            rows.append([cov.overall, *cov.by_band, cov.worst(), np.std([hit[true == a].mean() for a in inside]),
                         cov.width])
        mean = np.mean(rows, axis=0)
        print(f"| {bands or 'card (8)'} | " + " | ".join(f"{100 * v:.1f}" for v in mean[:-1])
              + f" | {mean[-1]:.2f} |")


if __name__ == "__main__":
    main()
