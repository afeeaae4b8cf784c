"""Evaluation and cross-validation end to end on real faces: a tiny trained checkpoint and its ONNX export
give the same figures, reports come out for every TTA mode, Adience folds are read, k-fold gives mean ± std
and resumes; the cross-validation schemes, config ``base:`` includes and data filters; every seed config loads
and builds its model; the reproduction table reads "not run" for what has not run and judges claims.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

from agegender.age_calibration import METADATA_KEY, AgeCalibration
from agegender.cli import main
from agegender.data.datasets import (
    DataConfig,
    dataset_splits,
    decode_split,
    filter_records,
    limit_records,
    select_records,
)
from agegender.data.records import FaceRecord
from agegender.evaluation.calibrate import fit_age_calibration
from agegender.evaluation.compare import compare_faces, face_arrays, face_scores
from agegender.evaluation.crossval import plan_runs
from agegender.evaluation.evaluate import (
    evaluate_model,
    evaluation_records,
    load_evaluable,
    outputs_on,
    predict_faces,
)
from agegender.export import export_onnx
from agegender.inference import backends
from agegender.inference.backends import set_metadata
from agegender.inference.onnx_model import OnnxAgeGender, shipped_model_path
from agegender.models import config_of, create_model
from agegender.outputs import Decoded, decode
from agegender.oversample import average_outputs
from agegender.training.checkpoint import load_model
from agegender.training.config import TrainConfig, load_config
from agegender.training.engine import train

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIGS = sorted((REPO / "configs" / "seeds").glob("*/[!_]*.yaml"))
TINY: dict[str, Any] = {"model": "vu_multitask", "epochs": 1, "batch_size": 64, "threads": 1}




@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, manifest: Path) -> Path:
    """A 64 px model trained for one epoch on 200 faces."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(**TINY, data=DataConfig(dataset="manifest", root=str(manifest), train_limit=200))
    train(cfg, run_dir, progress=False)
    return run_dir / "best.pt"


def test_checkpoint_and_its_onnx_export_give_the_same_figures(checkpoint: Path, manifest: Path,
                                                              tmp_path: Path) -> None:
    records, _ = evaluation_records("manifest", str(manifest), "all", progress=False)
    onnx_path = export_onnx(load_model(checkpoint), tmp_path / "model.onnx")
    for tta in ("none", "flip"):
        torch_figures = evaluate_model(checkpoint, records, tta=tta)["overall"]
        onnx_figures = evaluate_model(onnx_path, records, tta=tta)["overall"]
        assert torch_figures["n"] == onnx_figures["n"] == len(records) > 250
        assert onnx_figures["age_mae"] == pytest.approx(torch_figures["age_mae"], abs=1e-3)
        for key in ("group_exact", "gender_accuracy"):  # one borderline face may flip
            assert onnx_figures[key] == pytest.approx(torch_figures[key], abs=1.5 / len(records))


def test_a_model_on_each_face_and_on_its_mirror_averages_to_flip(utkface_dir: Path) -> None:
    """``outputs_on(..., mirrored=True)`` scores the mirror of each face: averaged with the plain view it is flip
    averaging, and it is not the plain view itself (a randomly initialised network is far from symmetric)."""
    torch.manual_seed(0)
    model = create_model("flagship").eval()
    records = dataset_splits(DataConfig(dataset="utkface", root=str(utkface_dir)), progress=False)["val"][:24]
    plain, mirrored = (outputs_on(model, records, mirrored=m) for m in (False, True))
    flipped = outputs_on(model, records, tta="flip")
    assert all(np.abs(plain[key] - mirrored[key]).max() > 1e-3 for key in plain)
    for key, value in average_outputs([plain, mirrored]).items():
        np.testing.assert_allclose(value, flipped[key], rtol=1e-5, atol=1e-5)


def test_evaluate_command_writes_a_report_per_tta_mode(checkpoint: Path, manifest: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", str(checkpoint), "--data", "manifest", "--root", str(manifest), "--split", "all",
                 "--tta", "all", "--out", str(out), "-q"]) == 0
    for tta in ("none", "flip", "ten_crop"):
        for name in ("metrics.json", "report.md", "confusion_age_group.csv", "confusion_gender.csv"):
            assert (out / tta / name).is_file(), f"{tta}/{name}"
    summary = json.loads((out / "summary.json").read_text())
    assert {"age_mae", "group_exact", "gender_f1", "n"} <= set(summary["none"])
    # a 64 px model is fed its whole image: its 10 crops are 5 copies of it and 5 of its mirror
    assert summary["ten_crop"]["age_mae"] == pytest.approx(summary["flip"]["age_mae"], abs=1e-6)
    assert "the same as flip" in (out / "ten_crop" / "report.md").read_text()  # it said "4 corners and center"
    assert "by_race" in json.loads((out / "none" / "metrics.json").read_text())


