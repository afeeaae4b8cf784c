"""The reproduction suite: train (or resume) every seed experiment of ``scripts/measure/reproduce.yaml`` within its
CPU budget, evaluate each on the UTKFace test split, and write ``docs/results.md``: the papers' figures beside
ours, our protocol, the training time, and which of the papers' claims our numbers support.

    python scripts/measure/reproduce.py                    # the default suite: about 3 hours on 2 CPU cores
    python scripts/measure/reproduce.py --no-train         # evaluate finished runs, rewrite docs/results.md
    python scripts/measure/reproduce.py --include model_b  # add optional runs
    python scripts/measure/reproduce.py --full --runs-dir /data/repro-full  # the papers' recipes (a GPU)

Runs live in ``--runs-dir`` (default ``../runs/repro`` beside the repository, ``../runs/repro-full`` with
``--full``), one folder per run: a finished run (``summary.yaml``) is reused, an interrupted one resumes, a
failed one leaves ``<name>.failed.txt``.
Evaluations go to ``<runs-dir>/evaluations/<row>/`` (report.md, metrics.json, predictions.npz) and are redone
when a checkpoint is newer. A row whose runs are not finished reads "not run": no number is filled in by hand.

Claims are judged by a paired bootstrap over the test faces: the 95% interval of (ours for the side the paper
says is better) minus (ours for the other side); "supported" when it lies above zero, "contradicted" when
below, "inconclusive" otherwise.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from agegender.data.datasets import DataConfig, dataset_splits, decode_split
from agegender.data.records import FaceRecord
from agegender.evaluation.compare import BOOTSTRAP_SAMPLES, COMPARABLE, compare_faces, face_arrays
from agegender.evaluation.evaluate import face_metrics, load_evaluable, model_config, predict_faces
from agegender.models import get_config
from agegender.models.chained import ChainedPredictor
from agegender.oversample import TTA_MODES
from agegender.paths import default_path
from agegender.reporting.metrics import METRIC_LABELS, format_metric
from agegender.reporting.report import protocol_text, write_report
from agegender.training.config import TrainConfig, load_config, read_raw_config
from agegender.training.engine import train

REPO = Path(__file__).resolve().parents[1]
SUITE_FILE = Path(__file__).with_name("reproduce.yaml")
DEFAULT_RUNS = REPO.parent / "runs" / "repro"
DEFAULT_DATA = default_path("utkface")
DEFAULT_OUT = REPO / "docs" / "results.md"
NOT_RUN = "not run"

log = logging.getLogger("reproduce")


@dataclass(frozen=True)
class Run:
    """A training run: a seed config and the overrides that fit it into the CPU budget."""

    name: str
    config: str
    budget: tuple[str, ...] = ()
    est_minutes: float | None = None
    optional: str | None = None  # why the default suite leaves it out


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
class Suite:
    runs: dict[str, Run]
    rows: list[Row]
    claims: list[Claim]


@dataclass
class Context:
    """What the results page says besides the rows: data sizes, mode, hardware, how it was made."""

    n_train: int | None = None
    n_test: int | None = None
    full: bool = False
    devices: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)  # runs with summary.yaml
    failures: dict[str, str] = field(default_factory=dict)  # run -> error of its last attempt
    row_errors: dict[str, str] = field(default_factory=dict)  # row -> why its evaluation failed
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> its config without the budget
    command: str = "python scripts/measure/reproduce.py"
    commit: str = "unknown"
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())


@dataclass
class RowResult:
    """Our evaluation of one row: overall figures, per-face predictions, training time of its runs."""

    overall: dict[str, Any]
    faces: dict[str, np.ndarray] = field(repr=False)
    train_seconds: float = 0.0


def load_suite(path: str | Path = SUITE_FILE) -> Suite:
    """The suite file, checked: every row names known runs and figures, every claim known rows."""
    raw = yaml.safe_load(Path(path).read_text())
    runs = {name: Run(name, **{**spec, "budget": tuple(spec.get("budget", ()))})
            for name, spec in raw["runs"].items()}
    rows = [Row(**{**spec, "metrics": tuple(spec["metrics"])}) for spec in raw["rows"]]
    claims = [Claim(**spec) for spec in raw["claims"]]
    row_names = {row.name for row in rows}
    for row in rows:
        problems = [f"run {r!r}" for r in row.runs if r not in runs] + [f"metric {m!r}" for m in row.metrics
                                                                        if m not in METRIC_LABELS]
        if not row.runs or row.tta not in TTA_MODES or problems:
            raise ValueError(f"{path}: row {row.name!r} has unknown {', '.join(problems) or 'model or tta'}")
    for claim in claims:
        if {claim.better, claim.worse} - row_names or claim.metric not in COMPARABLE:
            raise ValueError(f"{path}: claim {claim.claim!r} names an unknown row or metric")
    return Suite(runs, rows, claims)


# -- training -------------------------------------------------------------------------------------------
def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.yaml").is_file()


def run_overrides(run: Run, data_root: Path, full: bool) -> list[str]:
    return [*(() if full else run.budget), f"data.root={data_root}"]


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


def train_runs(suite: Suite, names: Sequence[str], runs_dir: Path, data_root: Path, full: bool,
               progress: bool) -> None:
    """Train or resume each named run; a failure is logged and written beside the run, the suite goes on."""
    for name in names:
        run, run_dir = suite.runs[name], runs_dir / name
        failed = runs_dir / f"{name}.failed.txt"
        if finished(run_dir):
            log.info("%s: finished, reused", name)
            continue
        log.info("%s: training %s %s", name, run.config, " ".join(run_overrides(run, data_root, full)))
        try:
            cfg, raw = load_config(REPO / run.config, run_overrides(run, data_root, full))
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "device.txt").write_text(machine() + "\n")
            train(cfg, run_dir, resume=True, raw_config=raw, progress=progress)
            failed.unlink(missing_ok=True)
        except Exception as err:  # one failed run must not stop the others
            log.error("%s failed: %s: %s", name, type(err).__name__, err)
            failed.write_text(f"{type(err).__name__}: {err}\n")


# -- evaluation -----------------------------------------------------------------------------------------
def _load_row_model(row: Row, runs_dir: Path) -> nn.Module:
    parts = [load_evaluable(runs_dir / name / "best.pt") for name in row.runs]
    if row.chain is None:
        return parts[0]
    gender, male, female = parts
    return ChainedPredictor.gender_then_age(gender, male, female, hard=bool(row.chain["hard"])).eval()


def evaluate_row(row: Row, runs_dir: Path, records: Sequence[FaceRecord], description: str, progress: bool
                 ) -> RowResult | None:
    """Our figures for a row on the test records (None while any of its runs is unfinished), cached in
    ``runs_dir/evaluations/<row>/`` until a checkpoint changes."""
    run_dirs = [runs_dir / name for name in row.runs]
    if not all(finished(d) for d in run_dirs):
        return None
    out = runs_dir / "evaluations" / row.name
    faces_file = out / "predictions.npz"
    newest = max((d / "best.pt").stat().st_mtime for d in run_dirs)
    if not faces_file.is_file() or faces_file.stat().st_mtime < newest:
        log.info("%s: evaluating (%s)", row.name, row.tta)
        model = _load_row_model(row, runs_dir)
        data = decode_split(records, model_config(model), progress)
        decoded = predict_faces(model, data.images, row.tta)
        write_report(face_metrics(data.records, decoded), out, title=row.title,
                     protocol=protocol_text(f"{description}; runs {', '.join(row.runs)} in {runs_dir}", row.tta))
        np.savez_compressed(faces_file, **face_arrays(data.records, decoded))
    seconds = sum(yaml.safe_load((d / "summary.yaml").read_text())["train_seconds"] for d in run_dirs)
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(faces_file) as faces:
        return RowResult(metrics["overall"], dict(faces), seconds)


# -- claims ---------------------------------------------------------------------------------------------
#: Below this share of its recipe's training samples, a row that disagrees with a paper is "not reproduced at
#: this budget" rather than a contradiction of the paper.
MIN_SHARE = 0.5
#: Compared arms whose training samples differ by more than this factor are called unequal in the verdict.
EQUAL_BUDGET = 1.25


def judge(claim: Claim, results: Mapping[str, RowResult | None],
          budgets: Mapping[str, tuple[float | None, float | None]] | None = None) -> tuple[str, str]:
    """(verdict, our comparison in words) of a claim. ``budgets``: each row's (share of its recipe's training
    samples, training samples), :func:`row_budget`; with them a disagreement below :data:`MIN_SHARE` reads "not
    reproduced at this budget", and arms of unequal budgets are named so. Every run is one training seed."""
    better, worse = results.get(claim.better), results.get(claim.worse)
    if better is None or worse is None:
        return NOT_RUN, "–"
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
    words = f"{figures}: {mean:+.1f} {unit}, 95% CI {lo:+.1f} to {hi:+.1f}; one seed"
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
    return format_metric(key, overall.get(key))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _recipe_value(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def budget_text(run: Run, recipe: Mapping[str, Any] | None, full: bool) -> str:
    """The run's budget overrides, each with the recipe's own value."""
    if full or not run.budget:
        return "the recipe as configured"
    parts = []
    for item in run.budget:
        key, value = item.split("=", 1)
        original = _recipe_value(recipe, key) if recipe is not None else None
        if original is None and key == "data.train_limit":
            original = "all"
        elif original is None and key == "model_args.input_size" and recipe is not None:
            original = get_config(recipe["model"]).input_size
        parts.append(f"{key} {value} (recipe: {'default' if original is None else original})")
    return ", ".join(parts)


def run_samples(run: Run, recipe: Mapping[str, Any] | None, n_train: int | None, full: bool
                ) -> tuple[float | None, float | None]:
    """(share of its recipe's training samples, training samples) of a run: epochs x training faces, with the
    budget's overrides against the recipe's own values (None where the recipe or the data size is unknown).

    >>> run = Run("r", "c.yaml", budget=("epochs=3", "data.train_limit=4000"))
    >>> run_samples(run, {"epochs": 30}, 16000, full=False)
    (0.025, 12000.0)
    """
    if recipe is None or n_train is None:
        return (1.0 if full or not run.budget else None), None
    epochs_recipe = float(_recipe_value(recipe, "epochs") or TrainConfig.model_fields["epochs"].default)
    limit = _recipe_value(recipe, "data.train_limit")
    faces_recipe = min(int(limit), n_train) if limit else n_train
    budget = dict(item.split("=", 1) for item in ([] if full else run.budget))
    epochs = float(budget.get("epochs", epochs_recipe))
    faces = min(int(budget["data.train_limit"]), n_train) if "data.train_limit" in budget else faces_recipe
    return epochs * faces / (epochs_recipe * faces_recipe), epochs * faces


def row_budget(row: Row, suite: Suite, context: Context) -> tuple[float | None, float | None]:
    """A row's smallest share of its runs' recipes and the training samples of all its runs."""
    parts = [run_samples(suite.runs[name], context.recipes.get(name), context.n_train, context.full)
             for name in row.runs]
    shares, samples = [p[0] for p in parts], [p[1] for p in parts]
    return (None if None in shares else min(shares)), (None if None in samples else sum(samples))


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


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
        "288-face sample of one Flickr user, so **every number of ours is on UTKFace**: the project's "
        f"leakage-safe, deduplicated split ({_count(context.n_train)} train faces), tested on its test "
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
        elif row.name in context.row_errors:
            ours = f"{NOT_RUN} (evaluation failed: {context.row_errors[row.name]})"
        else:
            ours = NOT_RUN
        protocol = "; ".join(
            [{"none": "center crop", "flip": "center + mirror", "ten_crop": "10 crops"}[row.tta]]
            + [(f"{name}: " if row.chain else "") + budget_text(suite.runs[name], context.recipes.get(name),
                                                                 context.full)
               for name in row.runs])
        share = row_budget(row, suite, context)[0]
        if share is not None:
            protocol += f"; {100 * share:.0f}% of the recipe's training samples"
        time = "–" if result is None else _minutes(result.train_seconds)
        lines.append(f"| {row.title} | {row.paper} | {ours} | {protocol} | {time} |")
    lines += ["", "## The papers' claims against our numbers", "",
              f"Paired bootstrap over our test faces ({BOOTSTRAP_SAMPLES:,} resamples): *supported* when the 95% "
              "interval of the difference lies above zero, *contradicted* when below, *inconclusive* when it "
              "spans zero. Each run is one training seed, so the intervals hold the spread of test faces only, not "
              "of training; the share of each recipe's training samples (epochs x faces) is given, and a "
              f"disagreement at less than {100 * MIN_SHARE:.0f}% of a recipe reads *not reproduced at this budget* "
              "rather than *contradicted*; arms trained on unequal numbers of samples are named so.", "",
              "| Claim | Paper | Ours | Verdict |", "|---|---|---|---|"]
    budgets = {row.name: row_budget(row, suite, context) for row in suite.rows}
    for claim in suite.claims:
        verdict, ours = judge(claim, results, budgets)
        lines.append(f"| {claim.claim} | {claim.paper} | {ours} | **{verdict}** |")
    lines += ["", "## Runs", "", "| Run | Config | Status | Est. budget time |", "|---|---|---|---|"]
    for name, run in suite.runs.items():
        failure = context.failures.get(name)
        status = ("done" if name in context.finished else f"failed: {failure}" if failure else
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
    parser.add_argument("--only", nargs="+", metavar="RUN", help="train only these runs")
    parser.add_argument("--include", nargs="+", default=[], metavar="RUN",
                        help="also train these optional runs")
    parser.add_argument("--full", action="store_true", help="the papers' recipes, without the CPU budget")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: evaluate the finished runs and rewrite the page")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or (DEFAULT_RUNS.with_name("repro-full") if args.full else DEFAULT_RUNS)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    suite = load_suite()
    unknown = sorted((set(args.only or []) | set(args.include)) - set(suite.runs))
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(suite.runs)}")
    names = args.only or [n for n, r in suite.runs.items() if not r.optional or n in args.include]
    data_root = args.data_root.resolve()  # one spelling of the paths: the split and image caches are shared
    if not args.no_train:
        train_runs(suite, names, args.runs_dir, data_root, args.full, progress=not args.quiet)

    splits = dataset_splits(DataConfig(dataset="utkface", root=str(data_root)), progress=not args.quiet)
    description = f"UTKFace test split, {len(splits['test'])} faces (leakage-safe, deduplicated)"
    results: dict[str, RowResult | None] = {}
    row_errors: dict[str, str] = {}
    for row in suite.rows:
        try:
            results[row.name] = evaluate_row(row, args.runs_dir, splits["test"], description, not args.quiet)
        except Exception as err:  # one row that cannot be evaluated must not hide the others
            log.error("%s: evaluation failed: %s: %s", row.name, type(err).__name__, err)
            results[row.name], row_errors[row.name] = None, f"{type(err).__name__}: {err}"
    done = {n for n in suite.runs if finished(args.runs_dir / n)}
    context = Context(
        n_train=len(splits["train"]), n_test=len(splits["test"]), full=args.full, finished=done,
        row_errors=row_errors,
        devices={(args.runs_dir / n / "device.txt").read_text().strip() for n in done
                 if (args.runs_dir / n / "device.txt").is_file()},
        failures={p.name.removesuffix(".failed.txt"): p.read_text().strip()
                  for p in args.runs_dir.glob("*.failed.txt")},
        recipes={n: read_raw_config(REPO / r.config) for n, r in suite.runs.items()},
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
