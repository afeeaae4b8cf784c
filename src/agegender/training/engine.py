"""One training engine for every model: config in, run folder out (checkpoints, history, curves, metrics).

A run folder holds ``config.yaml``, ``last.pt`` (everything needed to resume, written atomically after each
epoch), ``best.pt`` (the epoch chosen by ``select``; with ``ema`` set, the averaged weights, which are also the
ones validated), ``best_<key>.pt`` for each further selection of ``also_select``, ``history.csv``, ``curves.png``
and, at the end, ``val_none/`` and ``val_flip/`` with the best epoch's reports on the validation split
(``final_split: test``, which cross-validation sets, scores the run's test split instead: otherwise the test split
stays sealed for the one evaluation of a model that ships).

``precision`` (``fp32``, ``bf16-mixed`` or ``auto``; :mod:`agegender.training.precision`) is the autocast of every
forward pass, in training, validation and testing, and of a teacher that runs in PyTorch; the losses are computed
in float32 and the weights stay float32. ``auto`` is resolved once per run, by measuring, and kept in the
checkpoints so that ``--resume`` continues in the same precision; ``summary.yaml`` records it and why.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from agegender.data.datasets import SplitData, SplitRecords, load_splits
from agegender.data.records import FaceRecord
from agegender.data.splits import split_fingerprint
from agegender.models import config_of, create_model
from agegender.models.freezing import freeze_all_but_last, unfreeze_last
from agegender.models.layers import start_age_at
from agegender.outputs import decode
from agegender.reporting.metrics import compute_metrics
from agegender.reporting.report import protocol_text, write_report
from agegender.training.batches import Batches, DeviceBatches, record_targets
from agegender.training.checkpoint import init_from, save_atomic
from agegender.training.config import ScheduleConfig, TrainConfig
from agegender.training.distill import StoredOutputs, Teacher
from agegender.training.distributed import Distributed
from agegender.training.forward import model_outputs
from agegender.training.losses import OUTPUT_LABELS, distillation_loss, multitask_loss
from agegender.training.optim import Schedule, build_optimizer
from agegender.training.precision import autocast, bf16_hardware, check_precision, choose_precision, upcast

log = logging.getLogger(__name__)
AGE_TERMS = ("age_group", "age_ordinal", "age", "age_dist", "joint")
LOWER_IS_BETTER = ("loss", "mae")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_split(model: nn.Module, data: SplitData, cfg: TrainConfig, epoch: int, tta: str = "none",
                   device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Loss terms and metrics of a model on one split (numbers flattened for the history); the model runs under
    ``precision``'s autocast, the losses and metrics are computed in float32."""
    outputs = model_outputs(model, data.images, config_of(model), tta=tta, device=device, precision=precision)
    t = record_targets(data.records)
    targets = {k: torch.from_numpy(v) for k, v in t.items()}
    total, terms = multitask_loss({k: torch.from_numpy(v) for k, v in outputs.items()}, targets, cfg.loss, epoch)
    metrics = compute_metrics(t["age"], t["group"], t["gender"], decode(outputs),
                              races=[-1 if r.race is None else r.race for r in data.records])
    overall = {k: v for k, v in metrics["overall"].items() if isinstance(v, int | float)}
    summary = {"loss": float(total), "age_loss": sum(v for k, v in terms.items() if k in AGE_TERMS),
               "gender_loss": terms.get("gender", 0.0), **overall}
    return {"summary": summary, "metrics": metrics}


def _selected(row: dict[str, Any], key: str) -> float:
    """The value of a ``select`` key (checked by the config) in one epoch's history row; NaN, never the best, in
    an epoch where it is undefined (a gender precision when no face was called female)."""
    value = row.get(key)
    return math.nan if value is None else float(value)


def _best_so_far(history: list[dict[str, Any]], key: str) -> bool:
    """Whether the last epoch of ``history`` is the best of the run so far by ``key``."""
    best = None
    for row in history[:-1]:
        value = _selected(row, key)
        best = value if _better(key, value, best) else best
    return _better(key, _selected(history[-1], key), best)


