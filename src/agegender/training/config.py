"""Training configs: YAML files with ``key.sub=value`` command-line overrides, into typed sections."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agegender.data.augment import AugmentConfig
from agegender.data.datasets import DataConfig
from agegender.outputs import AUXILIARY_KEYS, OUTPUT_KEYS
from agegender.training.losses import LossSpec, scheduled_weight


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd | adam | adamw | rmsprop
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    name: str = "none"  # none | step | multistep | onecycle | cosine | plateau
    step_size: int = 10  # epochs (step)
    milestones: list[int] = field(default_factory=list)  # epochs (multistep)
    gamma: float = 0.1
    pct_start: float = 0.25  # onecycle warm-up share
    patience: int = 3  # plateau


@dataclass
class DistillConfig:
    # a checkpoint or a run folder (its best.pt) of any model with the same input, or a list of them (an ensemble)
    teacher: str | list[str] | None = None
    weight: float = 1.0  # the distillation term's weight beside the labels' loss
    temperature: float = 1.0
    flip: bool = False  # the teacher's outputs are averaged with those for the mirrored batch
    runtime: str = "auto"  # where the teacher runs: auto (ONNX Runtime on a CPU, else PyTorch) | torch | onnx
    # instead of a teacher model: its outputs stored beforehand, one row per training image (an .npz written by
    # agegender.training.distill.save_stored_outputs, e.g. by scripts/build/descriptor_teacher.py)
    stored: str | None = None
    # weight of each distilled head (an output name such as descriptor or gender_logit) inside the distillation
    # term: a number or [epoch, weight] knots, linear between them (default 1 for every head)
    heads: dict[str, float | list[list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = (*OUTPUT_KEYS, *AUXILIARY_KEYS)
        for head, weight in self.heads.items():
            if head not in known:
                raise ValueError(f"distill.heads: {head!r} is not a model output; known: {', '.join(known)}")
            try:
                scheduled_weight(weight, 0)
            except (TypeError, ValueError) as err:
                raise ValueError(f"distill.heads.{head}: give a number or [epoch, weight] pairs, not {weight!r}") \
                    from err

    def head_weights(self, epoch: float) -> dict[str, float]:
        """Each listed head's weight at ``epoch``."""
        return {head: scheduled_weight(weight, epoch) for head, weight in self.heads.items()}


@dataclass
class TrainConfig:
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossSpec = field(default_factory=LossSpec)
    distill: DistillConfig = field(default_factory=DistillConfig)
    init: str | None = None  # start from the weights of a checkpoint or run folder (its best.pt) of the same model
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    start_age_at_mean: bool = False  # the age regression heads' bias starts at the training set's mean age
    ema: float | None = None  # decay of an exponential moving average of the weights, per step (e.g. 0.998)
    select: str = "val_loss"  # checkpoint selection: val_loss | val_age_loss | val_gender_loss | val_<metric>
    early_stopping: int | None = None  # patience in epochs
    trainable_last: int | None = None  # freeze all but the last N parameterised layers
    unfreeze: list[list[int]] = field(default_factory=list)  # [epoch, N]: from epoch on, the last N train
    threads: int | None = None
    description: str = ""


_SECTIONS = {"data": DataConfig, "optimizer": OptimConfig, "schedule": ScheduleConfig, "loss": LossSpec,
             "distill": DistillConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = dict(values)
    for name, section in _SECTIONS.items():
        if name in kwargs and name in known and isinstance(kwargs[name], dict):
            kwargs[name] = _build(section, kwargs[name], f"{where}.{name}")
    if cls is DataConfig and isinstance(kwargs.get("augment"), dict):
        kwargs["augment"] = _build(AugmentConfig, kwargs["augment"], f"{where}.augment")
    return cls(**kwargs)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optimizer.lr=0.01", "epochs=2"]`` applied to a raw config dict (values parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def merge_configs(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: nested sections merge key by key, any other value (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_raw_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with its ``base:`` file (a path relative to it) merged in underneath."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path in _seen:
        raise ValueError(f"config base cycle: {' -> '.join(p.name for p in (*_seen, path))}")
    raw = yaml.safe_load(path.read_text()) or {}
    base = raw.pop("base", None)
    if base is None:
        return raw
    return merge_configs(read_raw_config(path.parent / base, (*_seen, path)), raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """A typed config and the raw dict it came from, ``base:`` merged in (saved beside the run for
    reproducibility); command-line ``overrides`` are applied and named at the end of its description."""
    path = Path(path)
    raw = apply_overrides(read_raw_config(path), overrides or [])
    if overrides:
        raw["description"] = " ".join(filter(None, [raw.get("description", "").strip(),
                                                    f"Overridden on the command line: {', '.join(overrides)}."]))
    if "model" not in raw:
        raise ValueError(f"{path}: a config needs a 'model' (see `agegender models`)")
    return _build(TrainConfig, raw, path.name), raw
