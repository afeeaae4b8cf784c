"""``agegender data``: read a dataset, report what was kept and skipped, and write deduplicated split manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

from agegender.cli.common import UserError, fold_count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check a dataset and write its deduplicated train/val/test manifests",
                       description="Read UTKFace or a CSV manifest, group duplicates, split 80/10/10 by group "
                                   "(or into --folds K), write CSV manifests and print what was found.")
    p.add_argument("root", type=Path, help="UTKFace folder or CSV manifest")
    p.add_argument("--out", type=Path, default=None, help="folder for the manifests (default: the cache)")
    p.add_argument("--folds", type=fold_count, help="also write K group-exclusive folds")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agegender.data.manifest import read_manifest, write_manifest
    from agegender.data.splits import kfold_records, load_or_make_splits, splits_folder
    from agegender.data.utkface import read_utkface
    from agegender.paths import check_writable_folder, default_cache_dir

    if not args.root.exists():
        raise UserError(f"{args.root} does not exist")
    records, report = read_utkface(args.root) if args.root.is_dir() else read_manifest(args.root)
    print(f"{args.root}: {report.summary()}")
    for reason, items in sorted(report.skipped.items()):
        print(f"  {reason}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
    if not records:
        raise UserError(f"no labelled images found in {args.root}")
    out = args.out or default_cache_dir() / "splits"
    check_writable_folder(out)
    splits, stats = load_or_make_splits(records, out)
    for key, value in stats.to_dict().items():
        print(f"{key.replace('_', ' ')}: {value}")
    print(", ".join(f"{name} {len(recs)}" for name, recs in splits.items()) + " (no group crosses a split)")
    if args.folds is not None:
        folds = kfold_records([r for recs in splits.values() for r in recs], args.folds)
        folder = splits_folder(records, out)
        for stale in folder.glob("fold*.csv"):  # an earlier run's with more folds would overlap these
            stale.unlink()
        for k, fold in enumerate(folds):
            write_manifest(fold, folder / f"fold{k}.csv")
        print(f"{args.folds} folds: {', '.join(str(len(f)) for f in folds)}")
        if not all(folds):
            print(f"warning: {sum(not f for f in folds)} of the {args.folds} folds are empty: the faces fall into "
                  f"fewer groups than folds")
    print(f"manifests in {splits_folder(records, out)}")
    return 0
