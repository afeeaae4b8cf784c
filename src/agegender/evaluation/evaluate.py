"""Evaluate a checkpoint (``.pt``) or an exported model (``.onnx``) on labelled faces, with every figure the
seed papers report (``compute_metrics``) and Levi & Hassner's test-time oversampling.

``evaluate_model`` is the Python API; ``evaluation_records`` reads the faces the CLI names (a UTKFace or
manifest split, or official Adience folds); ``evaluate_to_reports`` writes one report per TTA mode.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agegender.age_calibration import AgeCalibration
from agegender.artifacts import SHIPPED_MODELS
from agegender.data.adience import read_adience_fold
from agegender.data.datasets import DataConfig, dataset_root, dataset_splits, decode_split
from agegender.data.records import FaceRecord, ReadReport
from agegender.data.splits import SPLITS
from agegender.evaluation.compare import face_arrays, face_intervals
from agegender.inference.onnx_model import OnnxAgeGender, shipped_model_path
from agegender.models import config_of
from agegender.outputs import Decoded, decode
from agegender.oversample import TTA_MODES
from agegender.paths import default_path
from agegender.reporting.metrics import compute_metrics
from agegender.reporting.report import protocol_text, write_report
from agegender.training.batches import record_targets
from agegender.training.checkpoint import load_model, run_checkpoint
from agegender.training.forward import model_outputs

log = logging.getLogger(__name__)

DATASETS = ("utkface", "adience", "manifest")


class ExportedModel(nn.Module):
    """An ``agegender export`` file behind the torch interface :func:`~agegender.training.forward.model_outputs`
    drives, so that checkpoints and exports share one evaluation path. The export normalises inside its graph, so
    it takes RGB pixels on a 0..255 scale (``takes_pixels``) and outputs the contract's keys. It always runs on
    ONNX Runtime's CPU provider, in float32 where the graph is float: a figure (and a calibration fitted from
    predictions) must not depend on which runtime the machine would pick (OpenVINO computes in bf16 on some
    CPUs); ``agegender bench`` scores each runtime on its own."""

    takes_pixels = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.onnx = OnnxAgeGender(path, backend="onnxruntime", device="cpu")
        self.config = self.onnx.config

    @property
    def age_calibration(self) -> AgeCalibration | None:
        return self.onnx.age_calibration

    def calibrate(self, decoded: Decoded) -> Decoded:
        """The file's stored corrections (age, then interval), as ``OnnxAgeGender.predict`` applies them."""
        return self.onnx.calibrate(decoded)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.onnx.raw(np.ascontiguousarray(pixels.float().cpu().numpy()))
        return {key: torch.from_numpy(value) for key, value in raw.items()}


def load_evaluable(path: str | Path) -> nn.Module:
    """A checkpoint the engine wrote or a run folder (its ``best.pt``; on the GPU when there is one), an ONNX
    export (CPU) or a shipped model's name (:data:`~agegender.artifacts.SHIPPED_MODELS`), in eval mode."""
    path = shipped_model_path(path) if isinstance(path, str) and path in SHIPPED_MODELS else Path(path)
    if path.is_dir():
        path = run_checkpoint(path, "model")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        return ExportedModel(path).eval()
    return load_model(path, "cuda" if torch.cuda.is_available() else "cpu")  # ValueError for another file


