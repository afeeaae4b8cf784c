"""``agegender crossval CONFIG``: k-fold training and testing through the engine, mean ± std and a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from agegender.cli.common import UserError, add_config_options, fold_count, training_config
from agegender.paths import check_writable_folder

SCHEME_HELP = (
    "group: k-fold over the config's data set by leakage group; adience-official: the 5 official Adience "
    "folds (needs --adience-images); seed001-fixed: one run, folds 0..k-3 train, k-2 validation, k-1 test "
    "(seed 001); levi-hassner-holdout: the last fold tests, each other fold in turn validates (seed 000 §3.2)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crossval", help="k-fold cross-validation of a training config (mean ± std)",
                       description="Train and test one run per fold with the engine, then report every "
                                   "figure as mean ± sample std over the runs. Interrupted folds resume.")
    p.add_argument("config", help="YAML training config (see configs/)")
    p.add_argument("--folds", type=fold_count, help="number of folds k (default 5; Adience has exactly 5)")
    p.add_argument("--scheme", choices=("group", "adience-official", "seed001-fixed", "levi-hassner-holdout"),
                   default="group", help=SCHEME_HELP)
    p.add_argument("--adience-images", help="Adience image folder (holding faces/ or aligned/): use the "
                                            "official folds instead of the config's data set")
    p.add_argument("--adience-folds", default=None,
                   help="folder holding Adience's fold_k_data.txt (default ../shared/data/adience_folds)")
    p.add_argument("--run-dir", help="output folder (default runs/crossval/<config>-<scheme>)")
    add_config_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cfg, raw = training_config(args)
    from agegender.data.adience import NUM_FOLDS
    from agegender.evaluation.crossval import adience_official_folds, dataset_folds, run_crossval
    from agegender.reporting.metrics import METRIC_LABELS, folds_note, format_metric
    adience = args.scheme == "adience-official" or args.adience_images is not None
    run_dir = Path(args.run_dir or f"runs/crossval/{Path(args.config).stem}-{args.scheme}")
    try:  # before any data is read
        check_writable_folder(run_dir)
    except ValueError as err:
        raise UserError(f"--run-dir: {err}") from err
    if adience:
        if args.adience_images is None:
            raise UserError("--scheme adience-official needs --adience-images DIR (the folder holding "
                            "Adience's faces/ or aligned/ images)")
        if args.folds not in (None, NUM_FOLDS):
            raise UserError(f"Adience has {NUM_FOLDS} official folds: drop --folds, or pass {NUM_FOLDS}")
        folds = adience_official_folds(args.adience_folds, args.adience_images)
        source = f"Adience (official subject-exclusive folds, images under {args.adience_images})"
    else:
        k = 5 if args.folds is None else args.folds
        folds = dataset_folds(cfg.data, k, progress=not args.quiet)
        source = f"{cfg.data.dataset} {cfg.data.root} (group-exclusive folds of the deduplicated faces)"
    summaries = run_crossval(cfg, raw, run_dir, folds, args.scheme, source, progress=not args.quiet)
    for tta, summary in summaries.items():
        print(f"test ({tta}), {summary['n_folds']} run(s):")
        for key, value in summary["overall"].items():
            label = METRIC_LABELS.get(key, key).split(" (")[0]
            mean, std = format_metric(key, value["mean"]), format_metric(key, value["std"])
            print(f"  {label:32s} {mean:>8s} ± {std}{folds_note(value, summary['n_folds'])}")
    print(f"reports: {run_dir}/test_<tta>/report.md")
    return 0
