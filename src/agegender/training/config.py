"""Training configs: YAML files with ``key.sub=value`` command-line overrides, validated into typed sections.

Every section is a pydantic model that refuses unknown keys and values out of range, so that ``load_config``
stops before any data is read. It reports every problem at once, one line each, as ``file: key = value: what is
allowed`` (a ``ConfigError``, which is a ``ValueError``).
"""

from __future__ import annotations

import copy
import difflib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agegender.data.datasets import DataConfig
from agegender.models import get_config
from agegender.outputs import AGE_KEYS, AUXILIARY_KEYS, GENDER_KEYS, OUTPUT_KEYS
from agegender.reporting.metrics import SELECTABLE_METRICS
from agegender.training.losses import LOSS_OUTPUTS, LossSpec, scheduled_weight

log = logging.getLogger(__name__)

#: What ``select`` may name: a validation loss, or a validation figure of ``compute_metrics`` (higher is better
#: for all but losses and the MAE).
SELECTABLE = ("val_loss", "val_age_loss", "val_gender_loss", *(f"val_{key}" for key in SELECTABLE_METRICS))
#: Whole numbers are strict: YAML's ``true`` is not an epoch count (pydantic's lax mode reads it as 1).
_Count = Annotated[int, Field(ge=0, strict=True)]
_Positive = Annotated[int, Field(ge=1, strict=True)]
#: ``[epoch, N]``: from that epoch on, the last N parameterised layers train.
_Unfreeze = Annotated[list[_Count], Field(min_length=2, max_length=2)]