def _better(select: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    lower = any(select.endswith(s) for s in LOWER_IS_BETTER)
    return value < best if lower else value > best


class Trainer:
    """Owns the model, optimizer, schedule and batches of one run; ``fit()`` trains to the end or resumes.
    ``splits`` gives explicit train/val/test records (cross-validation folds) in place of the dataset's."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, raw_config: dict | None = None,
                 progress: bool = True, splits: SplitRecords | None = None) -> None:
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.dist = Distributed.from_env()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.device = self.dist.device
        self.model = create_model(cfg.model, **cfg.model_args)
        if cfg.init and not (self.run_dir / "last.pt").is_file():  # a run resumed starts from its own weights
            init_from(self.model, cfg.init)
            log.info("weights start from %s", cfg.init)
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last)
        self.config = config_of(self.model)
        # the precision of the run: None until ``auto`` is resolved (by measuring, or from the run resumed)
        self.precision: str | None = None if cfg.precision == "auto" else cfg.precision
        self.precision_reason = "" if cfg.precision == "auto" else "the config's `precision`"
        self._precision_logged = False
        if self.precision is not None:
            check_precision(self.precision, self.device)
        if self.precision == "bf16-mixed" and not bf16_hardware(self.device)[0]:
            self.precision_reason += f"; {bf16_hardware(self.device)[1]}, so expect it slower than fp32"
        self.images_per_s = math.nan  # training throughput of the last epoch (all ranks together)
        if cfg.trainable_last is not None:
            freeze_all_but_last(self.model, cfg.trainable_last)
        if cfg.distill.teacher and cfg.distill.stored:
            raise ValueError("distill: give a teacher model or stored teacher outputs, not both")
        self.teacher = (Teacher.load(cfg.distill.teacher, self.config, self.device, cfg.distill.flip,
                                     cfg.distill.runtime, self.precision or "fp32")
                        if cfg.distill.teacher else None)
        with self.dist.main_first():  # rank 0 builds the split manifests and image cache, the others reuse them
            self.data = load_splits(cfg.data, self.config, progress and self.dist.is_main, records=splits)
        #: Which faces are in which split: stored in each checkpoint, so that a run on other faces is not resumed.
        self.faces = split_fingerprint({name: split.records for name, split in self.data.items()})
        self.stored = (StoredOutputs.load(cfg.distill.stored, self.data["train"].records)
                       if cfg.distill.stored else None)
        distilled = set(self.stored.outputs) if self.stored else set()  # heads a teacher trains without labels
        if self.teacher:
            distilled |= {key for model in self.teacher.models for key in config_of(model).outputs}
        if self.dist.is_main:
            for line in unlabelled_outputs([o for o in self.config.outputs if o not in distilled],
                                           self.data["train"].records):
                log.warning("%s", line)
        if cfg.start_age_at_mean:
            ages = [r.age for r in self.data["train"].records if r.age is not None]
            if not ages:
                raise ValueError("start_age_at_mean: the training faces have no ages (labelled by age group only)")
            mean_age = float(np.mean(ages))
            if not start_age_at(self.model, mean_age):
                raise ValueError(f"start_age_at_mean: {cfg.model} has no `age` regression head")
            log.info("age heads start at the training mean age, %.1f years", mean_age)
        train = self.data["train"]
        batches = partial(DeviceBatches, device=self.device) if cfg.data_on_device else Batches
        self.batches = batches(train.images, train.records, self.config, max(cfg.batch_size // self.dist.world, 1),
                               augment=cfg.data.augment, shuffle=True, seed=cfg.seed,
                               shard=(self.dist.rank, self.dist.world))
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optimizer)
        self.schedule = Schedule(self.optimizer, cfg.schedule, cfg.epochs, len(self.batches))
        self.net = self.dist.wrap(self.model)
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema else None)
        self.epoch, self.stale = 0, 0
        self.best: float | None = None
        self.history: list[dict[str, Any]] = []
        self.raw_config = raw_config or {}
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "last.pt").is_file():  # a run resumed keeps its own until it has resumed
            self._save_config()

    def _save_config(self) -> None:
        """The config beside the run (``config.yaml``): what ``--resume`` compares its config with."""
        if self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.raw_config, sort_keys=False))

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, selected and shipped: the moving average when ``ema`` is set."""
        return self.model if self.ema is None else self.ema.module

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "batches": self.batches.state(),
                "torch_rng": torch.get_rng_state(), "epoch": self.epoch, "best": self.best, "stale": self.stale,
                "history": self.history, "model_config": self.config.to_dict(), "model_args": self.cfg.model_args,
                "precision": self.precision, "precision_reason": self.precision_reason,
                "faces": self.faces}

    def resume(self) -> bool:
        """Continue from ``last.pt`` when it exists; True if resumed."""
        path = self.run_dir / "last.pt"
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("faces", self.faces) != self.faces:  # runs from before it was recorded are not checked
            raise ValueError(f"cannot resume {self.run_dir}: its faces changed since it started (files added, removed "
                             "or moved): its history and schedule belong to the old ones; start a new run")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"cannot resume {self.run_dir}: {path} holds the weights of another network than "
                             f"{self.cfg.model} with these model_args ({str(err).splitlines()[0]})") from None
        if self.ema is not None:
            if not state.get("ema"):
                raise ValueError(f"{path} was trained without `ema`: resume it with the config it was started with")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches.load_state(state["batches"])
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location took it to the run's device
        self.epoch, self.best, self.stale, self.history = (state["epoch"], state["best"], state["stale"],
                                                           state["history"])
        began = state.get("precision") or "fp32"  # runs from before `precision` trained in float32
        if self.cfg.precision == "auto":
            kept = "; kept on resuming"
            reason = (state.get("precision_reason") or "the run began in fp32").removesuffix(kept)
            self._set_precision(began, reason + kept)
        elif began != self.precision:
            log.warning("precision: the run began in %s and goes on in %s, as the config says", began,
                        self.precision)
        self._apply_unfreeze()
        self._save_config()  # its resumable changes (threads, a longer run) now belong to it
        log.info("resumed %s at epoch %d", self.run_dir, self.epoch)
        return True

    # -- precision -------------------------------------------------------------------------------------------
    def _set_precision(self, precision: str, reason: str) -> None:
        check_precision(precision, self.device)
        self.precision, self.precision_reason = precision, reason
        if self.teacher is not None:
            self.teacher.precision = precision

    def resolve_precision(self) -> str:
        """The run's precision: ``auto`` resolved on first use, by rank 0's measurement (every rank takes it),
        unless a resumed run brought its own. Logged once with the reason."""
        if self.precision is None:
            choice = ("", "")  # what the other ranks hold until rank 0's measurement reaches them
            if self.dist.is_main:
                choice = choose_precision(self.model, self.batches.batch_size, self.config.input_size, self.device)
            self._set_precision(*self.dist.from_main(choice))
        if not self._precision_logged and self.dist.is_main:
            log.info("precision: %s (%s)", self.precision, self.precision_reason)
        self._precision_logged = True
        assert self.precision is not None
        return self.precision

    # -- loop ------------------------------------------------------------------------------------------------
    def _apply_unfreeze(self) -> None:
        for start, n in sorted(self.cfg.unfreeze):
            if self.epoch >= start:
                unfreeze_last(self.model, n)

    def train_epoch(self) -> float:
        precision = self.resolve_precision()
        self.net.train()
        total, seen = 0.0, 0
        start = time.perf_counter()
        bar = tqdm(self.batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=not (self.progress and self.dist.is_main))
        for step, (x, targets) in enumerate(bar):
            x = x.to(self.device, non_blocking=True)
            targets = {k: v.to(self.device) for k, v in targets.items()}
            with autocast(precision, self.device):
                outputs = self.net(x)
            outputs = upcast(outputs)  # the losses in float32 (a no-op in fp32)
            loss, terms = multitask_loss(outputs, targets, self.cfg.loss, self.epoch)
            taught = (self.teacher(x) if self.teacher is not None
                      else self.stored(targets["index"]) if self.stored is not None else None)
            if taught is not None:
                kd, kd_terms = distillation_loss(outputs, taught, self.cfg.distill.temperature,
                                                 self.cfg.distill.head_weights(self.epoch + step / len(self.batches)))
                loss = loss + self.cfg.distill.weight * kd
                terms.update(kd_terms)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {self.epoch + 1}: lower the "
                                         "learning rate or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.schedule.after_step()
            total += loss.item() * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{total / seen:.3f}", **{k: f"{v:.3f}" for k, v in terms.items()})
        self.images_per_s = seen * self.dist.world / (time.perf_counter() - start)
        self.dist.sync_buffers(self.model)
        if self.ema is not None:
            self.dist.sync_buffers(self.ema.module)
        return total / max(seen, 1)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        precision = self.resolve_precision()
        while self.epoch < cfg.epochs:
            if cfg.early_stopping and self.stale >= cfg.early_stopping:  # also a resumed run that stopped early
                log.info("early stop: %s has not improved for %d epochs", cfg.select, self.stale)
                break
            self._apply_unfreeze()
            start = time.time()
            train_loss = self.train_epoch()
            val = evaluate_split(self.eval_model, self.data["val"], cfg, self.epoch, device=self.device,
                                 precision=precision)["summary"]
            self.epoch += 1
            self.schedule.after_epoch(val["loss"])
            row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   **{f"val_{k}": v for k, v in val.items()}, "seconds": time.time() - start,
                   "images_per_s": self.images_per_s}
            self.history.append(row)
            value = _selected(row, cfg.select)
            # the first epoch is kept even where its figure is undefined, so that there is always a best.pt
            improved = _better(cfg.select, value, self.best) or self.best is None
            self.best, self.stale = (value, 0) if improved else (self.best, self.stale + 1)
            kept = (["best.pt"] if improved else []) + [f"best_{key}.pt" for key in cfg.also_select
                                                         if _best_so_far(self.history, key)]
            if self.dist.is_main:
                if kept:
                    weights = {**self.state(), "model": self.eval_model.state_dict(), "ema": None, "optimizer": None}
                    for name in kept:
                        save_atomic(weights, self.run_dir / name)
                save_atomic(self.state(), self.run_dir / "last.pt")
                self._write_history()
                log.info("epoch %d: %s", self.epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                              if isinstance(v, float)))
        return self.finish()

    def _write_history(self) -> None:
        path = self.run_dir / "history.csv"
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, path)
        from agegender.reporting.plots import plot_learning_curves

        plot_learning_curves(path, self.run_dir / "curves.png")

    def finish(self) -> dict[str, Any]:
        """Evaluate the best epoch on ``final_split`` (plain and flip-averaged) and write reports."""
        results: dict[str, Any] = {}
        if not self.dist.is_main:
            return results
        best = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(best["model"])
        precision = self.resolve_precision()
        split = self.cfg.final_split
        for tta in ("none", "flip"):
            ev = evaluate_split(self.model, self.data[split], self.cfg, best["epoch"], tta=tta,
                                device=self.device, precision=precision)
            results[tta] = ev["summary"]
            write_report(ev["metrics"], self.run_dir / f"{split}_{tta}", title=f"{self.cfg.model}: {split} split",
                         protocol=protocol_text(f"{self.cfg.data.dataset}: the run's {split} split "
                                  f"({len(self.data[split].records)} faces), the best epoch "
                                  f"({best['epoch']}) by {self.cfg.select}", tta))
        (self.run_dir / "summary.yaml").write_text(yaml.safe_dump(
            {"model": self.cfg.model, "best_epoch": best["epoch"], "epochs_run": self.epoch,
             "train_seconds": float(sum(r["seconds"] for r in self.history)), "precision": precision,
             "precision_reason": self.precision_reason, split: results}, sort_keys=False))
        return results


