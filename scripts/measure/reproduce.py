"""The reproduction suite: train (or resume) every seed experiment of ``scripts/measure/reproduce.yaml`` within its
CPU budget, with its training seeds, evaluate each on the UTKFace test split, and write ``docs/results.md``: the
papers' figures beside ours, our protocol, the training time, and which of the papers' claims our numbers support.

    python scripts/measure/reproduce.py                    # the default suite: about 9 hours of 2 cores in
                                                           # fp32 by the runs' estimates (less in bf16)
    python scripts/measure/reproduce.py --no-train         # evaluate finished runs, rewrite docs/results.md
    python scripts/measure/reproduce.py --only lh_age vu   # train these runs (all their seeds), rewrite the page
    python scripts/measure/reproduce.py --include model_b  # add optional runs
    python scripts/measure/reproduce.py --full --runs-dir /data/repro-full  # the papers' recipes (a GPU)

Runs live in ``--runs-dir`` (default ``../runs/repro`` beside the repository, ``../runs/repro-full`` with
``--full``), one folder per run and seed (``lh_age``, ``lh_age.seed1``, ...): a finished run (``summary.yaml``) is
reused, an interrupted one resumes, a failed one leaves ``<folder>.failed.txt``.
The page is written from the **ledger** (``--ledger``, default ``docs/results/``, committed; ``docs/results-full/``
with ``--full``), which outlives the run folders: each finished run's summary and device
(``runs/<folder>.yaml``) and each row's evaluation per seed (``evaluations/<row>[.seedK]/``: report.md,
metrics.json, predictions.npz and the checkpoints it scored, redone when a run folder holds a different
checkpoint). Each run goes into the ledger, and the rows it completes are evaluated into it, as soon as it
finishes (and, at the start, every run finished before), so a suite cut short loses no finished run. A clone with
the ledger and without the run folders rewrites the same page with ``--no-train``. A row whose first seed is not
finished reads "not run": no number is filled in by hand; a row shows the mean over its finished seeds.

Claims are judged by a paired bootstrap over the test faces, and over the training seeds where a row has several:
the 95% interval of (ours for the side the paper says is better) minus (ours for the other side); "supported" when
it lies above zero, "contradicted" when below (or "not reproduced at this budget" when a run had less than half of
its recipe's training samples), "inconclusive" otherwise; "not testable at this budget" when both rows evaluate
the same checkpoints the same way (selection rules that chose the same epochs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from agegender.benchmark.timing import time_interleaved
from agegender.data.datasets import (
    DataConfig,
    SplitRecords,
    dataset_splits,
    decode_split,
    filter_records,
    select_records,
)
from agegender.data.records import FaceRecord
from agegender.evaluation.compare import BOOTSTRAP_SAMPLES, COMPARABLE, compare_faces, face_arrays
from agegender.evaluation.evaluate import face_metrics, load_evaluable, predict_faces
from agegender.labels import AGE_GROUPS, NUM_AGE_GROUPS
from agegender.models import config_of, create_model, get_config
from agegender.models.chained import ChainedPredictor
from agegender.oversample import TTA_MODES
from agegender.paths import default_path
from agegender.reporting.metrics import METRIC_LABELS, confusion_matrix, format_metric, normalize_rows
from agegender.reporting.report import protocol_text, write_report
from agegender.training.config import TrainConfig, load_config
from agegender.training.engine import train

REPO = Path(__file__).resolve().parents[2]
SUITE_FILE = Path(__file__).with_name("reproduce.yaml")
DEFAULT_RUNS = REPO.parent / "runs" / "repro"
DEFAULT_DATA = default_path("utkface")
DEFAULT_OUT = REPO / "docs" / "results.md"
DEFAULT_LEDGER = REPO / "docs" / "results"
NOT_RUN = "not run"
#: The verdict of a claim whose two rows evaluate the same checkpoints the same way (a budget too short for the
#: selection rules it compares to choose differently).
SAME_MODEL = "not testable at this budget"

log = logging.getLogger("reproduce")


@dataclass(frozen=True)
class Run:
    """A training run: a seed config, the overrides that make it the experiment (``overrides``: part of the
    recipe, kept with ``--full``) and those that fit it into the CPU budget (``budget``; ``samples=N`` trains
    for the epochs closest to N training samples on the run's own faces), trained with ``seeds`` seeds."""

    name: str
    config: str
    budget: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    seeds: int = 1
    est_minutes: float | None = None
    optional: str | None = None  # why the default suite leaves it out
    init_from: str | None = None  # a run whose weights each seed starts from (its own seed's folder): fine-tuning

    def dirs(self, runs_dir: Path) -> list[Path]:
        """One run folder per seed: ``<name>``, then ``<name>.seed1`` ..."""
        return [runs_dir / (self.name if k == 0 else f"{self.name}.seed{k}") for k in range(self.seeds)]


@dataclass(frozen=True)
class Row:
    """One line of the results table: a run (or seed 000's chain of three) evaluated with one TTA mode."""

    name: str
    title: str
    tta: str
    metrics: tuple[str, ...]
    paper: str
    model: str | None = None
    chain: Mapping[str, Any] | None = None  # {gender, male, female: run names, hard: bool}
    checkpoint: str = "best.pt"  # of ``model``: best.pt, or best_<key>.pt of the config's ``also_select``
    test_filter: Mapping[str, str] | None = None  # score only the test faces with these labels (data.filter)
    needs: str | None = None  # a row this machine cannot run: what it needs (data or weights), and the configs

    @property
    def runs(self) -> tuple[str, ...]:
        if self.chain is not None:
            return tuple(self.chain[part] for part in ("gender", "male", "female"))
        return (self.model,) if self.model else ()


@dataclass(frozen=True)
class Claim:
    """A paper's claim that row ``better`` beats row ``worse`` on ``metric``."""

    claim: str
    paper: str
    better: str
    worse: str
    metric: str


@dataclass(frozen=True)
class ConfusionTable:
    """A paper's age-group confusion matrix (rows true, columns predicted, each row summing to about 1) shown
    beside ours for ``row``, pooled over its seeds."""

    row: str
    paper: str
    matrix: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class TimingTable:
    """A paper's seconds per image for some rows' networks, shown beside our time per image for each row's first
    seed (batch 1, float32 PyTorch on this machine's CPU threads)."""

    paper: str
    seconds: Mapping[str, float]  # row -> the paper's seconds per image


@dataclass(frozen=True)
class Suite:
    runs: dict[str, Run]
    rows: list[Row]
    claims: list[Claim]
    confusion: ConfusionTable | None = None
    timing: TimingTable | None = None


@dataclass
class Context:
    """What the results page says besides the rows: data sizes, mode, hardware, how it was made."""

    n_train: int | None = None
    n_test: int | None = None
    full: bool = False
    devices: set[str] = field(default_factory=set)
    finished: dict[str, int] = field(default_factory=dict)  # run -> how many of its seeds have summary.yaml
    failures: dict[str, str] = field(default_factory=dict)  # run -> error of its last attempt
    row_errors: dict[str, str] = field(default_factory=dict)  # row -> why its evaluation failed
    budgets: dict[str, Budget] = field(default_factory=dict)  # run -> its budget, resolved on its faces
    times_ms: dict[str, float] = field(default_factory=dict)  # row -> ms per image (TimingTable)
    timing_machine: str = "this machine"  # where times_ms were measured
    command: str = "python scripts/measure/reproduce.py"
    commit: str = "unknown"
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())


