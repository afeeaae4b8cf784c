"""Cross-validation through the training engine: leakage-exclusive folds, one run per fold, then mean ± sample
std of every figure (``summarize_folds``) and a report.

Fold sources: the config's data set cut into k folds by leakage group (``kfold_records``: UTKFace
near-duplicate groups, manifest subjects), or Adience's five official subject-exclusive folds.

Schemes:

- ``group``: k-fold; each fold is the test set once, the others give the training set and a group-exclusive
  10% validation share (for the checkpoint choice).
- ``adience-official``: the same over the official Adience folds (for a user who has the images).
- ``seed001-fixed``: one run: folds 0..k-3 train, fold k-2 validates, fold k-1 tests (seed 001 §2.3: Adience
  folds 0-2, 3 and 4).
- ``levi-hassner-holdout``: seed 000 §3.2: the last fold is held out for testing; each other fold in turn
  validates a model trained on the remaining ones, and every model is tested on the held-out fold.

A fold whose folder already holds ``summary.yaml`` is reused and an interrupted one resumes, so a stopped
cross-validation continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agegender.data.adience import NUM_FOLDS, read_adience
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.data.records import FaceRecord
from agegender.data.splits import SPLITS, check_no_leakage, kfold_records, split_fingerprint, split_records
from agegender.paths import default_path
from agegender.reporting.metrics import summarize_folds
from agegender.reporting.report import protocol_text, write_report
from agegender.training.config import TrainConfig
from agegender.training.engine import config_differences, train

log = logging.getLogger(__name__)

SCHEMES = ("group", "adience-official", "seed001-fixed", "levi-hassner-holdout")
VAL_SHARE = 0.1  # group k-fold: share of the training folds' groups held out for validation


@dataclass(frozen=True)
class FoldRun:
    """One training run of a cross-validation: its folder name and its train/val/test records."""

    name: str
    splits: dict[str, Sequence[FaceRecord]]

    def sizes(self) -> str:
        return "/".join(str(len(self.splits[s])) for s in SPLITS)

    def fingerprint(self) -> str:
        """A digest of which faces are in which split: two runs of one name on other faces differ in it."""
        return split_fingerprint(self.splits)


PLAN_FILE = "crossval.json"
"""What a cross-validation folder holds: its scheme and each run's faces (:meth:`FoldRun.fingerprint`)."""


