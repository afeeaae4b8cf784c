"""``agegender calibrate MODEL.onnx``: fit the age correction of an exported model and store it in the file."""

from __future__ import annotations

import argparse
from pathlib import Path

from agegender.cli.common import UserError, require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit an exported model's age correction on held-out faces",
                       description=(
        "Fit a monotone correction of the ages an exported model predicts (identity up to a knee, a straight "
        "line above it) for the least mean absolute error on labelled faces it was not trained on (default: "
        "UTKFace's validation split, never the test split), and store it in the file: predict, serve and "
        "evaluate then apply it. Reports the error before, after, and cross-fitted (fitted on one half of the "
        "faces, scored on the other); a correction that does not help the held-out halves is not stored."))
    p.add_argument("model", type=Path, help="an `agegender export` ONNX file (rewritten in place)")
    p.add_argument("--data", choices=("utkface", "manifest"), default="utkface", help="data set (default utkface)")
    p.add_argument("--root", help="UTKFace folder (default: the shared one, ../shared/data/UTKFace) or a CSV "
                                  "manifest")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="faces to fit on: the validation split of the leakage-safe split (default), or all the "
                        "faces of --root (a manifest of faces held out from training)")
    p.add_argument("--tta", choices=("none", "flip"), default="flip",
                   help="the test-time augmentation the model will be used with (default flip, as predict)")
    p.add_argument("--dry-run", action="store_true", help="report the fit, write nothing")
    p.add_argument("--reset", action="store_true", help="remove a stored correction, fit nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch", "onnx")
    from agegender.age_calibration import METADATA_KEY
    from agegender.data.datasets import decode_split
    from agegender.evaluation.calibrate import fit_age_calibration
    from agegender.evaluation.evaluate import evaluation_records, load_evaluable, model_config
    from agegender.export import set_metadata
    from agegender.inference.onnx_model import ModelError

    if args.model.suffix.lower() != ".onnx":
        raise UserError(f"{args.model} is not an exported model: calibrate an .onnx file from `agegender export`")
    try:
        model = load_evaluable(args.model)
    except ModelError as err:
        raise UserError(str(err)) from err
    if args.reset:
        set_metadata(args.model, {METADATA_KEY: ""})
        print(f"removed the age calibration of {args.model}")
        return 0
    if args.data == "utkface" and args.split == "all":
        raise UserError("--split all would fit on UTKFace's test split too: fit on --split val, or on a manifest "
                        "of held-out faces")
    records, description = evaluation_records(args.data, args.root, args.split, progress=not args.quiet)
    data = decode_split(records, model_config(model), not args.quiet)
    fit = fit_age_calibration(model, data.records, data.images, args.tta)
    cal = fit.calibration
    print(f"{description}; test-time augmentation {args.tta}")
    print(f"correction: {cal}")
    print(f"age MAE as decoded      {fit.mae_decoded:.3f} ({fit.n} faces)")
    print(f"age MAE corrected       {fit.mae_calibrated:.3f} (on the faces it was fitted to)")
    print(f"age MAE cross-fitted    {fit.mae_cross_fitted:.3f} (fitted on one half, scored on the other)")
    if not fit.helps:
        print("not stored: the correction does not lower the error of faces it was not fitted to")
        return 0
    if args.dry_run:
        return 0
    set_metadata(args.model, {METADATA_KEY: cal.to_json()})
    print(f"stored in {args.model}; the metrics stored in it predate the correction: re-measure them with "
          f"`agegender evaluate {args.model} --tta {args.tta} --store-metrics`")
    return 0