@dataclass
class RowResult:
    """Our evaluation of one row: overall figures (the seeds' mean), per-face predictions of each seed, training
    time of its runs."""

    overall: dict[str, Any]
    faces: list[dict[str, np.ndarray]] = field(repr=False)
    train_seconds: float = 0.0
    #: Per seed, (run folder, epoch) of each checkpoint the row evaluates: rows that select the same epochs of
    #: the same runs and score them the same way (``tta``) are one model, whatever their selection rules
    #: (:func:`judge`).
    checkpoints: tuple[tuple[tuple[str, int], ...], ...] = ()
    tta: str = "none"


def load_suite(path: str | Path = SUITE_FILE) -> Suite:
    """The suite file, checked: every row names known runs and figures, every claim known rows; ``common``
    overrides go to every run."""
    raw = yaml.safe_load(Path(path).read_text())
    common = tuple(raw.get("common", ()))
    runs = {name: Run(name, **{**spec, "budget": tuple(spec.get("budget", ())),
                               "overrides": (*common, *spec.get("overrides", ()))})
            for name, spec in raw["runs"].items()}
    rows = [Row(**{**spec, "metrics": tuple(spec["metrics"])}) for spec in raw["rows"]]
    claims = [Claim(**spec) for spec in raw["claims"]]
    for run in runs.values():
        source = runs.get(run.init_from) if run.init_from else None
        if run.init_from and (source is None or source.seeds < run.seeds or source.init_from):
            raise ValueError(f"{path}: run {run.name!r} starts from {run.init_from!r}, which must be a run of the "
                             f"suite with at least {run.seeds} seed(s) that starts from nothing itself")
    row_names = {row.name for row in rows}
    for row in rows:
        problems = [f"run {r!r}" for r in row.runs if r not in runs] + [f"metric {m!r}" for m in row.metrics
                                                                        if m not in METRIC_LABELS]
        if bool(row.runs) == bool(row.needs) or row.tta not in TTA_MODES or problems:
            what = (f"unknown {', '.join(problems)}" if problems else
                    "needs a known tta and exactly one of model, chain and needs")
            raise ValueError(f"{path}: row {row.name!r} {what}")
        if row.chain is not None and row.checkpoint != "best.pt":
            raise ValueError(f"{path}: row {row.name!r}: a chain's parts are their best.pt")
        filter_records([], row.test_filter or {})  # a known filter, or a clear error
    for claim in claims:
        if {claim.better, claim.worse} - row_names or claim.metric not in COMPARABLE:
            raise ValueError(f"{path}: claim {claim.claim!r} names an unknown row or metric")
    confusion = timing = None
    if "confusion" in raw:
        spec = raw["confusion"]
        confusion = ConfusionTable(spec["row"], spec["paper"], tuple(map(tuple, spec["matrix"])))
        if confusion.row not in row_names or np.shape(confusion.matrix) != (NUM_AGE_GROUPS, NUM_AGE_GROUPS):
            raise ValueError(f"{path}: confusion needs a known row and an {NUM_AGE_GROUPS}x{NUM_AGE_GROUPS} matrix")
    if "timing" in raw:
        timing = TimingTable(raw["timing"]["paper"], dict(raw["timing"]["seconds"]))
        if set(timing.seconds) - row_names:
            raise ValueError(f"{path}: timing names unknown rows {sorted(set(timing.seconds) - row_names)}")
    return Suite(runs, rows, claims, confusion, timing)