def test_evaluate_stores_the_metrics_of_an_exported_model(checkpoint: Path, manifest: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    onnx_path = export_onnx(load_model(checkpoint), tmp_path / "model.onnx")
    common = ["--data", "manifest", "--root", str(manifest), "--split", "all", "-q", "--store-metrics"]
    assert main(["evaluate", str(onnx_path), "--tta", "flip", "--out", str(tmp_path / "eval"), *common]) == 0
    stored = OnnxAgeGender(onnx_path).metrics
    report = json.loads((tmp_path / "eval" / "flip" / "metrics.json").read_text())
    assert stored.pop("protocol") == report["protocol"] and "its mirror" in report["protocol"]  # how measured
    assert stored == pytest.approx(report["overall"]) and stored["n"] > 250
    set_metadata(onnx_path, {"metrics": "{}"})  # --tta all: one evaluation, the flip figures stored
    assert main(["evaluate", str(onnx_path), "--tta", "all", "--out", str(tmp_path / "all"), *common]) == 0
    again = OnnxAgeGender(onnx_path).metrics
    assert again.pop("protocol") == report["protocol"] and again == pytest.approx(report["overall"])
    capsys.readouterr()
    assert main(["evaluate", str(checkpoint), "--tta", "flip", *common]) == 2
    assert "needs an exported .onnx model" in capsys.readouterr().err
    # by default as predict runs (flip): the plain command once stored centre-crop figures over the flip ones
    assert main(["evaluate", str(onnx_path), "--out", str(tmp_path / "default"), *common]) == 0
    assert sorted(p.name for p in (tmp_path / "default").iterdir() if p.is_dir()) == ["flip"]
    assert OnnxAgeGender(onnx_path).metrics == pytest.approx({**report["overall"], "protocol": report["protocol"]})


def uncalibrated_flagship(folder: Path) -> Path:
    """A copy of the shipped float32 flagship without the age correction it carries."""
    path = Path(shutil.copy(shipped_model_path("flagship"), folder / "flagship.onnx"))
    return set_metadata(path, {METADATA_KEY: ""})


def test_a_planted_age_bias_is_found_and_the_stored_correction_is_applied_everywhere(
        manifest: Path, tmp_path: Path) -> None:
    """Relabel real faces so that the float flagship over-estimates everyone above 25 by a factor 1/0.8: the fit
    finds that hinge again; stored in the export, predict, describe and evaluation all apply it."""
    onnx_path = uncalibrated_flagship(tmp_path)
    model = load_evaluable(onnx_path)
    records, _ = evaluation_records("manifest", str(manifest), "all", progress=False)
    data = decode_split(records, config_of(model), progress=False)
    predicted = predict_faces(model, data.images, "flip").age
    planted = AgeCalibration(knee=25.0, slope=0.8)
    assert np.mean(predicted > 30) > 0.2  # enough faces above the knee to find it
    relabelled = [dataclasses.replace(r, age=float(a)) for r, a in zip(data.records, planted(predicted), strict=True)]
    fit = fit_age_calibration(model, relabelled, data.images, "flip")
    assert fit.calibration.knee == pytest.approx(25, abs=1.5) and fit.calibration.slope == pytest.approx(0.8, abs=0.01)
    assert fit.mae_calibrated < 0.1 and fit.mae_cross_fitted < 0.2 < fit.mae_decoded and fit.helps

    set_metadata(onnx_path, {METADATA_KEY: planted.to_json()})
    stored = OnnxAgeGender(onnx_path)
    assert stored.age_calibration == planted and stored.describe()["age_calibration"] == {"knee": 25.0, "slope": 0.8}
    chips = [cv2.imread(str(r.path)) for r in data.records[:16]]
    raw = decode(stored.outputs(chips))
    corrected = stored.predict(chips)
    for key in ("age", "age_low", "age_high"):
        np.testing.assert_allclose(getattr(corrected, key), planted(getattr(raw, key)), err_msg=key)
    np.testing.assert_allclose(predict_faces(load_evaluable(onnx_path), data.images, "flip").age,
                               planted(predicted), atol=1e-4)


def test_calibrate_command_reports_stores_and_resets(checkpoint: Path, manifest: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    onnx_path = uncalibrated_flagship(tmp_path)
    command = ["calibrate", str(onnx_path), "--data", "manifest", "--root", str(manifest), "--split", "all", "-q"]
    assert main([*command, "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert "age MAE cross-fitted" in report and OnnxAgeGender(onnx_path).age_calibration is None
    assert main(command) == 0
    report = capsys.readouterr().out
    fitted = OnnxAgeGender(onnx_path).age_calibration
    assert (fitted is None) == ("not stored" in report)  # stored exactly when it helps held-out halves
    set_metadata(onnx_path, {METADATA_KEY: AgeCalibration(knee=30.0, slope=0.9).to_json()})
    before = onnx_path.read_bytes()
    assert main(["calibrate", str(onnx_path), "--reset", "--dry-run"]) == 0  # reports, writes nothing
    assert onnx_path.read_bytes() == before and "would remove" in capsys.readouterr().out
    assert main(["calibrate", str(onnx_path), "--reset"]) == 0
    assert OnnxAgeGender(onnx_path).age_calibration is None
    capsys.readouterr()
    assert main(["calibrate", str(onnx_path), "--split", "all"]) == 2
    assert "test split" in capsys.readouterr().err
    assert main(["calibrate", str(checkpoint)]) == 2
    assert "not an exported model" in capsys.readouterr().err


def test_evaluate_reads_the_official_adience_fold_of_the_sample(checkpoint: Path, shared_dir: Path) -> None:
    sample, folds = shared_dir / "data" / "adience_sample", shared_dir / "data" / "adience_folds"
    if not (sample.is_dir() and folds.is_dir()):
        pytest.skip(f"needs {sample} and {folds}")
    records, text = evaluation_records("adience", str(sample), folds=[0], adience_folds=folds)
    assert 280 <= len(records) <= 288 and "fold(s) 0" in text  # the one user's faces with both labels
    overall = evaluate_model(checkpoint, records)["overall"]
    assert overall["n"] == len(records) and "age_mae" not in overall  # Adience has groups, not ages
    assert 0 <= overall["group_exact"] <= overall["group_one_off"] <= 1
    assert overall["gender_accuracy"] is not None


def test_evaluate_command_names_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(tmp_path / "nope.pt"), "-q"]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "-q"]) == 2  # a folder is a run: its best.pt
    assert f"no checkpoint at {tmp_path / 'best.pt'}" in capsys.readouterr().err
    assert main(["models", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder, not a model file" in capsys.readouterr().err


def test_export_and_evaluate_take_a_run_folder_and_predict_names_a_checkpoint(
        checkpoint: Path, manifest: Path, utkface_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run folder stands for its best.pt; a checkpoint given where an export is needed says how to make one
    (OpenVINO's parse error said nothing of the kind)."""
    run_dir, out = checkpoint.parent, tmp_path / "model.onnx"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert OnnxAgeGender(out).config == config_of(load_model(checkpoint))
    assert main(["evaluate", str(run_dir), "--data", "manifest", "--root", str(manifest), "--split", "all",
                 "--tta", "none", "-q"]) == 0
    assert (run_dir / "eval_manifest_all" / "none" / "metrics.json").is_file()  # beside its checkpoints
    capsys.readouterr()
    for backend in backends.available_backends():
        assert main(["predict", str(sorted(utkface_dir.iterdir())[0]), "--model", str(checkpoint),
                     "--backend", backend]) == 2
        err = capsys.readouterr().err
        assert "is a PyTorch checkpoint, not an ONNX model" in err and len(err.strip().splitlines()) == 1, err


def test_crossval_on_two_group_folds_gives_mean_and_std_and_resumes(manifest: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {"dataset": "manifest", "root": str(manifest),
                                                       "train_limit": 128}}))
    command = ["crossval", str(config), "--folds", "2", "--run-dir", str(tmp_path / "cv"), "-q"]
    assert main(command) == 0
    assert "±" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cv" / "test_none" / "metrics.json").read_text())
    assert summary["n_folds"] == 2 and len(summary["folds"]) == 2
    for key in ("age_mae", "group_exact", "gender_accuracy"):
        assert summary["overall"][key]["mean"] is not None and summary["overall"][key]["std"] is not None
    report = (tmp_path / "cv" / "test_none" / "report.md").read_text()
    assert "mean ± sample standard deviation over 2 folds" in report
    stamps = [(tmp_path / "cv" / f"fold{i}" / "best.pt").stat().st_mtime_ns for i in range(2)]
    assert main(command) == 0  # finished folds are reused, not retrained
    assert [(tmp_path / "cv" / f"fold{i}" / "best.pt").stat().st_mtime_ns for i in range(2)] == stamps
    capsys.readouterr()
    # another experiment in the same folder would reuse these folds as its own: refused, nothing retrained
    for changed, named in (([*command, "-s", "optimizer.lr=0.01"], "optimizer.lr: "),
                           ([*command[:3], "3", *command[4:]], "scheme or folds (it ran group over runs fold0, fold1")):
        assert main(changed) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'cv'} holds another cross-validation" in err and named in err, err
    assert [(tmp_path / "cv" / f"fold{i}" / "best.pt").stat().st_mtime_ns for i in range(2)] == stamps
    assert main([*command, "-s", "threads=1"]) == 0  # what may change on a resume may change here


def _folds(k: int, per_fold: int = 3) -> list[list[FaceRecord]]:
    return [[FaceRecord(f"f{i}_{j}.jpg", 30.0, 4, j % 2, None, f"g{i}_{j}") for j in range(per_fold)]
            for i in range(k)]


def test_crossval_schemes_assign_the_folds_as_their_papers_do() -> None:
    folds = _folds(5, per_fold=40)
    fixed, = plan_runs(folds, "seed001-fixed")  # seed 001: folds 0-2 train, 3 validation, 4 test
    assert (fixed.splits["train"], fixed.splits["val"], fixed.splits["test"]) == (
        folds[0] + folds[1] + folds[2], folds[3], folds[4])
    holdout = plan_runs(folds, "levi-hassner-holdout")  # seed 000: the last fold tests every model
    assert [r.splits["val"] for r in holdout] == folds[:4]
    assert all(r.splits["test"] == folds[4] and len(r.splits["train"]) == 120 for r in holdout)
    kfold = plan_runs(folds, "group")
    assert [r.splits["test"] for r in kfold] == folds
    for run in kfold:
        assert len(run.splits["train"]) + len(run.splits["val"]) == 160 and run.splits["val"]
    with pytest.raises(ValueError, match="at least 3 folds"):
        plan_runs(_folds(2), "levi-hassner-holdout")
    with pytest.raises(ValueError, match="unknown scheme"):
        plan_runs(folds, "random")


def test_config_base_merges_sections_and_refuses_cycles(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"model": "vu_multitask", "epochs": 30, "optimizer": {"name": "adam", "lr": 0.001},
         "loss": {"ordinal_weights": [1.0, 2.0] * 4}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(
        {"base": "base.yaml", "epochs": 5, "optimizer": {"lr": 0.01}, "loss": {"ordinal_weights": [3.0] * 8},
         "description": "Five epochs."}))
    cfg, raw = load_config(tmp_path / "child.yaml", ["batch_size=8"])
    assert (cfg.model, cfg.epochs, cfg.batch_size) == ("vu_multitask", 5, 8)
    assert cfg.description == raw["description"] == "Five epochs. Overridden on the command line: batch_size=8."
    assert load_config(tmp_path / "child.yaml")[0].description == "Five epochs."
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.loss.ordinal_weights) == ("adam", 0.01, [3.0] * 8)  # replaced
    assert "base" not in raw  # the saved config stands alone
    (tmp_path / "base.yaml").write_text("base: child.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "child.yaml")


def test_data_filter_keeps_one_gender_or_age_group_after_the_limit() -> None:
    records = [FaceRecord.from_age(f"{i}.jpg", age, gender)
               for i, (age, gender) in enumerate([(1, 0), (30, 1), (1, 1), (70, 0), (30, 0)])]
    assert [r.path for r in filter_records(records, {"gender": "male"})] == ["0.jpg", "3.jpg", "4.jpg"]
    assert [r.path for r in filter_records(records, {"gender": "Female", "age_group": "0-2"})] == ["2.jpg"]
    splits = {"train": records, "val": records, "test": records}
    limited = select_records(splits, DataConfig(train_limit=3, filter={"gender": "male"}))
    sample = {r.path for r in limit_records(records, 3)}  # a fixed sample of 3 faces, then the males among them
    assert [r.path for r in limited["train"]] == [r.path for r in records if r.path in sample and r.gender == 0]
    with pytest.raises(ValueError, match="unknown key"):
        filter_records(records, {"race": "asian"})
    # written as a manifest may write it (a filter of "F" was refused, a manifest's "F" read)
    assert filter_records(records, {"gender": "F"}) == filter_records(records, {"gender": "female"})
    assert DataConfig(filter={"gender": "m"}).filter == {"gender": "m"}
    with pytest.raises(ValueError, match="male or female"):
        filter_records(records, {"gender": "woman"})
    with pytest.raises(ValueError, match="no faces left"):
        select_records(splits, DataConfig(filter={"age_group": "8-13"}))


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_seed_config_loads_and_builds_its_model(path: Path) -> None:
    cfg, _ = load_config(path)
    assert "seed 00" in cfg.description.lower() and "§" in cfg.description
    filter_records([], cfg.data.filter)  # a valid filter
    args = {**cfg.model_args, "pretrained": False}  # ImageNet weights are a download; the shape is the same
    with torch.device("meta"):  # shapes only: VGG-16 and ResNet-34 need no real memory
        model = create_model(cfg.model, **(args if "pretrained" in cfg.model_args else cfg.model_args))
    assert config_of(model).name == cfg.model and cfg.select.startswith("val_")


def test_compare_models_on_the_adience_sample(shared_dir: Path, yunet_path: Path, tmp_path: Path) -> None:
    """Two exported models compared on the Adience sample's detected faces: groups and gender, no years (Adience
    has none); a model against itself differs by exactly nothing; ten crops or a checkpoint are refused."""
    script = REPO / "scripts" / "measure" / "compare_models.py"
    model = str(shipped_model_path("flagship-int8"))
    env = {**os.environ, "AGEGENDER_SHARED": str(shared_dir)}
    run = subprocess.run([sys.executable, str(script), model, model, "--data", "adience-sample"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in run.stdout.splitlines() if line.startswith("| ")}
    assert "287 faces (0 images without one)" in run.stdout
    assert set(rows) == {"Figure", "group_exact", "group_one_off", "gender_accuracy"}  # no age_mae
    assert all("| +0.00 pts | +0.00 to +0.00 |" in rows[k] for k in ("group_exact", "gender_accuracy"))
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"")
    for extra in (["--tta", "ten_crop"], []):
        other = str(checkpoint) if not extra else model
        refused = subprocess.run([sys.executable, str(script), model, other, "--data", "adience-sample", *extra],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and "compares exported models (.onnx)" in refused.stderr, refused.stderr


def _reproduce() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "measure" / "reproduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_results_table_reads_not_run_until_runs_exist() -> None:
    repro = _reproduce()
    suite = repro.load_suite()
    page = repro.render_results(suite, {}, repro.Context())
    rows = [line for line in page.splitlines() if line.startswith("| ") and " | " in line]
    for row in suite.rows:
        line = next(x for x in rows if x.startswith(f"| {row.title} |"))
        assert "| not run" in line and ("| not run: needs " in line) == bool(row.needs)
    assert page.count("**not run**") == len(suite.claims)
    for run in suite.runs.values():  # every config the suite names exists
        assert (REPO / run.config).is_file()


def test_suite_rows_name_known_filters_and_seeded_runs_their_folders(tmp_path: Path) -> None:
    repro = _reproduce()
    suite = repro.load_suite()
    assert all("precision=auto" in run.overrides for run in suite.runs.values())  # the suite's common overrides
    assert [d.name for d in suite.runs["lh_age"].dirs(tmp_path)] == ["lh_age", "lh_age.seed1", "lh_age.seed2"]
    chained = next(row for row in suite.rows if row.chain)
    assert [[d.name for d in dirs] for dirs in repro.row_seeds(chained, suite, tmp_path)][1] == [
        "lh_gender.seed1", "lh_age_male.seed1", "lh_age_female.seed1"]
    raw = yaml.safe_load(repro.SUITE_FILE.read_text())
    raw["rows"][0]["test_filter"] = {"gender": "unknown"}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="gender must be male or female"):
        repro.load_suite(tmp_path / "suite.yaml")


def test_later_seeds_train_in_the_precision_the_first_seed_chose(tmp_path: Path) -> None:
    repro = _reproduce()
    first = tmp_path / "lh_age"
    assert repro.first_precision(first) is None  # not trained yet: each seed resolves `auto` itself
    first.mkdir()
    (first / "summary.yaml").write_text("precision: bf16-mixed\n")
    assert repro.first_precision(first) == "bf16-mixed"
    run = repro.load_suite().runs["lh_age"]
    cfg, _ = load_config(REPO / run.config, [*run.overrides, "precision=bf16-mixed"])  # after the suite's auto
    assert cfg.precision == "bf16-mixed"


def test_a_fine_tuning_run_trains_after_the_run_it_starts_from(tmp_path: Path) -> None:
    repro = _reproduce()
    suite = repro.load_suite()
    assert repro.with_sources(suite, ["lh_age", "s001_model5_standin"]) == [
        "lh_age", "s001_pretrain_rest", "s001_model5_standin"]
    # a source that has not finished: the fine-tuning run is not trained from scratch, it is marked failed
    budget = repro.Budget(("epochs=1",), (), 1.0, 1.0)
    ledger = repro.Ledger(tmp_path / "ledger")
    repro.train_runs(suite, ["s001_model5_standin"], tmp_path, {"s001_model5_standin": budget}, ledger,
                     progress=False)
    assert not (tmp_path / "s001_model5_standin").exists()
    assert "has not finished" in (tmp_path / "s001_model5_standin.failed.txt").read_text()
    # the source finished on another machine (the ledger has its record, not its weights): say how to retrain it
    ledger.run_file("s001_pretrain_rest").parent.mkdir(parents=True)
    ledger.run_file("s001_pretrain_rest").write_text("train_seconds: 1.0\n")
    repro.train_runs(suite, ["s001_model5_standin"], tmp_path, {"s001_model5_standin": budget}, ledger,
                     progress=False)
    assert "delete" in (tmp_path / "s001_model5_standin.failed.txt").read_text()
    ledger.run_file("s001_model5_standin").write_text("train_seconds: 1.0\n")  # recorded: not trained again
    (tmp_path / "s001_model5_standin.failed.txt").unlink()
    repro.train_runs(suite, ["s001_model5_standin"], tmp_path, {"s001_model5_standin": budget}, ledger,
                     progress=False)
    assert not (tmp_path / "s001_model5_standin.failed.txt").exists()
    raw = yaml.safe_load(repro.SUITE_FILE.read_text())
    raw["runs"]["s001_model5_standin"]["init_from"] = "lh_model_that_is_not_there"
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="starts from 'lh_model_that_is_not_there'"):
        repro.load_suite(tmp_path / "suite.yaml")


def test_claims_are_judged_by_a_paired_bootstrap() -> None:
    repro = _reproduce()
    n = 400
    truth = np.tile(np.arange(8), n // 8)
    faces = {"path": np.array([f"{i}.jpg" for i in range(n)]), "true_group": truth,
             "true_age": np.full(n, np.nan), "true_gender": np.zeros(n, dtype=np.int64),
             "age": np.zeros(n), "female_prob": np.zeros(n)}
    good = repro.RowResult({"group_exact": 1.0}, [{**faces, "group": truth}])
    poor = repro.RowResult({"group_exact": 0.5}, [{**faces, "group": np.where(np.arange(n) % 2, truth, 0)}])
    claim = repro.Claim("a beats b", "paper", "a", "b", "group_exact")
    assert repro.judge(claim, {"a": good, "b": poor})[0] == "supported"
    assert repro.judge(claim, {"a": poor, "b": good})[0] == "contradicted"
    assert repro.judge(claim, {"a": good, "b": good})[0] == "inconclusive"
    assert repro.judge(claim, {"a": good})[0] == "not run"
    # two selection rules that chose the same checkpoints are one model, not an inconclusive comparison
    chosen = ((("runs/twohead", 3),),)
    same = [repro.RowResult(good.overall, good.faces, checkpoints=chosen) for _ in range(2)]
    verdict, words = repro.judge(claim, {"a": same[0], "b": same[1]})
    assert verdict == "not testable at this budget" and "epoch 3" in words
    other = repro.RowResult(good.overall, good.faces, checkpoints=((("runs/twohead", 2),),))
    assert repro.judge(claim, {"a": other, "b": same[1]})[0] == "inconclusive"
    # the same checkpoints scored another way (10 crops against the centre crop) are two things to compare
    ten_crop = repro.RowResult(good.overall, good.faces, checkpoints=chosen, tta="ten_crop")
    assert repro.judge(claim, {"a": ten_crop, "b": same[1]})[0] == "inconclusive"
    # below half of the recipes' samples a disagreement is not a contradiction, and unequal budgets are named
    low = {"a": (0.1, 12_000.0), "b": (0.6, 135_000.0)}
    verdict, words = repro.judge(claim, {"a": poor, "b": good}, low)
    assert verdict == "not reproduced at this budget" and "unequal budgets" in words and "one seed" in words
    assert repro.judge(claim, {"a": poor, "b": good}, {"a": (0.8, 1e5), "b": (0.9, 1e5)})[0] == "contradicted"
    # seeds are resampled: three seeds of A that disagree widely give a wider interval than one seed of A
    rng = np.random.default_rng(1)
    seeds = [{**faces, "group": np.where(rng.random(n) < share, truth, 0)} for share in (0.9, 0.5, 0.7)]
    spread = repro.RowResult(repro.mean_figures([{"group_exact": 0.9}, {"group_exact": 0.5}, {"group_exact": 0.7}]),
                             seeds)
    verdict, words = repro.judge(claim, {"a": spread, "b": poor})
    one = repro.judge(claim, {"a": repro.RowResult({"group_exact": 0.7}, seeds[2:]), "b": poor})[1]
    width = [float(hi) - float(lo) for lo, hi in (re.search(r"95% CI (\S+) to ([^;]+);", w).groups()  # type: ignore[union-attr]
                                                  for w in (words, one))]
    assert "3 and 1 seeds, resampled" in words and "3 seeds: 50.0% to 90.0%" in words and width[0] > 2 * width[1]


def test_a_gender_only_rows_faces_save_without_pickling(tmp_path: Path) -> None:
    records = [FaceRecord.from_age(f"{i}.jpg", age, i % 2) for i, age in enumerate((3, 30, 70))]
    decoded = Decoded(None, None, None, None, np.array([0.2, 0.9, 0.6]))
    np.savez_compressed(tmp_path / "faces.npz", **face_arrays(records, decoded))
    with np.load(tmp_path / "faces.npz") as faces:  # allow_pickle=False
        assert np.isnan(faces["age"]).all() and (faces["group"] == -1).all()
        scores, defined = face_scores(dict(faces), "gender_accuracy")
        assert scores.tolist() == [1.0, 1.0, 0.0] and defined.all()
        for metric in ("age_mae", "group_exact"):  # no age predicted: not comparable on age
            assert not face_scores(dict(faces), metric)[1].any()
            assert compare_faces(faces, faces, metric) is None
        assert compare_faces(faces, faces, "gender_accuracy") == (0.0, 0.0, 0.0)
        with pytest.raises(ValueError, match="different faces"):
            compare_faces(faces, {**faces, "path": faces["path"][::-1]}, "gender_accuracy")


def test_export_stores_the_run_s_metrics_and_models_shows_them_with_their_protocol(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = json.loads((checkpoint.parent / "val_flip" / "metrics.json").read_text())
    assert "its mirror" in report["protocol"] and "manifest" in report["protocol"]
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), str(out), "--metrics",
                 str(checkpoint.parent / "val_flip" / "metrics.json")]) == 0
    stored = dict(OnnxAgeGender(out).metrics)
    assert stored.pop("protocol") == report["protocol"] and stored == pytest.approx(report["overall"])
    capsys.readouterr()
    assert main(["models", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"measured on: {report['protocol']}" in text and "age calibration  none" in text
    assert f"Age MAE (years) {' ' * 26} {report['overall']['age_mae']:.2f}" in text
    assert main(["models", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["protocol"] == report["protocol"]
    assert main(["models", str(checkpoint)]) == 2  # a checkpoint is not an exported model
    assert "agegender export" in capsys.readouterr().err


def test_the_confusion_and_timing_tables_of_the_results_page() -> None:
    repro = _reproduce()
    suite = repro.load_suite()
    truth = np.repeat(np.arange(8), 4)
    faces = {"true_group": truth, "group": np.where(np.arange(32) % 4 == 0, (truth + 1) % 8, truth)}
    seeds = [faces, {**faces, "group": truth}]  # pooled: 7 of 8 faces of each group right, 1 one group older
    pooled = repro.pooled_confusion(repro.RowResult({}, seeds))
    assert np.allclose(pooled.sum(1), 1.0) and pooled[0, 0] == 7 / 8 and pooled[0, 1] == 1 / 8
    lines = repro.render_confusion(suite.confusion, repro.RowResult({}, seeds), "chained")
    assert "| 0-2 | **0.71 / 0.88** | 0.19 / 0.12 |" in "\n".join(lines) and "pooled over 2 seed(s)" in lines[3]
    timing = "\n".join(repro.render_timing(suite.timing, {"lh_age_center": 8.0, "zhu_joint": 2.0},
                                           {r.name: r.title for r in suite.rows}))
    assert "| 0.01 (9.0x faster) | 2.0 (4.0x faster) |" in timing
    assert "| 0.09 (1.0x faster) | not run |" in repro.render_timing(suite.timing, {}, {
        r.name: r.title for r in suite.rows})[-2]


def test_the_results_page_is_written_from_a_ledger_that_outlives_the_run_folders(
        checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    repro = _reproduce()
    suite = repro.Suite(runs={"tiny": repro.Run("tiny", "configs/flagship/flagship.yaml")}, rows=[repro.Row(
        "tiny_row", "Tiny", "none", ("age_mae",), "paper", model="tiny")], claims=[])
    runs_dir, ledger = tmp_path / "runs", repro.Ledger(tmp_path / "ledger")
    records = evaluation_records("manifest", str(manifest), "all", progress=False)[0][:40]
    row = suite.rows[0]
    assert repro.evaluate_row(row, suite, runs_dir, ledger, records, "test", progress=False) is None  # not run
    shutil.copytree(checkpoint.parent, runs_dir / "tiny")
    ledger.record_runs(suite, runs_dir)
    assert ledger.run("tiny")["train_seconds"] > 0 and ledger.run("tiny")["device"] == "unknown"
    first = repro.evaluate_row(row, suite, runs_dir, ledger, records, "test", progress=False)
    scored = ledger.evaluation("tiny_row", 0)
    assert {"metrics.json", "predictions.npz", "checkpoints.json", "report.md"} <= {p.name for p in scored.iterdir()}
    assert not list(scored.glob("*.png"))  # the ledger is committed: tables, no figures
    assert first.faces[0]["group"].dtype == np.int8 and first.checkpoints == ((("tiny", 1),),)
    shutil.rmtree(runs_dir)  # the machine that trained is gone: the ledger alone gives the same figures
    again = repro.evaluate_row(row, suite, runs_dir, ledger, records, "test", progress=False)
    assert again.overall == first.overall and again.train_seconds == first.train_seconds
    assert np.array_equal(again.faces[0]["age"], first.faces[0]["age"])
    page = repro.render_results(suite, {"tiny_row": again}, repro.Context())
    assert f"| Tiny | paper | MAE {again.overall['age_mae']:.2f}" in page
    (scored / "checkpoints.json").unlink()  # finished, never evaluated, no run folder: a clear error, no figure
    with pytest.raises(FileNotFoundError, match="holds no evaluation"):
        repro.evaluate_row(row, suite, runs_dir, ledger, records, "test", progress=False)


def test_the_timing_table_times_the_configured_networks_of_finished_rows(tmp_path: Path) -> None:
    repro = _reproduce()
    suite = repro.load_suite()
    ledger = repro.Ledger(tmp_path / "ledger")
    budgets = {name: repro.Budget(tuple(run.overrides), (), 1.0, 1.0) for name, run in suite.runs.items()}
    timed = list(suite.timing.seconds)
    assert repro.time_rows(suite, timed, tmp_path, ledger, budgets) == {}  # nothing finished: nothing timed
    zhu = next(r for r in suite.rows if r.name == "zhu_joint")
    ledger.run_file(zhu.model).parent.mkdir(parents=True)
    ledger.run_file(zhu.model).write_text("train_seconds: 1.0\n")  # no run folder: the network comes from config
    times = repro.time_rows(suite, timed, tmp_path, ledger, budgets)
    assert set(times) == {"zhu_joint"} and 0 < times["zhu_joint"] < 1000


def test_export_and_quantize_check_everything_before_they_write(checkpoint: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.onnx"
    refused = {
        "--int8 naming the output": ["export", str(checkpoint), str(out), "--int8", str(out)],
        "no calibration chips": ["export", str(checkpoint), str(out), "--int8", str(tmp_path / "q.onnx"),
                                 "--calibration-size", "0"],
        "a folder as output": ["export", str(checkpoint), str(tmp_path)],
        "not a checkpoint": ["export", str(shipped_model_path()), str(out)],
        "metrics of another shape": ["export", str(checkpoint), str(out), "--metrics",
                                     str(tmp_path / "list.json")],
        "an int8 model to quantise": ["quantize", "flagship-int8", str(tmp_path / "q.onnx")],
    }
    (tmp_path / "list.json").write_text("[1, 2]")
    expected = {"--int8 naming the output": "--int8 names the float32 output",
                "no calibration chips": "--calibration-size must be at least 1",
                "a folder as output": "is a folder", "not a checkpoint": "is not an agegender checkpoint",
                "metrics of another shape": "not a metrics report", "an int8 model to quantise": "quantised already"}
    for name, command in refused.items():
        assert main(command) == 2, name
        err = capsys.readouterr().err
        assert expected[name] in err and len(err.strip().splitlines()) == 1, (name, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"], name  # nothing written, no temp file


def test_an_empty_split_and_too_few_folds_are_one_line_errors(utkface_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    one = tmp_path / "one.csv"  # one face: the split puts it in train, so val and test are empty
    face = sorted(utkface_dir.iterdir())[0]
    one.write_text(f"path,age,gender\n{face},30,f\n")
    assert main(["evaluate", str(shipped_model_path()), "--data", "manifest", "--root", str(one), "--split",
                 "test", "-q", "--out", str(tmp_path / "ev")]) == 2
    assert "no faces in the test split" in capsys.readouterr().err
    for command in (["data", str(one), "--folds", "1"], ["crossval", "x.yaml", "--folds", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 2 and "--folds: must be >= 2, got" in capsys.readouterr().err


def test_an_output_folder_that_is_a_file_is_refused_before_the_work(tmp_path: Path, manifest: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """evaluate and data failed with a traceback after their work, bench after minutes of measuring."""
    taken = tmp_path / "taken"
    taken.write_text("a file")
    commands = [["evaluate", str(shipped_model_path()), "--data", "manifest", "--root", str(manifest), "--out",
                 str(taken), "-q"],
                ["data", str(manifest), "--out", str(taken / "splits")],
                ["bench", "--out", str(taken)],
                ["bench", "--markdown", str(taken / "bench.md")]]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{taken} is a file, not a folder" in err and len(err.strip().splitlines()) == 1, (command, err)
    assert taken.read_text() == "a file"


def test_evaluate_and_calibrate_take_a_shipped_models_name(manifest: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """As predict, models, quantize and bench do; they said "model file not found" or "not an exported model"."""
    common = ["--data", "manifest", "--root", str(manifest), "--split", "all"]
    assert main(["evaluate", "flagship-int8", *common, "--out", str(tmp_path / "eval"), "-q"]) == 0
    assert (tmp_path / "eval" / "flip" / "metrics.json").is_file()
    before = shipped_model_path("flagship").read_bytes()
    assert main(["calibrate", "flagship", *common, "--dry-run"]) == 0
    assert "age MAE cross-fitted" in capsys.readouterr().out
    assert shipped_model_path("flagship").read_bytes() == before
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--min-time", "-1"])
    assert exit_.value.code == 2 and "must be a number of seconds >= 0" in capsys.readouterr().err


def test_evaluate_refuses_options_of_another_data_set_and_repeated_folds(
        manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--folds 0 0 counted every face twice (and narrowed the intervals); --split with Adience and --folds with
    a manifest were ignored without a word."""
    adience = ["evaluate", "flagship-int8", "--data", "adience", "--root", str(tmp_path)]
    for command, said in (([*adience, "--folds", "0", "0"], "fold 0 more than once"),
                          ([*adience, "--split", "train"], "--split is for utkface and manifest"),
                          (["evaluate", "flagship-int8", "--data", "manifest", "--root", str(manifest), "--folds",
                            "3"], "--folds is for --data adience")):
        assert main(command) == 2, command
        assert said in capsys.readouterr().err


def test_evaluate_into_a_folder_of_an_earlier_run_removes_its_other_reports(manifest: Path,
                                                                             tmp_path: Path) -> None:
    common = ["--data", "manifest", "--root", str(manifest), "--split", "all", "--out", str(tmp_path), "-q"]
    assert main(["evaluate", "flagship", *common, "--tta", "none"]) == 0
    (tmp_path / "ten_crop").mkdir()
    (tmp_path / "ten_crop" / "thesis.txt").write_text("a folder of the user's, not a report")
    assert main(["evaluate", "flagship-int8", *common, "--tta", "flip"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flip", "summary.json", "ten_crop"]  # no float32 none/
    assert (tmp_path / "ten_crop" / "thesis.txt").is_file()


def test_data_folds_replace_an_earlier_runs(manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--folds 4 then --folds 2 left fold2.csv and fold3.csv beside the new two, overlapping them."""
    out = tmp_path / "splits"
    assert main(["data", str(manifest), "--out", str(out), "--folds", "4"]) == 0
    assert main(["data", str(manifest), "--out", str(out), "--folds", "2"]) == 0
    assert sorted(p.name for p in out.glob("*/fold*.csv")) == ["fold0.csv", "fold1.csv"]
    assert "folds are empty" not in capsys.readouterr().out
