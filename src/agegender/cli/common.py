"""What every subcommand shares: the user-facing error type, the check for optional extras, and the accurate
mode's options (predict and serve)."""

from __future__ import annotations

import argparse
import importlib


class UserError(Exception):
    """A problem the user can fix: printed as one line with exit code 2, never a traceback."""


def require_extra(extra: str, *modules: str) -> None:
    """Raise UserError naming the pip extra to install when one of ``modules`` cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"this command needs the '{extra}' extra: pip install 'agegender[{extra}]' "
                            f"({err})") from err


def add_accurate_options(p: argparse.ArgumentParser) -> None:
    """``--accurate`` and ``--descriptor-weights``, as ``predict`` and ``serve`` take them."""
    p.add_argument("--accurate", action="store_true",
                   help="stack the float32 flagship (or --model) with a head on dlib face descriptors: more "
                        "accurate, about 3x the time per photo; fetches dlib's network (22 MB) once and needs the "
                        "`accurate` extra")
    p.add_argument("--descriptor-weights", metavar="DAT",
                   help="--accurate: dlib_face_recognition_resnet_model_v1.dat (default: $AGEGENDER_DLIB_RESNET, "
                        "an installed face_recognition_models, the cache, or a download)")


def check_accurate_options(args: argparse.Namespace) -> None:
    if args.descriptor_weights and not args.accurate:
        raise UserError("--descriptor-weights is for --accurate")