# -- budgets --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """A run's budget, resolved on its own training faces: the overrides it trains with (each with the recipe's
    value) and its training samples (epochs x faces), against the recipe's."""

    overrides: tuple[str, ...]  # key=value, ``samples=N`` resolved to epochs
    shown: tuple[str, ...]  # each override in words, with the recipe's value
    samples: float
    recipe_samples: float

    @property
    def share(self) -> float:
        return self.samples / self.recipe_samples


def epochs_for(samples: int, faces: int) -> int:
    """The whole number of epochs over ``faces`` closest to ``samples`` training samples (at least one).

    >>> epochs_for(12_000, 4_000), epochs_for(12_000, 1_900), epochs_for(100, 4_000)
    (3, 6, 1)
    """
    return max(1, round(samples / faces))


def train_faces(cfg: TrainConfig, splits: SplitRecords) -> int:
    """How many faces a config trains on: its data set's train split after ``train_limit`` and ``filter``."""
    return len(select_records(splits, cfg.data)["train"])


def _setting(cfg: TrainConfig, key: str) -> Any:
    """A config's value for a dotted override key, in words (``all`` for no train_limit)."""
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
    if node is None and key == "data.train_limit":
        return "all"
    if node is None and key == "model_args.input_size":
        return get_config(cfg.model).input_size
    return "default" if node is None else node


def resolve_budget(run: Run, splits: SplitRecords, data_root: Path, full: bool) -> Budget:
    """The overrides a run trains with (``full``: its recipe's) and its samples against the recipe's."""
    base = [*run.overrides, f"data.root={data_root}"]
    recipe, _ = load_config(REPO / run.config, base)
    items = [] if full else list(run.budget)
    wanted = [int(i.split("=", 1)[1]) for i in items if i.startswith("samples=")]
    items = [i for i in items if not i.startswith("samples=")]
    cfg, _ = load_config(REPO / run.config, [*base, *items])
    if wanted:
        items.append(f"epochs={epochs_for(wanted[0], train_faces(cfg, splits))}")
        cfg, _ = load_config(REPO / run.config, [*base, *items])
    shown = [f"{key} {value} (recipe: {_setting(recipe, key)})"
             for key, value in (item.split("=", 1) for item in items)]
    samples = cfg.epochs * train_faces(cfg, splits)
    if wanted:
        shown.append(f"{samples:,} training samples (asked: {wanted[0]:,})")
    return Budget(tuple([*base, *items]), tuple(shown), float(samples),
                  float(recipe.epochs * train_faces(recipe, splits)))


def budget_text(run: Run, context: Context) -> str:
    """The run's budget overrides, each with the recipe's own value."""
    start = [f"fine-tuned from {run.init_from}"] if run.init_from else []
    if context.full or not run.budget:
        return ", ".join([*start, "the recipe as configured"])
    budget = context.budgets.get(run.name)
    return ", ".join([*start, *(budget.shown if budget is not None else run.budget)])


def row_budget(row: Row, suite: Suite, context: Context) -> tuple[float | None, float | None]:
    """A row's smallest share of its runs' recipes and the training samples of all its runs (one seed)."""
    budgets = [context.budgets.get(name) for name in row.runs]
    if not budgets or any(b is None for b in budgets):
        return None, None
    return min(b.share for b in budgets if b), sum(b.samples for b in budgets if b)


# -- training -------------------------------------------------------------------------------------------
def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.yaml").is_file()


def first_precision(run_dir: Path, ledger: Ledger | None = None) -> str | None:
    """The precision a finished run trained in (its summary's, or its ledger record's), or None."""
    if finished(run_dir):
        return yaml.safe_load((run_dir / "summary.yaml").read_text()).get("precision")
    return ledger.run(run_dir.name).get("precision") if ledger is not None and ledger.finished(run_dir.name) else None


def with_sources(suite: Suite, names: Sequence[str]) -> list[str]:
    """``names`` in order, each run a named run fine-tunes from put before it (added if absent)."""
    out: list[str] = []
    for name in names:
        source = suite.runs[name].init_from
        out += [n for n in (source, name) if n is not None and n not in out]
    return out


