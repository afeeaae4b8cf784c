"""``agegender export CHECKPOINT OUT.onnx``: ONNX with metadata inside, optionally a static int8 variant."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agegender.cli.common import (
    UserError,
    add_force_option,
    add_quantization_options,
    check_new_file,
    check_quantization_options,
    require_extra,
    write_int8,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained checkpoint to ONNX (optionally int8)",
                       description="Export a checkpoint written by `agegender train` to ONNX. The file carries "
                                   "the model's preprocessing config, version, age groups and metrics.")
    p.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run, or the run folder (its best.pt)")
    p.add_argument("output", type=Path, help="ONNX file to write")
    p.add_argument("--metrics", type=Path, help="JSON file of metrics to store in the model (e.g. the run's "
                                                "val_flip/metrics.json)")
    p.add_argument("--int8", type=Path, help="also write a static int8 (QDQ) model here, calibrated on "
                                             "chips from --calibration (as `agegender quantize` does)")
    add_quantization_options(p)
    add_force_option(p)
    p.set_defaults(handler=run)


def read_metrics(path: Path) -> dict[str, object]:
    """The metrics to store from a report of `agegender evaluate` or of a run (``{"overall": {...}, "protocol":
    ...}``, e.g. ``val_flip/metrics.json``)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--metrics {path}: cannot read it as JSON ({err})") from err
    if not isinstance(report, dict) or not isinstance(report.get("overall"), dict):
        raise UserError(f"--metrics {path}: not a metrics report (a JSON object with an \"overall\" object, as "
                        "metrics.json of `agegender evaluate` or of a run's val_flip/ has)")
    return {**report["overall"], **({"protocol": report["protocol"]} if "protocol" in report else {})}


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch", "onnx")
    from agegender.export import export_onnx
    from agegender.models import config_of
    from agegender.training.checkpoint import load_model, run_checkpoint

    checkpoint = run_checkpoint(args.checkpoint, "checkpoint")  # FileNotFoundError: the CLI's message
    check_new_file(args.output, args.force)
    if args.int8:  # every option checked before anything is written
        check_new_file(args.int8, args.force, "--int8")
        if args.int8.resolve() == args.output.resolve():
            raise UserError("--int8 names the float32 output: give the int8 model another path")
        check_quantization_options(args.calibration, args.calibration_size)
    metrics = read_metrics(args.metrics) if args.metrics else {}
    model = load_model(checkpoint)
    path = export_onnx(model, args.output, metrics=metrics)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.int8:
        write_int8(path, args.int8, config_of(model), args.calibration, args.calibration_size)
    return 0