def _text_path(value: Any) -> Any:
    """A path given from Python (``Path``) as the text a YAML config gives."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [str(v) if isinstance(v, Path) else v for v in value]
    return value


class ConfigError(ValueError):
    """A config that does not validate: ``problems`` holds one ``key = value: what is allowed`` line each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {problem}" for problem in self.problems))

    def one_line(self) -> str:
        """Every problem on one line, the file named once (as the command line reports it)."""
        return f"{self.source}: {'; '.join(self.problems)}"


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd and rmsprop


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["none", "step", "multistep", "onecycle", "cosine", "plateau"] = "none"
    step_size: _Positive = 10  # epochs (step)
    milestones: list[_Count] = Field(default_factory=list)  # epochs (multistep)
    gamma: float = Field(default=0.1, gt=0, le=1)  # the factor of each decay (step, multistep, plateau)
    pct_start: float = Field(default=0.25, ge=0, le=1)  # onecycle warm-up share
    patience: _Count = 3  # plateau


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # a checkpoint or a run folder (its best.pt) of any model with the same input, or a list of them (an ensemble)
    teacher: str | list[str] | None = None
    weight: float = Field(default=1.0, ge=0)  # the distillation term's weight beside the labels' loss
    temperature: float = Field(default=1.0, gt=0)
    flip: bool = False  # the teacher's outputs are averaged with those for the mirrored batch
    runtime: Literal["auto", "torch", "onnx"] = "auto"  # where the teacher runs: auto is ONNX Runtime on a CPU
    # instead of a teacher model: its outputs stored beforehand, one row per training image (an .npz written by
    # agegender.training.distill.save_stored_outputs, e.g. by scripts/build/descriptor_teacher.py)
    stored: str | None = None
    # weight of each distilled head (an output name such as descriptor or gender_logit) inside the distillation
    # term: a number or [epoch, weight] knots, linear between them (default 1 for every head)
    heads: dict[str, float | list[list[float]]] = Field(default_factory=dict)

    @field_validator("teacher", "stored", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _text_path(value)

    @field_validator("heads", mode="before")
    @classmethod
    def _known_heads(cls, heads: Any) -> Any:
        if not isinstance(heads, Mapping):
            return heads  # pydantic says what a mapping is
        known = (*OUTPUT_KEYS, *AUXILIARY_KEYS)
        for head, weight in heads.items():
            if head not in known:
                raise ValueError(f"{head!r} is not a model output; known: {', '.join(known)}")
            try:
                scheduled_weight(weight, 0)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{head}: give a number or [epoch, weight] pairs, not {weight!r}") \
                    from err
            if min(float(w) for w in ([weight] if isinstance(weight, int | float) else [w for _, w in weight])) < 0:
                raise ValueError(f"{head}: a weight below 0 would push the student away from its "
                                 f"teacher ({weight!r})")
        return heads

    def head_weights(self, epoch: float) -> dict[str, float]:
        """Each listed head's weight at ``epoch``."""
        return {head: scheduled_weight(weight, epoch) for head, weight in self.heads.items()}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1)
    model_args: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: LossSpec = Field(default_factory=LossSpec)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    init: str | None = None  # start from the weights of a checkpoint or run folder (its best.pt) of the same model
    epochs: _Positive = 10
    batch_size: _Positive = 64
    seed: int = Field(default=0, ge=0, lt=2**32, strict=True)
    start_age_at_mean: bool = False  # the age regression heads' bias starts at the training set's mean age
    ema: float | None = Field(default=None, ge=0, lt=1)  # per-step decay of a moving average of the weights (0.998)
    select: str = "val_loss"  # checkpoint selection: val_loss, val_age_loss, val_gender_loss or val_<metric>
    # more selections of the same run, each kept as best_<key>.pt (seed 001 Table 8: the two-head nets chosen by
    # validation age loss, 7.1 and 8.1, and by gender loss, 7.2 and 8.2); `select` still picks best.pt
    also_select: list[str] = Field(default_factory=list)
    early_stopping: _Positive | None = None  # patience in epochs
    trainable_last: _Positive | None = None  # freeze all but the last N parameterised layers
    unfreeze: list[_Unfreeze] = Field(default_factory=list)  # [epoch, N]: from epoch on, the last N train
    threads: _Positive | None = None
    # hold the training images in the device's memory and augment them there (DeviceBatches): for a GPU, which a
    # CPU loop per image cannot keep busy; on a CPU it runs too (the same draws), but brings nothing
    data_on_device: bool = False
    # fp32, bf16-mixed (bfloat16 autocast, float32 weights) or auto: bf16 where it measures faster (docs/precision.md)
    precision: Literal["fp32", "bf16-mixed", "auto"] = "fp32"
    # the split the best epoch is scored on at the end: val (the test split stays sealed: `agegender evaluate
    # --split test` scores it once for a model that ships) or test (cross-validation, whose folds are the protocol)
    final_split: Literal["val", "test"] = "val"
    description: str = ""

    @field_validator("init", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _text_path(value)

    @field_validator("select")
    @classmethod
    def _selectable(cls, select: str) -> str:
        if select not in SELECTABLE:
            raise ValueError(f"Input should be one of {', '.join(SELECTABLE)}")
        return select

    @field_validator("also_select")
    @classmethod
    def _also_selectable(cls, keys: list[str]) -> list[str]:
        for key in keys:
            cls._selectable(key)
        return list(dict.fromkeys(keys))


def _data_path(loc: tuple[str | int, ...], raw: Any, keep_last: bool
               ) -> tuple[tuple[str | int, ...], Any, tuple[str | int, ...] | None]:
    """``loc`` without the names pydantic gives the members of a union (``str``, ``list[str]``): the parts that
    lead through ``raw``, the value they lead to, and the path to the first union (None: no union on the way)."""
    path: list[str | int] = []
    union: tuple[str | int, ...] | None = None
    node = raw
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        elif not (keep_last and i == len(loc) - 1):
            union = tuple(path) if union is None else union
            continue
        path.append(part)
    return tuple(path), node, union


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(the whole config)"


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _section_keys(path: Sequence[str | int]) -> tuple[str, list[str]]:
    """The section ``path`` leads to, and its keys (empty when it is not a section)."""
    cls: type[BaseModel] = TrainConfig
    for part in path:
        field = cls.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return _dotted(path), []
        cls = annotation
    return (_dotted(path) if path else ""), sorted(cls.model_fields)


def describe_errors(err: ValidationError, raw: Any) -> list[str]:
    """One ``key = value: what is allowed`` line per problem of a validation of ``raw``."""
    unknown: dict[tuple[str | int, ...], list[str]] = {}  # per section, its unknown keys
    found: list[tuple[tuple[str | int, ...], Any, str, tuple[str | int, ...] | None]] = []
    for error in err.errors(include_url=False):
        kind = error["type"]
        path, value, union = _data_path(tuple(error["loc"]), raw, keep_last=kind in ("missing", "extra_forbidden"))
        key = _dotted(path)
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(str(path[-1]), _section_keys(path[:-1])[1], n=1)
            unknown.setdefault(path[:-1], []).append(f"{key} = {_show(error['input'])}"
                                                     f"{f' (did you mean {close[0]}?)' if close else ''}")
            continue
        message = error["msg"]
        for prefix in ("Value error, ", "Assertion failed, ", f"{key}: "):
            message = message.removeprefix(prefix)
        found.append((path, "(missing)" if kind == "missing" else _show(value), message, union))
    # a union's member that got further into the value tells more than one that refused it whole
    deeper = {union for path, _, _, union in found if union is not None and len(path) > len(union)}
    lines: dict[str, tuple[str, list[str]]] = {}  # per key, its value and messages (one per union member)
    for path, value, message, union in found:
        if union is not None and path == union and union in deeper:
            continue
        messages = lines.setdefault(_dotted(path), (value, []))[1]
        if message not in messages:
            messages.append(message)
    out = []
    for section_path, keys in unknown.items():
        section, known = _section_keys(section_path)
        out.append(f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(keys)}: known keys"
                   f"{f' of {section}' if section else ''}: {', '.join(known)}")
    return out + [f"{key} = {value}: {' or '.join(messages)}" for key, (value, messages) in lines.items()]


