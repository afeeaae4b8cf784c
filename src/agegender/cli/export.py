"""``agegender export CHECKPOINT OUT.onnx``: ONNX with metadata inside, optionally a static int8 variant."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agegender.cli.common import UserError, require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained checkpoint to ONNX (optionally int8)",
                       description="Export a checkpoint written by `agegender train` to ONNX. The file carries "
                                   "the model's preprocessing config, version, age groups and metrics.")
    p.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run")
    p.add_argument("output", type=Path, help="ONNX file to write")
    p.add_argument("--metrics", type=Path, help="JSON file of metrics to store in the model (e.g. the run's "
                                                "test_flip/metrics.json)")
    p.add_argument("--int8", type=Path, help="also write a static int8 (QDQ) model here, calibrated on "
                                             "--calibration chips")
    p.add_argument("--calibration", type=Path, default=Path("../shared/data/UTKFace"),
                   help="folder of face chips for int8 calibration (training split is used)")
    p.add_argument("--calibration-size", type=int, default=512)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch", "onnx")
    from agegender.export import export_onnx, quantize_int8
    from agegender.training.checkpoint import load_model

    if not args.checkpoint.is_file():
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    model = load_model(args.checkpoint)
    metrics = json.loads(args.metrics.read_text())["overall"] if args.metrics else {}
    path = export_onnx(model, args.output, metrics=metrics)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.int8:
        quantize_int8(path, args.int8, calibration_pixels(args.calibration, model.config, args.calibration_size))
        print(f"wrote {args.int8} ({args.int8.stat().st_size / 1e6:.2f} MB)")
    return 0


def calibration_pixels(root: Path, config, n: int):
    """Model inputs from ``n`` chips of the leakage-safe training split (never the test split)."""
    import numpy as np

    from agegender.data.cache import cached_images, default_cache_dir
    from agegender.data.splits import load_or_make_splits
    from agegender.data.utkface import read_utkface
    from agegender.preprocess import center_crop

    records, _ = read_utkface(root)
    splits, _ = load_or_make_splits(records, default_cache_dir() / "splits", progress=False)
    train = splits["train"][:: max(len(splits["train"]) // n, 1)][:n]
    images, ok = cached_images(train, config.load_size, config.face_crop, progress=False)
    crops = center_crop(np.asarray(images)[ok], config.input_size)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
