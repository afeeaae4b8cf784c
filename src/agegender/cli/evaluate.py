"""``agegender evaluate MODEL``: a checkpoint or an exported model on labelled faces, as the papers report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agegender.cli.common import UserError, require_extra
from agegender.paths import check_writable_folder

TTA_CHOICES = ("none", "flip", "ten_crop", "all")
#: What --store-metrics stores with --tta all: the mode `predict`, `serve` and the bench use by default.
STORED_TTA = "flip"
SPLIT_CHOICES = ("test", "val", "train", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint or exported model on labelled faces",
                       description=(
        "Age MAE and CS@5, 8-group exact and 1-off accuracy, gender accuracy, precision, recall and F1, "
        "normalised confusion matrices and breakdowns by age group, gender and race: JSON, CSV, PNG and a "
        "Markdown report per test-time augmentation mode."))
    p.add_argument("model", help="checkpoint (.pt, e.g. runs/<name>/best.pt), run folder (its best.pt) or "
                                  "exported model (.onnx)")
    p.add_argument("--data", choices=("utkface", "adience", "manifest"), default="utkface",
                   help="data set (default utkface)")
    p.add_argument("--root", help="UTKFace folder (default ../shared/data/UTKFace), manifest CSV, or the "
                                  "Adience image folder holding faces/ or aligned/. Images are read as they are, "
                                  "not detected or aligned: Adience's faces/ crops are not our chips, and score "
                                  "lower than `agegender bench`, which detects and aligns them")
    p.add_argument("--split", choices=SPLIT_CHOICES,
                   help="utkface/manifest: part of the deduplicated split (default val; all = every face). The test "
                        "split is sealed: score it with --split test once per model that ships, never to choose")
    p.add_argument("--folds", type=int, nargs="+", metavar="K",
                   help="adience: official fold number(s), each once (default 0)")
    p.add_argument("--adience-folds", default=None,
                   help="adience: folder holding fold_k_data.txt (default ../shared/data/adience_folds)")
    p.add_argument("--tta", choices=TTA_CHOICES, default="flip",
                   help="center crop (none), + mirror (flip; the default, as predict and serve run and the README's "
                        "figures are measured), Levi-Hassner 10 crops (ten_crop), or all three")
    p.add_argument("--out", help="report folder (default: eval_<data>_<split or folds> beside the model)")
    p.add_argument("--store-metrics", action="store_true",
                   help="write the overall metrics into the model's metadata (an exported .onnx; with --tta all, "
                        "those of flip, the mode predict uses), shown by the service (/v1/models)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch")
    from agegender.evaluation.evaluate import evaluate_to_reports, evaluation_records, load_evaluable
    from agegender.inference.onnx_model import ModelError
    from agegender.oversample import TTA_MODES
    from agegender.reporting.metrics import METRIC_LABELS, format_metric
    from agegender.reporting.report import protocol_text

    if args.data == "adience":
        if args.split is not None:
            raise UserError("--split is for utkface and manifest data: Adience is scored by its official --folds")
        twice = sorted({k for k in args.folds or () if args.folds.count(k) > 1})
        if twice:
            raise UserError(f"--folds names fold {', '.join(map(str, twice))} more than once: each face would "
                            "count again, and the intervals narrow as if there were more")
    elif args.folds is not None:
        raise UserError(f"--folds is for --data adience: {args.data} is scored by --split")
    folds: list[int] = args.folds or [0]
    args.split = args.split or "val"
    where = f"folds{'-'.join(map(str, folds))}" if args.data == "adience" else args.split
    model_dir = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent  # a run folder: in it
    out = Path(args.out) if args.out else model_dir / f"eval_{args.data}_{where}"
    check_writable_folder(out)
    ttas = TTA_MODES if args.tta == "all" else (args.tta,)
    if args.store_metrics and Path(args.model).suffix != ".onnx":
        raise UserError("--store-metrics needs an exported .onnx model")
    stored = STORED_TTA if args.tta == "all" else args.tta
    try:
        model = load_evaluable(args.model)
    except ModelError as err:
        raise UserError(str(err)) from err
    records, description = evaluation_records(args.data, args.root, args.split, folds,
                                              args.adience_folds, progress=not args.quiet)
    results = evaluate_to_reports(model, Path(args.model).name, records, description, ttas, out,
                                  progress=not args.quiet)
    keys = list(dict.fromkeys(k for m in results.values() for k in m["overall"]))
    print(f"{'':34s}" + "".join(f"{tta:>12s}" for tta in results))
    for key in keys:
        print(f"{METRIC_LABELS.get(key, key).split(' (')[0]:34s}"
              + "".join(f"{format_metric(key, m['overall'].get(key)):>12s}" for m in results.values()))
        ranges = [m.get("intervals", {}).get(key) for m in results.values()]
        if any(ranges):
            print(f"{'  95% interval':34s}" + "".join(
                f"{'-'.join(format_metric(key, x) for x in r) if r else '':>12s}" for r in ranges))
    print(f"reports: {out}/<tta>/report.md")
    if args.store_metrics:
        from agegender.inference.backends import set_metadata

        protocol = protocol_text(description, stored)
        set_metadata(args.model, {"metrics": json.dumps({**results[stored]["overall"], "protocol": protocol})})
        print(f"stored the {stored} metrics in {args.model}")
    return 0
