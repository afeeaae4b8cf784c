"""``agegender train CONFIG``: train any registered model from a YAML config."""

from __future__ import annotations

import argparse

from agegender.cli.common import UserError, require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config file", description=(
        "Train a model from a YAML config (see configs/). Override any key: -s optimizer.lr=0.01 -s epochs=2. "
        "Distributed: torchrun --nproc-per-node N -m agegender.cli train CONFIG."))
    p.add_argument("config", help="YAML config file")
    p.add_argument("--run-dir", help="output folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch")
    from agegender.training.config import ConfigError, load_config

    try:  # every key is checked before any data is read
        cfg, raw = load_config(args.config, args.set)
    except ConfigError as err:
        raise UserError(err.one_line()) from err
    from agegender.training.engine import train

    run_dir = args.run_dir or f"runs/{cfg.model}"
    results = train(cfg, run_dir, resume=args.resume, raw_config=raw, progress=not args.quiet)
    for tta, summary in results.items():
        print(f"test ({tta}): " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    print(f"run folder: {run_dir}")
    return 0
