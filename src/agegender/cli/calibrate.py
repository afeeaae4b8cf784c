"""``agegender calibrate MODEL.onnx``: fit the age correction of an exported model and the calibration of its 80%
interval, and store both in the file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agegender.cli.common import UserError, require_extra
from agegender.models import config_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

    from agegender.age_calibration import AgeCalibration
    from agegender.data.records import FaceRecord
    from agegender.evaluation.calibrate import CalibrationFit, IntervalFit
    from agegender.outputs import Decoded

INTERVAL_BANDS = {"true-age": "true_age", "predicted-age": "predicted_age"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit an exported model's age correction and interval on held-out faces",
                       description=(
        "Fit a monotone correction of the ages an exported model predicts (identity up to a knee, a straight "
        "line above it) for the least mean absolute error on labelled faces it was not trained on (default: "
        "UTKFace's validation split, never the test split), then, after it, a calibration of the 80% interval "
        "(age_range): its reach on each side of the age scaled per age band so that 80% of true ages fall "
        "inside in every band (split conformal prediction). Both are stored in the file: predict, serve and "
        "evaluate then apply them. Reports the error and the coverage before, after, and cross-fitted (fitted on "
        "one half of the faces, scored on the other); a correction that does not help the held-out halves is "
        "not stored."))
    p.add_argument("model", help="an `agegender export` ONNX file (rewritten in place), or a shipped model's name "
                                 "(flagship, flagship-int8: the package's own file)")
    p.add_argument("--data", choices=("utkface", "manifest"), default="utkface", help="data set (default utkface)")
    p.add_argument("--root", help="UTKFace folder (default: the shared one, ../shared/data/UTKFace) or a CSV "
                                  "manifest")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="faces to fit on: the validation split of the deduplicated split (default), or all the "
                        "faces of --root (a manifest of faces held out from training)")
    p.add_argument("--tta", choices=("none", "flip"), default="flip",
                   help="the test-time augmentation the model will be used with (default flip, as predict)")
    p.add_argument("--interval-bands", choices=tuple(INTERVAL_BANDS), default="true-age",
                   help="bands the interval is calibrated in: of the true age, the model card's 8 age groups "
                        "(default: 80%% coverage in each of them), or ten of the predicted age (80%% among "
                        "faces given a similar age)")
    p.add_argument("--no-interval", action="store_true",
                   help="fit the age correction only, and remove a stored interval calibration")
    p.add_argument("--dry-run", action="store_true", help="report the fit, write nothing")
    p.add_argument("--reset", action="store_true", help="remove the stored correction and interval calibration, "
                                                        "fit nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def coverage_lines(fit: IntervalFit) -> list[str]:
    """The interval fit as a table: coverage overall and per true-age band, and mean width, per stage."""
    from agegender.labels import AGE_GROUPS

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    header = f"{'80% interval coverage (%)':30s}{'all':>7s}" + "".join(f"{g:>7s}" for g in AGE_GROUPS)
    lines = [header, f"{'  faces':30s}{fit.n:7d}" + "".join(f"{n:7d}" for n in fit.decoded.n_by_band)]
    for name, cov in (("as decoded", fit.decoded), ("calibrated (fitted faces)", fit.calibrated),
                      ("cross-fitted", fit.cross_fitted)):
        lines.append(f"{'  ' + name:30s}{pct(cov.overall):>7s}" + "".join(f"{pct(c):>7s}" for c in cov.by_band)
                     + f"   width {cov.width:.2f} years")
    return lines


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch", "onnx")
    from agegender.data.datasets import decode_split
    from agegender.evaluation.calibrate import fit_on_predictions
    from agegender.evaluation.evaluate import ExportedModel, evaluation_records, predict_faces

    model = _open(args)
    if args.reset:
        return _reset(args)
    if args.data == "utkface" and args.split == "all":
        raise UserError("--split all would fit on UTKFace's test split too: fit on --split val, or on a manifest "
                        "of held-out faces")
    records, description = evaluation_records(args.data, args.root, args.split, progress=not args.quiet)
    data = decode_split(records, config_of(model), not args.quiet)
    decoded = predict_faces(model, data.images, args.tta, calibrated=False)
    if decoded.age is None:
        raise UserError(f"{config_of(model).name} predicts no age: there is nothing to calibrate")
    fit = fit_on_predictions(decoded.age, data.records)
    print(f"{description}; test-time augmentation {args.tta}")
    print(f"correction: {fit.calibration}")
    print(f"age MAE as decoded      {fit.mae_decoded:.3f} ({fit.n} faces)")
    print(f"age MAE corrected       {fit.mae_calibrated:.3f} (on the faces it was fitted to)")
    print(f"age MAE cross-fitted    {fit.mae_cross_fitted:.3f} (fitted on one half, scored on the other)")
    metadata: dict[str, str] = dict(model.onnx.metadata) if isinstance(model, ExportedModel) else {}
    correction, updates = _correction(fit, metadata)
    updates.update(_interval_updates(args, decoded, data.records, fit.helps, correction, metadata))
    if not args.dry_run and updates:
        _store(args, updates, metadata)
    return 0


def _open(args: argparse.Namespace) -> nn.Module:
    """The model to calibrate: a shipped name or an exported file (``args.model`` becomes its path)."""
    from agegender.evaluation.evaluate import load_evaluable
    from agegender.inference.onnx_model import ModelError, model_path

    try:
        args.model = model_path(args.model)  # a shipped name, or the file as given
    except ModelError as err:
        raise UserError(str(err)) from err
    if args.model.suffix.lower() != ".onnx":
        raise UserError(f"{args.model} is not an exported model: calibrate an .onnx file from `agegender export`")
    try:
        return load_evaluable(args.model)
    except ModelError as err:
        raise UserError(str(err)) from err


def _reset(args: argparse.Namespace) -> int:
    """``--reset``: both calibrations taken out of the file (or said, with ``--dry-run``)."""
    from agegender.age_calibration import INTERVAL_METADATA_KEY, METADATA_KEY
    from agegender.inference.backends import set_metadata

    if args.dry_run:
        print(f"would remove the age calibration and the interval calibration of {args.model} (--dry-run: "
              "nothing written)")
        return 0
    set_metadata(args.model, {METADATA_KEY: "", INTERVAL_METADATA_KEY: ""})
    print(f"removed the age calibration and the interval calibration of {args.model}")
    return 0


def _correction(fit: CalibrationFit, metadata: dict[str, str]) -> tuple[AgeCalibration | None, dict[str, str]]:
    """The age correction the file will hold (the new fit where it helps held-out faces, else the file's own) and
    the metadata to write for it."""
    from agegender.age_calibration import METADATA_KEY, AgeCalibration

    if fit.helps:
        return fit.calibration, {METADATA_KEY: fit.calibration.to_json()}
    stored = AgeCalibration.from_json(metadata[METADATA_KEY]) if metadata.get(METADATA_KEY) else None
    print("not stored: the correction does not lower the error of faces it was not fitted to"
          + (f"; the file keeps its own ({stored})" if stored else ""))
    return stored, {}


def _interval_updates(args: argparse.Namespace, decoded: Decoded, records: Sequence[FaceRecord], refitted: bool,
                      correction: AgeCalibration | None, metadata: dict[str, str]) -> dict[str, str]:
    """The metadata to write for the interval: its calibration, fitted after ``correction``, where it brings the
    held-out coverage closer to 80%; an empty value to remove one that would be stale; nothing to keep the file's."""
    from agegender.age_calibration import INTERVAL_METADATA_KEY, IntervalCalibration
    from agegender.evaluation.calibrate import fit_interval_calibration

    if args.no_interval or decoded.age_low is None:
        print("interval: not calibrated (" + ("--no-interval" if args.no_interval
                                              else "the model regresses a point age: it has no interval") + ")")
        return {INTERVAL_METADATA_KEY: ""} if metadata.get(INTERVAL_METADATA_KEY) else {}
    interval = fit_interval_calibration(decoded, records, INTERVAL_BANDS[args.interval_bands], correction,
                                        metadata.get("quantization"))
    print(f"interval: {interval.calibration}")
    print("\n".join(coverage_lines(interval)))
    print("(the interval fitted on one half of the faces and scored on the other for cross-fitted, after the "
          "age correction above)")
    if interval.helps:
        return {INTERVAL_METADATA_KEY: interval.calibration.to_json()}
    print("interval calibration left out: it does not bring the held-out coverage per age band closer to "
          f"{100 * interval.calibration.coverage:g}%")
    own = IntervalCalibration.from_metadata(metadata)
    if own is not None and not refitted and own.fits(correction, metadata.get("quantization")):
        print(f"the file keeps its own ({own})")  # fitted after the correction it keeps, on other faces
        return {}
    return {INTERVAL_METADATA_KEY: ""} if own is not None else {}  # fitted after another correction: stale


def _store(args: argparse.Namespace, updates: dict[str, str], metadata: dict[str, str]) -> None:
    """Write ``updates`` into the file and say what changed."""
    from agegender.age_calibration import INTERVAL_METADATA_KEY, METADATA_KEY
    from agegender.inference.backends import set_metadata

    set_metadata(args.model, updates)
    stored_what = " and ".join(w for k, w in ((METADATA_KEY, "the correction"),
                                              (INTERVAL_METADATA_KEY, "the interval calibration"))
                               if updates.get(k))
    if stored_what and metadata.get("metrics", "{}") not in ("", "{}"):
        print(f"stored {stored_what} in {args.model}; the metrics stored in it predate them: re-measure them "
              f"with `agegender evaluate {args.model} --tta {args.tta} --store-metrics`")
    if INTERVAL_METADATA_KEY in updates and not updates[INTERVAL_METADATA_KEY]:
        print(f"removed the interval calibration of {args.model}")
