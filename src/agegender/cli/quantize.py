"""``agegender quantize MODEL.onnx OUT.onnx``: a static int8 variant of an exported model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from agegender.cli.common import UserError, require_extra
from agegender.model_config import ModelConfig


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", type=Path, default=Path("../shared/data/UTKFace"),
                   help="UTKFace folder whose leakage-safe training split calibrates int8 (default "
                        "../shared/data/UTKFace)")
    p.add_argument("--calibration-size", type=int, default=512, help="calibration chips (default 512)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write a static int8 variant of an exported model",
                       description="Static int8 (QDQ) quantisation of an `agegender export` file, calibrated on "
                                   "face chips of the training split: per-channel int8 weights, uint8 "
                                   "activations, the first convolution left in float. The metrics and age "
                                   "calibration stored in the source are not copied (they were measured in "
                                   "float): fit and store the variant's own with `agegender calibrate OUT.onnx` "
                                   "and `agegender evaluate OUT.onnx --tta flip --store-metrics`.")
    p.add_argument("model", help="an `agegender export` ONNX file, or a shipped model's name (flagship)")
    p.add_argument("output", type=Path, help="int8 ONNX file to write")
    add_calibration_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("train", "onnx")
    from agegender.inference.onnx_model import ModelError, OnnxAgeGender, model_path

    try:
        source = model_path(args.model)
        config = OnnxAgeGender(source).config
    except ModelError as err:
        raise UserError(str(err)) from err
    if args.output.resolve() == source.resolve():
        raise UserError("the int8 model would overwrite its source: give another output path")
    write_int8(source, args.output, config, args.calibration, args.calibration_size)
    return 0


def write_int8(fp32: Path, output: Path, config: ModelConfig, root: Path, size: int) -> None:
    """Quantise ``fp32`` into ``output`` with ``size`` calibration chips from ``root``; report the file."""
    from agegender.export import quantize_int8

    if size < 1:
        raise UserError(f"--calibration-size must be at least 1, got {size}")
    quantize_int8(fp32, output, calibration_pixels(root, config, size))
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB)")


def calibration_pixels(root: Path, config: ModelConfig, n: int) -> np.ndarray:
    """Model inputs from ``n`` chips of the leakage-safe training split (never the test split)."""
    from agegender.data.cache import cached_images, default_cache_dir
    from agegender.data.splits import load_or_make_splits
    from agegender.data.utkface import read_utkface
    from agegender.preprocess import center_crop

    if not root.is_dir():
        raise UserError(f"calibration folder not found: {root} (give --calibration, a UTKFace folder)")
    records, _ = read_utkface(root)
    splits, _ = load_or_make_splits(records, default_cache_dir() / "splits", progress=False)
    train = splits["train"][:: max(len(splits["train"]) // n, 1)][:n]
    images, ok = cached_images(train, config.load_size, config.face_crop, progress=False)
    crops = center_crop(np.asarray(images)[ok], config.input_size)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