def machine() -> str:
    """The device training runs on, in words."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def train_runs(suite: Suite, names: Sequence[str], runs_dir: Path, budgets: Mapping[str, Budget],
               ledger: Ledger, progress: bool, trained: Callable[[str], None] | None = None) -> None:
    """Train or resume each seed of each named run that neither its folder nor the ledger records as finished
    (delete a ledger record to retrain); a failure is logged and written beside the run, the suite goes on.
    ``trained(run)`` is called after each seed of ``run`` that finishes (to put it in the ledger at once)."""
    for name in names:
        run = suite.runs[name]
        for k, run_dir in enumerate(run.dirs(runs_dir)):
            failed = run_dir.with_name(f"{run_dir.name}.failed.txt")
            if finished(run_dir) or ledger.finished(run_dir.name):
                log.info("%s: finished, reused", run_dir.name)
                continue
            overrides = list(budgets[name].overrides)
            if run.init_from:
                source = suite.runs[run.init_from].dirs(runs_dir)[k]
                if not finished(source):
                    why = (f"starts from {source.name}, whose weights are not in {runs_dir} (the ledger holds only its "
                           f"record: delete {ledger.run_file(source.name)} to retrain it)"
                           if ledger.finished(source.name) else f"starts from {source.name}, which has not finished")
                    log.error("%s: not trained: %s", run_dir.name, why)
                    failed.write_text(why + "\n")
                    continue
                overrides.append(f"init={source}")
            if k:  # every seed of a run in the precision its first seed's `auto` chose: seeds differ by seed only
                overrides += [f"precision={p}" for p in [first_precision(run.dirs(runs_dir)[0], ledger)] if p]
            try:
                cfg, raw = load_config(REPO / run.config, overrides)
                if k:
                    overrides.append(f"seed={cfg.seed + k}")
                    cfg, raw = load_config(REPO / run.config, overrides)
                log.info("%s: training %s %s", run_dir.name, run.config, " ".join(overrides))
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "device.txt").write_text(machine() + "\n")
                train(cfg, run_dir, resume=True, raw_config=raw, progress=progress)
                failed.unlink(missing_ok=True)
                if trained is not None:
                    trained(name)
            except Exception as err:  # one failed run must not stop the others
                log.error("%s failed: %s: %s", run_dir.name, type(err).__name__, err)
                failed.write_text(f"{type(err).__name__}: {err}\n")


# -- the ledger -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ledger:
    """The committed record the results page is written from (module docstring): finished runs and row
    evaluations, each a small file, so that the page and its claims survive the run folders."""

    root: Path

    def run_file(self, name: str) -> Path:
        return self.root / "runs" / f"{name}.yaml"

    def finished(self, name: str) -> bool:
        return self.run_file(name).is_file()

    def run(self, name: str) -> dict[str, Any]:
        return dict(yaml.safe_load(self.run_file(name).read_text()))

    def record_runs(self, suite: Suite, runs_dir: Path) -> None:
        """Copy each finished run folder's summary and device into the ledger (a retrained run replaces its
        record)."""
        for run in suite.runs.values():
            for run_dir in filter(finished, run.dirs(runs_dir)):
                summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
                device = run_dir / "device.txt"
                summary["device"] = device.read_text().strip() if device.is_file() else "unknown"
                self.run_file(run_dir.name).parent.mkdir(parents=True, exist_ok=True)
                self.run_file(run_dir.name).write_text(yaml.safe_dump(summary, sort_keys=False))

    def evaluation(self, row: str, seed: int) -> Path:
        return self.root / "evaluations" / (row if seed == 0 else f"{row}.seed{seed}")


def checkpoint_stamps(row: Row, run_dirs: Sequence[Path]) -> list[dict[str, Any]] | None:
    """What identifies the checkpoints a row scores (run folder, epoch, time written), or None where a run
    folder or its checkpoint is not on this machine."""
    paths = [d / row.checkpoint for d in run_dirs]
    if not all(p.is_file() for p in paths):
        return None
    return [{"run": p.parent.name, "epoch": checkpoint_epoch(p),
             "written": datetime.datetime.fromtimestamp(p.stat().st_mtime, datetime.UTC).isoformat()}
            for p in paths]


def compact_faces(faces: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A row's per-face arrays in the smallest dtypes that keep them exact enough for the claims (float32 ages
    and probabilities, int8 codes): the ledger holds about a hundred of them."""
    small = {"true_group": np.int8, "group": np.int8, "true_gender": np.int8, "true_age": np.float32,
             "age": np.float32, "female_prob": np.float32}
    return {key: value.astype(small[key]) if key in small else value for key, value in faces.items()}


# -- evaluation -----------------------------------------------------------------------------------------
def row_seeds(row: Row, suite: Suite, runs_dir: Path) -> list[list[Path]]:
    """Per training seed, the run folders a row's model is made of (a chain: gender, male, female); as many
    seeds as its runs share."""
    per_run = [suite.runs[name].dirs(runs_dir) for name in row.runs]
    return [list(parts) for parts in zip(*per_run, strict=False)]


def _load_row_model(row: Row, run_dirs: Sequence[Path]) -> nn.Module:
    parts = [load_evaluable(d / row.checkpoint) for d in run_dirs]
    if row.chain is None:
        return parts[0]
    gender, male, female = parts
    return ChainedPredictor.gender_then_age(gender, male, female, hard=bool(row.chain["hard"])).eval()