def validate_config(raw: Mapping[str, Any], source: str = "config", given: Mapping[str, Any] | None = None
                    ) -> TrainConfig:
    """``raw`` as a typed config, or a ``ConfigError`` naming every key that is wrong, its value and what is
    allowed (or data that label none of the model's outputs); a loss setting for an output the model lacks is
    logged as ignored (a shared ``base:`` may set it for its other models), and so is a setting of ``given`` (the
    keys the config file itself and its overrides set, not its ``base:``; default ``raw``) that the run will not
    read (:func:`_ignored_settings`)."""
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(source, describe_errors(err, raw)) from None
    outputs = model_outputs(config)
    for key in sorted(config.loss.model_fields_set):
        if outputs is not None and key in LOSS_OUTPUTS and not set(LOSS_OUTPUTS[key]) & set(outputs):
            log.warning("%s: loss.%s = %s is ignored: %s has no %s output (its outputs: %s)", source, key,
                        _show(getattr(config.loss, key)), config.model, " or ".join(LOSS_OUTPUTS[key]),
                        ", ".join(outputs))
    for line in _ignored_settings(config, raw if given is None else given):
        log.warning("%s: %s", source, line)
    problems = []
    if outputs is not None and set(outputs) <= {"attributes"} and config.data.dataset != "celeba":
        problems.append(f"data.dataset = {config.data.dataset!r}: {config.model} predicts CelebA's attributes only, "
                        "and only the celeba data set labels them")
    for key, value in (("select", config.select), *(("also_select", k) for k in config.also_select)):
        needs = _SELECT_NEEDS.get(value.removeprefix("val_").split("_")[0])
        if outputs is not None and needs is not None and not set(outputs) & needs[1]:
            problems.append(f"{key} = {value!r}: {config.model} has no {needs[0]} output (its outputs: "
                            f"{', '.join(outputs)}), so it would never change")
    if config.unfreeze and config.trainable_last is None:
        problems.append(f"unfreeze = {config.unfreeze}: nothing is frozen to unfreeze: give trainable_last, the "
                        "layers that train from the start")
    if problems:
        raise ConfigError(source, problems)
    return config


#: Settings that only some choices read: (section, key) -> the choices of the section's ``name`` that read it.
_READ_BY: dict[tuple[str, str], frozenset[str]] = {
    ("optimizer", "momentum"): frozenset({"sgd", "rmsprop"}),
    ("schedule", "step_size"): frozenset({"step"}),
    ("schedule", "milestones"): frozenset({"multistep"}),
    ("schedule", "gamma"): frozenset({"step", "multistep", "plateau"}),
    ("schedule", "pct_start"): frozenset({"onecycle"}),
    ("schedule", "patience"): frozenset({"plateau"}),
}


