"""The ``agegender`` command. Each subcommand lives in its own module with ``register(subparsers)``; heavy
imports happen only inside the command that runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from agegender.cli.common import UserError
from agegender.version import __version__

COMMANDS = ("predict", "train", "evaluate", "crossval", "export", "quantize", "calibrate", "bench", "serve", "data",
            "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agegender", description="Age and gender for every face in a photo.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("-V", "--version", action="version", version=f"agegender {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"agegender.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"agegender.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"agegender {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ArithmeticError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
        print(f"agegender {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agegender: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`agegender ... | head`): stop without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's final flush is quiet
        return 1


if __name__ == "__main__":
    sys.exit(main())