def evaluate_row(row: Row, suite: Suite, runs_dir: Path, ledger: Ledger, records: Sequence[FaceRecord],
                 description: str, progress: bool) -> RowResult | None:
    """Our figures for a row on the test records (only those of ``test_filter``): per seed, from the ledger, or
    evaluated into it where a run folder here holds checkpoints other than those it records; and their mean.
    None while the first seed of any of its runs is unfinished; later seeds count once finished."""
    if row.test_filter:
        records = filter_records(records, row.test_filter)
        description += f", only faces of {', '.join(f'{k} {v}' for k, v in row.test_filter.items())} " \
                       f"({len(records)})"
    every_seed = row_seeds(row, suite, runs_dir)
    seeds = [dirs for dirs in every_seed if all(ledger.finished(d.name) for d in dirs)]
    if not seeds or seeds[0] != every_seed[0]:
        return None
    overall, faces, seconds, checkpoints = [], [], 0.0, []
    for k, run_dirs in enumerate(seeds):
        out = ledger.evaluation(row.name, k)
        scored, stamps = out / "checkpoints.json", checkpoint_stamps(row, run_dirs)
        if stamps is not None and (not scored.is_file() or json.loads(scored.read_text()) != stamps):
            log.info("%s: evaluating %s (%s)", row.name, ", ".join(d.name for d in run_dirs), row.tta)
            model = _load_row_model(row, run_dirs)
            data = decode_split(records, config_of(model), progress)
            decoded = predict_faces(model, data.images, row.tta)
            write_report(face_metrics(data.records, decoded), out, title=row.title, protocol=protocol_text(
                f"{description}; {row.checkpoint} of {', '.join(d.name for d in run_dirs)}", row.tta), figures=False)
            np.savez_compressed(out / "predictions.npz", **compact_faces(face_arrays(data.records, decoded)))
            scored.write_text(json.dumps(stamps, indent=1) + "\n")
        elif not scored.is_file():
            raise FileNotFoundError(f"the ledger records {', '.join(d.name for d in run_dirs)} as finished but "
                                    f"holds no evaluation in {out}, and the run folders are not in {runs_dir}")
        checkpoints.append(tuple((s["run"], s["epoch"]) for s in json.loads(scored.read_text())))
        seconds += sum(ledger.run(d.name)["train_seconds"] for d in run_dirs)
        overall.append(json.loads((out / "metrics.json").read_text())["overall"])
        with np.load(out / "predictions.npz") as arrays:
            faces.append(dict(arrays))
    return RowResult(mean_figures(overall), faces, seconds, tuple(checkpoints), row.tta)


def pooled_confusion(result: RowResult) -> np.ndarray:
    """The row-normalised age-group confusion matrix (rows true, columns predicted) of a row's faces, pooled over
    its seeds; faces without a true or a predicted group are left out."""
    counts = np.zeros((NUM_AGE_GROUPS, NUM_AGE_GROUPS), dtype=np.int64)
    for faces in result.faces:
        both = (faces["true_group"] >= 0) & (faces["group"] >= 0)
        counts += confusion_matrix(faces["group"][both], faces["true_group"][both], NUM_AGE_GROUPS)
    return normalize_rows(counts)


def time_rows(suite: Suite, names: Sequence[str], runs_dir: Path, ledger: Ledger,
              budgets: Mapping[str, Budget]) -> dict[str, float]:
    """Milliseconds per image of each row's network (batch 1, float32, inference mode, this process's torch
    threads), timed interleaved so that passing load lands on all alike. The network is built from its run's
    config (its weights do not change its speed), so no run folder is needed; rows whose first seed has not
    finished are left out."""
    calls = {}
    for name in names:
        row = next(r for r in suite.rows if r.name == name)
        if row.model is None or not all(ledger.finished(d.name) for d in row_seeds(row, suite, runs_dir)[0]):
            continue
        run = suite.runs[row.model]
        cfg, _ = load_config(REPO / run.config, budgets[run.name].overrides)
        model = create_model(cfg.model, **cfg.model_args).eval()
        x = torch.zeros(1, 3, config_of(model).input_size, config_of(model).input_size)
        calls[name] = lambda model=model, x=x: model(x)
    with torch.inference_mode():
        timings = time_interleaved(calls, runs=30, min_seconds=3.0)
    return {name: timing.median_ms for name, timing in timings.items()}


def checkpoint_epoch(path: Path) -> int:
    """The training epoch a checkpoint holds (its state is memory-mapped: only the number is read)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"])


def mean_figures(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The seeds' mean of every figure (a figure missing from a seed is left out), with ``seeds`` and, for more
    than one seed, each figure's ``<key>_range`` (lowest, highest).

    >>> mean_figures([{"group_exact": 0.4}, {"group_exact": 0.5}])
    {'group_exact': 0.45, 'group_exact_range': (0.4, 0.5), 'seeds': 2}
    """
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        values: list[float] = [s.get(key) for s in per_seed]  # type: ignore[misc]  # checked on the next line
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = float(np.mean(values))
            if len(values) > 1:
                out[f"{key}_range"] = (min(values), max(values))
    return {**out, "seeds": len(per_seed)}


# -- claims ---------------------------------------------------------------------------------------------
#: Below this share of its recipe's training samples, a row that disagrees with a paper is "not reproduced at
#: this budget" rather than a contradiction of the paper.
MIN_SHARE = 0.5
#: Compared arms whose training samples differ by more than this factor are called unequal in the verdict.
EQUAL_BUDGET = 1.25