def check_plan(run_dir: Path, scheme: str, runs: Sequence[FoldRun], raw: dict[str, Any]) -> None:
    """A folder goes on (its finished runs reused) only for the cross-validation it was started with: the same
    scheme, folds and config (bar :data:`~agegender.training.engine.RESUMABLE_CHANGES`). Records the plan the first
    time; ValueError naming what differs otherwise."""
    plan = {"scheme": scheme, "runs": {run.name: run.fingerprint() for run in runs}}
    stored_path = run_dir / PLAN_FILE
    problems = []
    if stored_path.is_file():
        stored = json.loads(stored_path.read_text())
        if stored != plan:
            problems.append(f"scheme or folds (it ran {stored['scheme']} over runs "
                            f"{', '.join(stored['runs'])}; this is {scheme} over {', '.join(plan['runs'])}, or "
                            "the same names on other faces)")
    changed = {run.name: d for run in runs if (d := config_differences(run_dir / run.name / "config.yaml", raw))}
    if changed:  # every run was started with the one config: its differences are the same for each
        problems.append(f"config ({next(iter(changed.values()))}, in {', '.join(changed)})")
    if problems:
        raise ValueError(f"{run_dir} holds another cross-validation, whose finished runs would be reused as this "
                         f"one's: its {'; its '.join(problems)} differ. Choose another --run-dir, or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    stored_path.write_text(json.dumps(plan, indent=1) + "\n")


def _joined(folds: Iterable[Sequence[FaceRecord]]) -> list[FaceRecord]:
    return [r for fold in folds for r in fold]


def _run(name: str, train: Sequence[FaceRecord], val: Sequence[FaceRecord], test: Sequence[FaceRecord]
         ) -> FoldRun:
    return FoldRun(name, {"train": list(train), "val": list(val), "test": list(test)})


def plan_runs(folds: Sequence[Sequence[FaceRecord]], scheme: str) -> list[FoldRun]:
    """The runs of ``scheme`` over ``folds`` (see the module doc); every run is checked for leakage."""
    k = len(folds)
    if scheme in ("group", "adience-official"):
        runs = []
        for i in range(k):
            rest = _joined(f for j, f in enumerate(folds) if j != i)
            train_val = split_records(rest, (1 - VAL_SHARE, VAL_SHARE, 0.0))
            runs.append(_run(f"fold{i}", train_val["train"], train_val["val"], folds[i]))
    elif scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    elif k < 3:
        raise ValueError(f"{scheme} needs at least 3 folds (train, validation, test), got {k}")
    elif scheme == "seed001-fixed":
        runs = [_run("fixed", _joined(folds[:-2]), folds[-2], folds[-1])]
    else:
        runs = [_run(f"val{v}", _joined(f for j, f in enumerate(folds[:-1]) if j != v), folds[v], folds[-1])
                for v in range(k - 1)]
    for run in runs:
        check_no_leakage(run.splits)
        empty = [s for s in SPLITS if not run.splits[s]]
        if empty:
            raise ValueError(f"{scheme}, run {run.name}: no faces in {', '.join(empty)}; use fewer folds or "
                             "more data")
    return runs


def dataset_folds(cfg: DataConfig, k: int, progress: bool = True) -> list[list[FaceRecord]]:
    """k group-exclusive folds over the configured data set's deduplicated faces (all of its deduplicated
    split: the same records and groups training uses)."""
    splits = dataset_splits(cfg, progress)
    return kfold_records(_joined(splits[s] for s in SPLITS), k)


def adience_official_folds(folds_dir: str | Path | None, image_root: str | Path) -> list[list[FaceRecord]]:
    """Adience's five official subject-exclusive folds (``folds_dir``, default: the shared fold files), the faces
    whose image is under ``image_root``."""
    folds, report = read_adience(default_path("adience_folds") if folds_dir is None else folds_dir, image_root)
    log.info("Adience: %s", report.summary())
    missing = [k for k in range(NUM_FOLDS) if not folds[k]]
    if missing:
        raise ValueError(f"no image of Adience fold(s) {missing} under {image_root}: cross-validation on the "
                         "official folds needs the whole data set (faces/ or aligned/)")
    return [folds[k] for k in range(NUM_FOLDS)]


def run_crossval(cfg: TrainConfig, raw: dict[str, Any], run_dir: str | Path,
                 folds: Sequence[Sequence[FaceRecord]], scheme: str, source: str,
                 progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train and test every run of ``scheme`` (in ``run_dir/<run>``), then summarise the held-out figures of
    each test-time augmentation mode the engine reports into ``run_dir/test_<tta>/`` (report.md,
    metrics.json with mean, std and per-fold figures). Returns ``{tta: summary}``."""
    run_dir = Path(run_dir)
    cfg = cfg.model_copy(update={"final_split": "test"})  # each run's held-out fold is the protocol's figure
    runs = plan_runs(folds, scheme)
    check_plan(run_dir, scheme, runs, raw)
    per_tta: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        fold_dir = run_dir / run.name
        if (fold_dir / "summary.yaml").is_file():
            log.info("%s: done, reusing %s", run.name, fold_dir)
        else:
            log.info("%s: train/val/test %s faces", run.name, run.sizes())
            train(cfg, fold_dir, resume=True, raw_config=raw, progress=progress, splits=run.splits)
        for tta in yaml.safe_load((fold_dir / "summary.yaml").read_text())["test"]:
            metrics = json.loads((fold_dir / f"test_{tta}" / "metrics.json").read_text())
            per_tta.setdefault(tta, []).append(metrics)
    sizes = "; ".join(f"{run.name} {run.sizes()}" for run in runs)
    summaries = {}
    for tta, fold_metrics in per_tta.items():
        summaries[tta] = summarize_folds(fold_metrics)
        write_report(summaries[tta], run_dir / f"test_{tta}", title=f"{cfg.model}: {scheme} cross-validation",
                     protocol=protocol_text(f"{scheme} scheme over {len(folds)} folds of {source}; {len(runs)} run(s), "
                              f"train/val/test faces per run: {sizes} (before the config's train_limit "
                              f"and filter: {cfg.data.train_limit or 'none'}, {cfg.data.filter or 'none'}). "
                              f"Each run is tested at its best epoch by {cfg.select}", tta))
    return summaries