def _device(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return str(param.device) if param is not None else "cpu"


def predict_faces(model: nn.Module, images: np.ndarray, tta: str = "none", calibrated: bool = True) -> Decoded:
    """Decoded predictions for cached uint8 images (N x S x S x 3 RGB at the model's load size), with the
    corrections an export stores (``agegender calibrate``: the age, then the interval) unless ``calibrated`` is
    False; a checkpoint has none."""
    decoded = decode(model_outputs(model, images, config_of(model), tta=tta, device=_device(model)))
    calibrate = getattr(model, "calibrate", None) if calibrated else None
    return calibrate(decoded) if calibrate else decoded


def outputs_on(model: nn.Module, records: Sequence[FaceRecord], tta: str = "none", progress: bool = False,
               mirrored: bool = False) -> dict[str, np.ndarray]:
    """Raw outputs of ``model`` for ``records``, each image decoded at the model's own input (load size, crop):
    models of different inputs can then be averaged face by face; ``mirrored`` scores each face's mirror
    instead. Raises ValueError when an image cannot be decoded (the rows would no longer line up)."""
    data = decode_split(records, config_of(model), progress)
    if len(data.records) != len(records):
        raise ValueError(f"{len(records) - len(data.records)} of {len(records)} images could not be decoded")
    images = data.images[:, :, ::-1] if mirrored else data.images
    return model_outputs(model, images, config_of(model), tta=tta, device=_device(model))


def face_metrics(records: Sequence[FaceRecord], decoded: Decoded) -> dict[str, Any]:
    """``compute_metrics`` of predictions against the records' labels (race breakdown where known)."""
    t = record_targets(records)
    return compute_metrics(t["age"], t["group"], t["gender"], decoded,
                           races=[-1 if r.race is None else r.race for r in records])


def evaluate_model(model: str | Path | nn.Module, records: Sequence[FaceRecord],
                   images: np.ndarray | None = None, tta: str = "none", progress: bool = False
                   ) -> dict[str, Any]:
    """All figures of a model (checkpoint or ``.onnx`` path, or a loaded model) on labelled records.
    ``images`` are the records' cached images at the model's load size; None decodes them here (records
    whose image cannot be decoded are then left out)."""
    net = load_evaluable(model) if isinstance(model, str | Path) else model
    if images is None:
        data = decode_split(records, config_of(net), progress)
        records, images = data.records, data.images
    return face_metrics(records, predict_faces(net, images, tta))


def _adience_fold_file(folds_dir: Path, fold: int) -> Path:
    base = folds_dir / "original_txt_files" if (folds_dir / "original_txt_files").is_dir() else folds_dir
    path = base / f"fold_{fold}_data.txt"
    if not path.is_file():
        raise FileNotFoundError(f"Adience fold file not found: {path} (pass --adience-folds, the folder "
                                "holding fold_k_data.txt)")
    return path


def evaluation_records(data: str, root: str | None, split: str = "test", folds: Sequence[int] = (0,),
                       adience_folds: str | Path | None = None, progress: bool = True
                       ) -> tuple[list[FaceRecord], str]:
    """The faces to evaluate on, and a sentence saying which they are.

    ``utkface`` / ``manifest``: the ``split`` (train, val, test or all) of the project's deduplicated split,
    the one training uses. ``adience``: the official folds ``folds``, images under ``root``."""
    if data == "adience":
        if root is None:
            raise ValueError("--data adience needs --root: the folder holding Adience's faces/ or aligned/")
        report = ReadReport()
        folds_dir = Path(adience_folds) if adience_folds is not None else default_path("adience_folds")
        files = [_adience_fold_file(folds_dir, k) for k in folds]
        records = [r for file in files for r in read_adience_fold(file, root, report)]
        if not records:
            raise ValueError(f"no Adience image of fold(s) {list(folds)} was found under {root}")
        log.info("Adience: %s", report.summary())
        return records, (f"Adience official fold(s) {', '.join(map(str, folds))} (subject-exclusive): the "
                         f"{len(records)} faces with a gender and an age group whose image is under {root}")
    if data not in DATASETS:
        raise ValueError(f"unknown data set {data!r}: use one of {', '.join(DATASETS)}")
    if data == "manifest" and root is None:
        raise ValueError("--data manifest needs --root: a CSV manifest (path, age or age_group, gender)")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}: use train, val, test or all")
    cfg = DataConfig.model_validate({"dataset": data, "root": root})
    splits = dataset_splits(cfg, progress)
    records = [r for name in (SPLITS if split == "all" else (split,)) for r in splits[name]]
    which = "every face" if split == "all" else f"the {split} split"
    if not records:
        sizes = ", ".join(f"{name} {len(faces)}" for name, faces in splits.items())
        raise ValueError(f"no faces in {which} of {dataset_root(cfg)} (faces per split: {sizes}): choose another "
                         "split, or give more faces")
    return records, (f"{data} {Path(dataset_root(cfg)).name}: {which} of the project's deduplicated split "
                     f"(near-duplicates and mirrored copies grouped, identity not controlled; {len(records)} "
                     "faces; 8 age groups from ages by the gap policy)")


def evaluate_to_reports(net: nn.Module, name: str, records: Sequence[FaceRecord], description: str,
                        ttas: Sequence[str], out_dir: str | Path, progress: bool = True) -> dict[str, dict]:
    """Evaluate a loaded model (``name``: what reports call it) once per TTA mode; write ``out_dir/<tta>/``
    (metrics.json, report.md, confusion matrices as CSV and PNG, breakdown plots) and ``out_dir/summary.json``
    (overall figures per mode); then an earlier run's report of another mode in ``out_dir`` is removed. Each mode's
    metrics carry ``intervals``: the 95% bootstrap interval (faces
    resampled) of age MAE, group accuracies and gender accuracy."""
    unknown = [t for t in ttas if t not in TTA_MODES]
    if unknown:
        raise ValueError(f"unknown TTA mode(s) {unknown}: use {', '.join(TTA_MODES)}")
    config = config_of(net)
    data = decode_split(records, config, progress)
    no_margin = config.load_size == config.input_size  # ten crops of it: five centres and five mirrors
    if "ten_crop" in ttas and no_margin:
        log.info("%s has no crop margin (input %d = load size): ten_crop equals flip", config.name,
                 config.input_size)
    out = Path(out_dir)
    results = {}
    for tta in ttas:
        decoded = predict_faces(net, data.images, tta)
        metrics = face_metrics(data.records, decoded)
        metrics["intervals"] = face_intervals(face_arrays(data.records, decoded))
        protocol = protocol_text(description, tta)
        if tta == "ten_crop" and no_margin:
            protocol += (f" This model reads the whole {config.input_size} px chip (no crop margin): its ten crops "
                         "are the centre five times and its mirror five times, the same as flip.")
        write_report(metrics, out / tta, title=f"{config.name} ({name})", protocol=protocol)
        results[tta] = metrics
    (out / "summary.json").write_text(json.dumps(
        {"model": name, "data": description, **{t: m["overall"] for t, m in results.items()}},
        indent=2) + "\n")
    for stale in (out / tta for tta in TTA_MODES if tta not in ttas):
        _remove_report(stale)  # an earlier run's report beside this run's summary would read as this model's
    return results


def _remove_report(folder: Path) -> None:
    """Remove ``folder`` if it holds an evaluation report (``metrics.json``, ``report.md``) and nothing but the
    kinds of file a report writes; otherwise leave it, saying so."""
    if not (folder / "metrics.json").is_file() or not (folder / "report.md").is_file():
        return
    if all(p.is_file() and p.suffix in (".json", ".md", ".csv", ".png") for p in folder.iterdir()):
        shutil.rmtree(folder)
        log.info("removed %s: the report of an earlier evaluation into %s", folder, folder.parent)
    else:
        log.warning("%s holds an earlier evaluation's report and other files: left as it is", folder)