def _seeds_text(a: int, b: int) -> str:
    if a == b == 1:
        return "one seed"
    return f"{a} and {b} seeds, resampled" if a != b else f"{a} seeds each, resampled"


def judge(claim: Claim, results: Mapping[str, RowResult | None],
          budgets: Mapping[str, tuple[float | None, float | None]] | None = None) -> tuple[str, str]:
    """(verdict, our comparison in words) of a claim. ``budgets``: each row's (share of its recipe's training
    samples, training samples), :func:`row_budget`; with them a disagreement below :data:`MIN_SHARE` reads "not
    reproduced at this budget", and arms of unequal budgets are named so. Rows trained with several seeds are
    compared with the seeds resampled (:func:`~agegender.evaluation.compare.paired_bootstrap`)."""
    better, worse = results.get(claim.better), results.get(claim.worse)
    if better is None or worse is None:
        return NOT_RUN, "–"
    if better.checkpoints and better.checkpoints == worse.checkpoints and better.tta == worse.tta:
        epochs = sorted({epoch for seed in better.checkpoints for _, epoch in seed})
        return SAME_MODEL, (f"{_figure(claim.metric, better.overall)} for both: each selection chose the same "
                            f"checkpoint (epoch {', '.join(map(str, epochs))}) of every run")
    try:
        difference = compare_faces(better.faces, worse.faces, claim.metric)
    except ValueError as error:
        return "not comparable", str(error)
    if difference is None:
        return "not comparable", f"no face has {claim.metric} for both"
    mean, lo, hi = difference
    unit = "pts" if COMPARABLE[claim.metric] == "pts" else "years better"
    verdict = "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
    figures = f"{_figure(claim.metric, better.overall)} vs {_figure(claim.metric, worse.overall)}"
    words = (f"{figures}: {mean:+.1f} {unit}, 95% CI {lo:+.1f} to {hi:+.1f}; "
             f"{_seeds_text(len(better.faces), len(worse.faces))}")
    (share_a, samples_a), (share_b, samples_b) = ((budgets or {}).get(name, (None, None))
                                                  for name in (claim.better, claim.worse))
    shares = [s for s in (share_a, share_b) if s is not None]
    if verdict == "contradicted" and budgets is not None and (len(shares) < 2 or min(shares) < MIN_SHARE):
        verdict = "not reproduced at this budget"
    if shares:
        words += f"; {', '.join(f'{100 * s:.0f}%' for s in shares)} of the recipes' samples"
    if samples_a and samples_b and max(samples_a, samples_b) / min(samples_a, samples_b) > EQUAL_BUDGET:
        words += f"; unequal budgets ({samples_a:,.0f} vs {samples_b:,.0f} training samples)"
    return verdict, words


# -- rendering ------------------------------------------------------------------------------------------
def _figure(key: str, overall: Mapping[str, Any]) -> str:
    text = format_metric(key, overall.get(key))
    if f"{key}_range" in overall:
        low, high = (format_metric(key, v) for v in overall[f"{key}_range"])
        text += f" ({overall['seeds']} seeds: {low} to {high})"
    return text


def _epochs_text(result: RowResult | None) -> str:
    if result is None or not result.checkpoints:
        return ""
    epochs = sorted({epoch for seed in result.checkpoints for _, epoch in seed})
    return f": epoch {', '.join(map(str, epochs))}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def render_confusion(table: ConfusionTable, result: RowResult | None, title: str) -> list[str]:
    """The paper's and our confusion matrices in one table, each cell "paper / ours"."""
    lines = ["", f"## Age confusion matrix: {title}", "",
             f"Rows are the true age group, columns the predicted one, each row normalised; each cell reads "
             f"*paper / ours*. Paper: {table.paper}. Ours: the UTKFace test faces, "
             + ("not run." if result is None else f"pooled over {len(result.faces)} seed(s)."), "",
             "| true | " + " | ".join(AGE_GROUPS) + " |", "|---" * (NUM_AGE_GROUPS + 1) + "|"]
    ours = None if result is None else pooled_confusion(result)
    for i, group in enumerate(AGE_GROUPS):
        cells = [f"{table.matrix[i][j]:.2f} / " + ("–" if ours is None else f"{ours[i, j]:.2f}")
                 for j in range(NUM_AGE_GROUPS)]
        cells[i] = f"**{cells[i]}**"
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def render_timing(table: TimingTable, times_ms: Mapping[str, float], titles: Mapping[str, str],
                  where: str = "this machine") -> list[str]:
    """Seconds per image as published beside our milliseconds per image (timed on ``where``), with each side's
    ratio to the slowest network."""
    lines = ["", "## Running time per image", "",
             f"Paper: {table.paper}. Ours: median milliseconds per image of each row's network as its run is "
             f"configured, batch 1, float32 PyTorch, on {where} (where this page was written), preprocessing not "
             "included; `python scripts/measure/reproduce.py --no-train` re-times them. Compare the ratios, not the "
             "values.", "",
             "| Network | Paper (s per image) | Ours (ms per image) |", "|---|---|---|"]
    slow_paper = max(table.seconds.values())
    slow_ours = max(times_ms.values(), default=None)
    for name, seconds in table.seconds.items():
        ours = times_ms.get(name)
        mine = "not run" if ours is None or slow_ours is None else f"{ours:.1f} ({slow_ours / ours:.1f}x faster)"
        lines.append(f"| {titles[name]} | {seconds:g} ({slow_paper / seconds:.1f}x faster) | {mine} |")
    return lines


