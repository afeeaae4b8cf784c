"""``agegender quantize MODEL.onnx OUT.onnx``: a static int8 variant of an exported model."""

from __future__ import annotations

import argparse
from pathlib import Path

from agegender.cli.common import (
    UserError,
    add_force_option,
    add_quantization_options,
    check_new_file,
    write_int8,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write a static int8 variant of an exported model",
                       description="Static int8 (QDQ) quantisation of an `agegender export` file, its activation "
                                   "ranges measured on face chips of the training split: per-channel int8 "
                                   "weights, uint8 activations, the first convolution left in float. The metrics "
                                   "and age calibration stored in the source are not copied (they were measured in "
                                   "float): fit and store the variant's own with `agegender calibrate OUT.onnx` "
                                   "and `agegender evaluate OUT.onnx --tta flip --store-metrics`.")
    p.add_argument("model", help="an `agegender export` ONNX file, or a shipped model's name (flagship)")
    p.add_argument("output", type=Path, help="int8 ONNX file to write")
    add_quantization_options(p)
    add_force_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agegender.inference.onnx_model import ModelError, OnnxAgeGender, model_path

    try:
        source = model_path(args.model)
        model = OnnxAgeGender(source)
    except ModelError as err:
        raise UserError(str(err)) from err
    if model.metadata.get("quantization"):
        raise UserError(f"{source} is quantised already ({model.metadata['quantization']}): quantise the float32 "
                        "model it came from")
    if args.output.resolve() == source.resolve():
        raise UserError("the int8 model would overwrite its source: give another output path")
    check_new_file(args.output, args.force)
    config = model.config
    write_int8(source, args.output, config, args.calibration, args.calibration_size)
    return 0
