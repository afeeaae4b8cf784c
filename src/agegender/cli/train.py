"""``agegender train CONFIG``: train any registered model from a YAML config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agegender.cli.common import UserError, add_config_options, training_config
from agegender.paths import check_writable_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config file", description=(
        "Train a model from a YAML config (see configs/). Override any key: -s optimizer.lr=0.01 -s epochs=2. "
        "Distributed: torchrun --nproc-per-node N -m agegender.cli train CONFIG."))
    p.add_argument("config", help="YAML config file")
    p.add_argument("--run-dir", help="output folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    add_config_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cfg, raw = training_config(args)
    from agegender.training.engine import train

    run_dir = args.run_dir or f"runs/{cfg.model}"
    try:  # before any data is read: a file in the way was an errno after minutes of decoding
        check_writable_folder(Path(run_dir))
    except ValueError as err:
        raise UserError(f"--run-dir: {err}") from err
    if args.resume and not (Path(run_dir) / "last.pt").is_file():  # a mistyped --run-dir would restart a long run
        print(f"agegender train: --resume: {run_dir} holds no run to continue (no last.pt): starting a new one",
              file=sys.stderr)
    results = train(cfg, run_dir, resume=args.resume, raw_config=raw, progress=not args.quiet)
    for tta, summary in results.items():
        print(f"{cfg.final_split} ({tta}): " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    print(f"run folder: {run_dir}")
    return 0