def render_results(suite: Suite, results: Mapping[str, RowResult | None], context: Context) -> str:
    """``docs/results.md`` from the suite and our row results (None or absent: not run)."""
    lines = [
        "# Reproducing the seed papers",
        "",
        f"Generated by `{context.command}` at commit {context.commit} on {context.date}; do not edit by "
        "hand.",
        "",
        "**Data.** The papers report on Adience (seeds 000, 001, 002, 004: 8 age groups, subject-exclusive "
        "folds) or on a 5,000-face UTKFace subset (seed 003). Adience images are not available here beyond a "
        "sample of 288 images of one Flickr user (287 of them in fold 0), so **every number of ours is on "
        "UTKFace**: the project's "
        f"deduplicated split ({_count(context.n_train)} train faces), tested on its test "
        f"split ({_count(context.n_test)} faces). Age-group figures map UTKFace ages to the 8 Adience "
        "groups by the gap policy (an age between groups goes to the nearer edge, ties to the older group). "
        "The paper columns are therefore not the same experiment as ours: compare directions, not values.",
        "",
        "**Budget.** " + ("Every run follows its seed config's recipe." if context.full else
                          "Each run is cut to fit a few CPU hours (overrides in the protocol column, the "
                          "recipe's value in brackets); the full recipes are in `configs/seeds/`. Every "
                          "budget ends before the recipe's first learning-rate decay, so our figures are "
                          "those of under-trained networks."),
        "",
        f"**Hardware.** {'; '.join(sorted(context.devices)) or 'no run finished yet'}.",
        "",
        "## Results",
        "",
        "| Experiment | Paper (own data set, as published) | Ours (UTKFace test) | Our protocol "
        "| Training time |",
        "|---|---|---|---|---|",
    ]
    for row in suite.rows:
        result = results.get(row.name)
        if result is not None:
            ours = ", ".join(f"{_label(key)} {_figure(key, result.overall)}" for key in row.metrics)
            if len(result.faces) == 1:
                ours += " (one seed)"
        elif row.name in context.row_errors:
            ours = f"{NOT_RUN} (evaluation failed: {context.row_errors[row.name]})"
        elif row.needs:
            ours = f"{NOT_RUN}: needs {row.needs}"
        else:
            optional = [reason for name in row.runs if (reason := suite.runs[name].optional)]
            ours = NOT_RUN + (f" ({'; '.join(optional)})" if optional else "")
        protocol = "–" if row.needs else "; ".join(
            [{"none": "center crop", "flip": "center + mirror", "ten_crop": "10 crops"}[row.tta]]
            + [(f"{name}: " if row.chain else "") + budget_text(suite.runs[name], context)
               for name in row.runs]
            + ([f"{row.checkpoint} (chosen by {row.checkpoint[5:-3]}{_epochs_text(result)})"]
               if row.checkpoint != "best.pt" else [])
            + ([f"scored on the test faces of {', '.join(f'{k} {v}' for k, v in row.test_filter.items())}"]
               if row.test_filter else []))
        share = row_budget(row, suite, context)[0]
        if share is not None:
            protocol += f"; {100 * share:.0f}% of the recipe's training samples"
        time = "–" if result is None else _minutes(result.train_seconds)
        lines.append(f"| {row.title} | {row.paper} | {ours} | {protocol} | {time} |")
    lines += ["", "## The papers' claims against our numbers", "",
              f"Paired bootstrap over our test faces ({BOOTSTRAP_SAMPLES:,} resamples): *supported* when the 95% "
              "interval of the difference lies above zero, *contradicted* when below, *inconclusive* when it "
              "spans zero. Where a row was trained with several seeds, the seeds are resampled with the faces, so the "
              "interval holds the spread of training too; a verdict on one seed each says so, and its interval "
              "holds the spread of test faces only. The share of each recipe's training samples (epochs x faces) "
              "is given, and a "
              f"disagreement at less than {100 * MIN_SHARE:.0f}% of a recipe reads *not reproduced at this budget* "
              "rather than *contradicted*; arms trained on unequal numbers of samples are named so. Two rows that "
              "evaluate the same checkpoints with the same test-time augmentation (their selection rules chose the "
              f"same epochs) read *{SAME_MODEL}*.",
              "",
              "| Claim | Paper | Ours | Verdict |", "|---|---|---|---|"]
    budgets = {row.name: row_budget(row, suite, context) for row in suite.rows}
    for claim in suite.claims:
        verdict, ours = judge(claim, results, budgets)
        lines.append(f"| {claim.claim} | {claim.paper} | {ours} | **{verdict}** |")
    titles = {row.name: row.title for row in suite.rows}
    if suite.confusion is not None:
        lines += render_confusion(suite.confusion, results.get(suite.confusion.row), titles[suite.confusion.row])
    if suite.timing is not None:
        lines += render_timing(suite.timing, context.times_ms, titles, context.timing_machine)
    lines += ["", "## Runs", "", "| Run | Config | Status | Est. budget time |", "|---|---|---|---|"]
    for name, run in suite.runs.items():
        failure = context.failures.get(name)
        seeds = f" ({context.finished.get(name, 0)} of {run.seeds} seeds)" if run.seeds > 1 else ""
        status = (f"done{seeds}" if name in context.finished else f"failed: {failure}" if failure else
                  f"{NOT_RUN} (optional: {run.optional})" if run.optional else NOT_RUN)
        estimate = f"{run.est_minutes:g} min" if run.est_minutes else "–"
        lines.append(f"| {name} | `{run.config}` | {status} | {estimate} |")
    return "\n".join(lines) + "\n"