#: Config keys a resumed run may change: how it runs, not what it trains (precision: see ``Trainer.resume``), and
#: the description, which lists the command line's overrides.
RESUMABLE_CHANGES = frozenset({"threads", "precision", "description"})
#: Schedules whose rate at an epoch does not depend on the run's length: a run on one of them may be resumed with
#: more ``epochs`` (onecycle and cosine spread themselves over the whole run: more epochs would change every rate).
LENGTH_FREE_SCHEDULES = frozenset({"none", "step", "multistep", "plateau"})


def unlabelled_outputs(outputs: Sequence[str], records: Sequence[FaceRecord]) -> list[str]:
    """A line for each of ``outputs`` whose loss needs labels (:data:`~agegender.training.losses.OUTPUT_LABELS`,
    all of them on one face) that none of ``records`` has: without a teacher that head would not train.

    >>> faces = [FaceRecord("a.jpg", None, 3, None), FaceRecord("b.jpg", None, None, 1)]
    >>> [line.split(":")[0] for line in unlabelled_outputs(["age", "age_group_logits", "joint_logits"], faces)]
    ['age', 'joint_logits']
    """
    lines = []
    for output in outputs:
        labels = OUTPUT_LABELS[output]
        if not any(all(getattr(r, label) is not None for label in labels) for r in records):
            lines.append(f"{output}: none of the {len(records)} training faces has {' and '.join(labels)} labels, "
                         "so its loss stays 0 and the head does not train")
    return lines


