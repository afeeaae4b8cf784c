"""How good is an ensemble of models (e.g. as a distillation teacher)? Each model alone, then their average.

Every model (checkpoint or exported ONNX, each at its own input size and crop) predicts every face of a UTKFace
split with the chosen test-time augmentation; the ensemble averages their outputs as test-time oversampling
does (probabilities, turned back into logits). Example, the v4 teacher of
``docs/flagship/experiments/v4_warm_ensemble``:
``python scripts/measure/score_ensemble.py V2.onnx src/agegender/weights/flagship.onnx --split val --tta flip``.
Ages are the networks' own decodes, before any age calibration a file carries (a correction belongs to one
model, not to an average), so a calibrated file scores here as it did before ``agegender calibrate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agegender.data.datasets import DataConfig, dataset_splits
from agegender.evaluation.compare import COMPARABLE, compare_faces, face_arrays
from agegender.evaluation.evaluate import face_metrics, load_evaluable, outputs_on
from agegender.outputs import decode
from agegender.oversample import TTA_MODES, average_outputs

FIGURES = {"age_mae": ("MAE", 1.0, "{:.3f}"), "gender_accuracy": ("gender", 100.0, "{:.2f}%"),
           "group_exact": ("group exact", 100.0, "{:.2f}%")}


def row(name: str, metrics: dict) -> str:
    cells = (fmt.format(metrics["overall"][key] * scale) for key, (_, scale, fmt) in FIGURES.items())
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="checkpoints (.pt) or exported models (.onnx)")
    parser.add_argument("--root", help="UTKFace folder (default: the shared one)")
    parser.add_argument("--split", default="val", choices=("test", "val"))
    parser.add_argument("--tta", default="none", choices=TTA_MODES)
    parser.add_argument("--mirror-odd", action="store_true",
                        help="also score the ensemble whose 2nd, 4th, ... model sees each face mirrored, each model "
                             "once (no other test-time augmentation): with two models, the cost of one with flip")
    args = parser.parse_args()
    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        parser.error(f"no such model file: {', '.join(missing)}")
    records = dataset_splits(DataConfig(dataset="utkface", root=args.root), progress=False)[args.split]
    models = [load_evaluable(p) for p in args.models]
    try:  # each model at its own input: models of different sizes average face by face
        outputs = [outputs_on(m, records, tta=args.tta, progress=True) for m in models]
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(f"UTKFace {args.split} split, {len(records)} faces, tta {args.tta}")
    print("| Model | " + " | ".join(label for label, _, _ in FIGURES.values()) + " |")
    print("|---" * (len(FIGURES) + 1) + "|")
    for path, out in zip(args.models, outputs, strict=True):
        print(row(str(path), face_metrics(records, decode(out))))
    if len(models) > 1:
        ensemble = decode(average_outputs(outputs))
        print(row(f"ensemble of {len(models)}", face_metrics(records, ensemble)))
    if args.mirror_odd and len(models) > 1:
        views = decode(average_outputs([outputs_on(m, records, mirrored=bool(k % 2)) for k, m in enumerate(models)]))
        print(row(f"ensemble of {len(models)}, one view each (every 2nd model mirrored)", face_metrics(records, views)))
        flipped = outputs[0] if args.tta == "flip" else outputs_on(models[0], records, tta="flip")
        print(f"\nOne view each against {args.models[0]} with flip (paired bootstrap, 95% interval; + is better):")
        for metric in FIGURES:
            better = compare_faces(face_arrays(records, views), face_arrays(records, decode(flipped)), metric)
            if better is not None:
                print(f"- {metric}: {better[0]:+.3f} {COMPARABLE[metric]} ({better[1]:+.3f} to {better[2]:+.3f})")


if __name__ == "__main__":
    main()