def _ignored_settings(config: TrainConfig, given: Mapping[str, Any]) -> list[str]:
    """A line for each setting of ``given`` (raw sections) that this run will not read, unless it is the default:
    a key of another optimizer or schedule, distillation settings without a teacher; and for an unfreeze step at or
    past the last epoch."""

    def sets(section: str) -> set[str]:
        """The keys ``given`` sets in ``section`` to other than their defaults (a default changes nothing)."""
        keys, part = given.get(section), getattr(config, section)
        fields = type(part).model_fields
        return {key for key in keys if key in fields and getattr(part, key) != fields[key].get_default(
            call_default_factory=True)} if isinstance(keys, Mapping) else set()

    lines = []
    for (section, key), readers in _READ_BY.items():
        part = getattr(config, section)
        if key in sets(section) and part.name not in readers:
            lines.append(f"{section}.{key} = {_show(getattr(part, key))} is ignored: {section}.name = {part.name!r} "
                         f"does not read it (only {', '.join(sorted(readers))})")
    distill = config.distill
    # what reads each distillation key: a teacher model, or any source of targets (a teacher or stored outputs)
    unread = ({"flip", "runtime"} if not distill.teacher else set()) | (
        set(DistillConfig.model_fields) - {"teacher", "stored"} if not (distill.teacher or distill.stored) else set())
    lines += [f"distill.{key} = {_show(getattr(distill, key))} is ignored: no distill.teacher"
              f"{'' if key in ('flip', 'runtime') else ' or distill.stored'}"
              for key in sorted(sets("distill") & unread)]
    lines += [f"unfreeze [{start}, {n}] is ignored: the run's last epoch is {config.epochs - 1} (epochs count from 0)"
              for start, n in config.unfreeze if start >= config.epochs]
    return lines


#: What a ``select`` key's first word needs of the model: the kind of output, and the output keys that give it.
_SELECT_NEEDS: dict[str, tuple[str, frozenset[str]]] = {
    "age": ("age", AGE_KEYS), "group": ("age", AGE_KEYS), "gender": ("gender", GENDER_KEYS)}


def model_outputs(config: TrainConfig) -> tuple[str, ...] | None:
    """The outputs ``config``'s model will have (None for a model the registry does not know: ``create_model``
    names the known ones)."""
    if isinstance(config.model_args.get("outputs"), list | tuple):  # create_model checks the network returns them
        return tuple(map(str, config.model_args["outputs"]))
    try:
        return tuple(get_config(config.model).outputs)
    except KeyError:
        return None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optimizer.lr=0.01", "epochs=2"]`` applied to a raw config dict (values parsed as YAML). A mapping given
    for a section merges into it as a child config's does (``data={root: X}`` keeps the section's other keys); an
    empty one, ``{}``, empties it (its keys back to their defaults; only as the whole value, not nested).

    >>> apply_overrides({"data": {"dataset": "utkface", "root": "a"}}, ["data={root: b}"])
    {'data': {'dataset': 'utkface', 'root': 'b'}}
    >>> apply_overrides({"model_args": {"blocks": [1, 1]}}, ["model_args={}"])
    {'model_args': {}}
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parents[:i + 1])} is {node!r}, not a section")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not YAML ({' '.join(str(err).split())})") from None
        both = isinstance(parsed, dict) and bool(parsed) and isinstance(node.get(leaf), dict)
        node[leaf] = merge_configs(node[leaf], parsed) if both else parsed
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


def read_raw_config(path: str | Path) -> dict[str, Any]:
    """A YAML config as a dict, with its ``base:`` file (a path relative to it) merged in underneath."""
    return _read_layers(Path(path))[1]


def _read_layers(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys the config file at ``path`` sets itself (``base:`` left out), and the whole config: those keys
    merged over its ``base:`` file's (a path relative to it), recursively."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path in _seen:
        raise ValueError(f"config base cycle: {' -> '.join(p.name for p in (*_seen, path))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"not valid YAML: {' '.join(str(err).split())}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"a config is a mapping of keys, not a {type(raw).__name__}"])
    base = raw.pop("base", None)
    if base is None:
        return raw, raw
    if not isinstance(base, str):
        raise ConfigError(str(path), [f"base = {_show(base)}: give the path of one config file, relative to this one"])
    return raw, merge_configs(_read_layers(path.parent / base, (*_seen, path))[1], raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """A typed config and the raw dict it came from, ``base:`` merged in (saved beside the run for
    reproducibility); command-line ``overrides`` are applied and named at the end of its description. A config
    that does not validate raises ``ConfigError`` before anything else happens."""
    path = Path(path)
    own, merged = _read_layers(path)
    raw = apply_overrides(merged, overrides or [])
    if overrides and isinstance(raw.get("description", ""), str | None):
        raw["description"] = " ".join(filter(None, [(raw.get("description") or "").strip(),
                                                    f"Overridden on the command line: {', '.join(overrides)}."]))
    if "model" not in raw:
        raise ConfigError(str(path), ["a config needs a 'model' (see `agegender models`)"])
    return validate_config(raw, str(path), given=apply_overrides(own, overrides or [])), raw