def _label(key: str) -> str:
    return {"group_exact": "age exact", "group_one_off": "1-off", "gender_accuracy": "gender",
            "gender_f1": "F1", "gender_precision": "P", "gender_recall": "R", "age_mae": "MAE",
            "age_cs5": "CS@5"}.get(key, key)


# -- command line ---------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path,
                        help=f"run folders (default {DEFAULT_RUNS}, with --full {DEFAULT_RUNS}-full)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="UTKFace folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results page (docs/results.md)")
    parser.add_argument("--ledger", type=Path,
                        help=f"the record the page is written from (default {DEFAULT_LEDGER.relative_to(REPO)}, "
                             f"with --full {DEFAULT_LEDGER.relative_to(REPO)}-full)")
    parser.add_argument("--only", nargs="+", metavar="RUN", help="train only these runs")
    parser.add_argument("--include", nargs="+", default=[], metavar="RUN",
                        help="also train these optional runs")
    parser.add_argument("--full", action="store_true", help="the papers' recipes, without the CPU budget")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: evaluate the finished runs and rewrite the page")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or (DEFAULT_RUNS.with_name("repro-full") if args.full else DEFAULT_RUNS)
    ledger = Ledger(args.ledger or (DEFAULT_LEDGER.with_name("results-full") if args.full else DEFAULT_LEDGER))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    suite = load_suite()
    unknown = sorted((set(args.only or []) | set(args.include)) - set(suite.runs))
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(suite.runs)}")
    names = args.only or [n for n, r in suite.runs.items() if not r.optional or n in args.include]
    names = with_sources(suite, names)
    data_root = args.data_root.resolve()  # one spelling of the paths: the split and image caches are shared
    splits = dataset_splits(DataConfig(dataset="utkface", root=str(data_root)), progress=not args.quiet)
    budgets = {n: resolve_budget(r, splits, data_root, args.full) for n, r in suite.runs.items()}
    description = (f"UTKFace test split, {len(splits['test'])} faces (deduplicated, near-duplicate groups kept on "
                   "one side)")
    results: dict[str, RowResult | None] = {}
    row_errors: dict[str, str] = {}

    def evaluate(rows: Sequence[Row]) -> None:
        """Record the finished runs in the ledger and evaluate ``rows`` into it (what is there already is kept)."""
        ledger.record_runs(suite, args.runs_dir)
        for row in rows:
            try:
                results[row.name] = evaluate_row(row, suite, args.runs_dir, ledger, splits["test"], description,
                                                 not args.quiet)
                row_errors.pop(row.name, None)
            except Exception as err:  # one row that cannot be evaluated must not hide the others
                log.error("%s: evaluation failed: %s: %s", row.name, type(err).__name__, err)
                results[row.name], row_errors[row.name] = None, f"{type(err).__name__}: {err}"

    evaluate(suite.rows)  # runs finished before (here, or by a run cut short): into the ledger first
    if not args.no_train:
        train_runs(suite, names, args.runs_dir, budgets, ledger, progress=not args.quiet,
                   trained=lambda run: evaluate([row for row in suite.rows if run in row.runs]))
    done = {n: sum(ledger.finished(d.name) for d in r.dirs(args.runs_dir)) for n, r in suite.runs.items()
            if ledger.finished(r.dirs(args.runs_dir)[0].name)}
    context = Context(
        n_train=len(splits["train"]), n_test=len(splits["test"]), full=args.full, finished=done,
        row_errors=row_errors,
        devices={ledger.run(d.name)["device"] for n in done for d in suite.runs[n].dirs(args.runs_dir)
                 if ledger.finished(d.name)},
        failures={p.name.removesuffix(".failed.txt"): p.read_text().strip()
                  for p in args.runs_dir.glob("*.failed.txt")},
        budgets=budgets,
        times_ms=(time_rows(suite, list(suite.timing.seconds), args.runs_dir, ledger, budgets) if suite.timing
                  else {}),
        timing_machine=machine(),
        command=" ".join(["python scripts/measure/reproduce.py", *(sys.argv[1:] if argv is None else argv)]),
        commit=_git_commit())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_results(suite, results, context))
    missing = [n for n, r in results.items() if r is None]
    print(f"{args.out}: {len(results) - len(missing)} of {len(results)} rows have results"
          + (f"; not run: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