def config_differences(stored: Path, raw_config: dict, allow_longer: bool = False) -> str:
    """How ``raw_config`` differs from a run's ``config.yaml`` (``key: old -> new; ...``), bar
    :data:`RESUMABLE_CHANGES` and, with ``allow_longer`` (one run resumed, not the folds of a cross-validation,
    which must all have one length), more ``epochs`` under one of :data:`LENGTH_FREE_SCHEDULES`; empty when it
    does not, or when there is no such file."""
    if not stored.is_file():
        return ""
    before, now = (_flat(c) for c in (yaml.safe_load(stored.read_text()) or {},
                                      yaml.safe_load(yaml.safe_dump(raw_config))))
    defaults = TrainConfig.model_fields["epochs"].default, ScheduleConfig.model_fields["name"].default
    epochs = [c.get("epochs", defaults[0]) for c in (before, now)]
    length_free = all(c.get("schedule.name", defaults[1]) in LENGTH_FREE_SCHEDULES for c in (before, now))
    longer = allow_longer and epochs[1] > epochs[0] and length_free
    changed = sorted(k for k in before.keys() | now.keys()
                     if before.get(k) != now.get(k) and k.split(".")[0] not in RESUMABLE_CHANGES
                     and not (k == "epochs" and longer))
    text = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
    if allow_longer and "epochs" in changed and epochs[1] > epochs[0]:
        text += (f"; more epochs only under a schedule that does not spread over the run's length "
                 f"({', '.join(sorted(LENGTH_FREE_SCHEDULES))})")
    return text


