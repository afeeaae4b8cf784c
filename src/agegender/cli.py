"""The ``agegender`` command: one subcommand per job, heavy imports only inside the command that needs them."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """A problem the user can fix: printed as one line, exit code 2, no traceback."""


def _train(args: argparse.Namespace) -> int:
    try:
        from agegender.training.config import load_config
        from agegender.training.engine import train
    except ImportError as err:
        raise UserError(f"training needs the 'train' extra: pip install 'agegender[train]' ({err})") from err
    cfg, raw = load_config(args.config, args.set)
    run_dir = args.run_dir or f"runs/{cfg.model}"
    results = train(cfg, run_dir, resume=args.resume, raw_config=raw, progress=not args.quiet)
    for tta, summary in results.items():
        print(f"test ({tta}): " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    print(f"run folder: {run_dir}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from agegender.models import create_model, list_models

    for name in list_models():
        model = create_model(name)
        n = sum(p.numel() for p in model.parameters())
        cfg = model.config
        paper = f"{cfg.paper_params / 1e6:.2f}M" if cfg.paper_params else "-"
        print(f"{name:34s} {n / 1e6:7.2f}M params (paper {paper:>6s})  {cfg.input_size:>3d}px  "
              f"{','.join(cfg.outputs)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agegender", description="Age and gender for every face in a photo.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a config file", description=(
        "Train a model from a YAML config (see configs/). Override any key: -s optimizer.lr=0.01 -s epochs=2."))
    p.add_argument("config", help="YAML config file")
    p.add_argument("--run-dir", help="output folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train)

    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.set_defaults(handler=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as err:
        print(f"agegender: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        print(f"agegender {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agegender: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