def check_same_config(stored: Path, raw_config: dict) -> None:
    """A run resumes with the config it was started with (``config.yaml``, saved at its start), but for
    :data:`RESUMABLE_CHANGES`: its checkpoints, schedule and history belong to that config. ValueError naming the
    keys that differ."""
    differences = config_differences(stored, raw_config, allow_longer=True)
    if differences:
        raise ValueError(f"--resume continues {stored.parent} with the config it was started with, and this one "
                         f"differs ({differences}): resume without those changes, or start a new run with another "
                         "--run-dir")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": value}`` (an empty mapping stays a value).

    >>> _flat({"a": {"b": 1, "c": {}}, "d": 2})
    {'a.b': 1, 'a.c': {}, 'd': 2}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, f"{name}.") if isinstance(value, dict) and value else {name: value})
    return flat


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, raw_config: dict | None = None,
          progress: bool = True, splits: SplitRecords | None = None) -> dict[str, Any]:
    """Train (or resume) one run, on ``splits`` when given; returns the best epoch's figures on ``final_split``."""
    if not resume and (Path(run_dir) / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another "
                              "--run-dir")
    if resume and raw_config is not None and (Path(run_dir) / "last.pt").exists():
        check_same_config(Path(run_dir) / "config.yaml", raw_config)
    trainer = Trainer(cfg, run_dir, raw_config, progress, splits)
    if resume:
        trainer.resume()
    try:
        return trainer.fit()
    finally:
        trainer.dist.close()
