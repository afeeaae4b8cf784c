"""Which static int8 settings keep an exported model's accuracy? Each variant is quantised by
``agegender.quantize.quantize_int8`` (quantisation chips from the training split, as ``agegender quantize`` takes
them), scored on a UTKFace split with and without flip averaging, and timed at batch 64 (network alone, ONNX
Runtime). Example: ``python scripts/measure/int8_settings.py src/agegender/weights/flagship.onnx``. Ages are the
networks' own decodes, before any age calibration (``agegender quantize`` drops the float model's anyway).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from agegender.benchmark.timing import time_call
from agegender.data.datasets import DataConfig, dataset_splits, decode_split
from agegender.evaluation.evaluate import face_metrics, load_evaluable
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.outputs import decode
from agegender.quantize import first_convolution, quantization_chips, quantize_int8
from agegender.training.forward import model_outputs


def variants(model: onnx.ModelProto) -> dict[str, dict]:
    """Name -> ``quantize_int8`` keyword arguments."""
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    first = first_convolution(model)
    return {
        "every layer, min-max": {"keep_float": []},
        "every layer, percentile 99.999": {"keep_float": [], "method": "percentile"},
        "every layer, entropy": {"keep_float": [], "method": "entropy"},
        "heads in float": {"keep_float": heads},
        "first convolution in float (agegender quantize)": {},
        "first convolution and heads in float": {"keep_float": [first, *heads]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an `agegender export` float32 ONNX file")
    parser.add_argument("--root", help="UTKFace folder (default: the shared one)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--calibration-size", type=int, default=512)
    args = parser.parse_args()
    config = OnnxAgeGender(args.model).config
    chips = quantization_chips(config, args.calibration_size, args.root)
    records = dataset_splits(DataConfig(dataset="utkface", root=args.root), progress=False)[args.split]
    data = decode_split(records, config, progress=False)

    def row(name: str, path: Path) -> str:
        model = load_evaluable(path)
        cells = []
        for tta in ("none", "flip"):
            overall = face_metrics(data.records, decode(model_outputs(model, data.images, config, tta=tta)))["overall"]
            cells.append(f"{overall['age_mae']:.3f} / {100 * overall['gender_accuracy']:.2f}%")
        runner = OnnxAgeGender(path, threads=2)
        batch = np.ascontiguousarray(chips[:64])
        ms = time_call(lambda: runner.raw(batch), warmup=2, runs=20, min_seconds=2).median_ms / 64
        return f"| {name} | {cells[0]} | {cells[1]} | {ms:.3f} |"

    print(f"UTKFace {args.split} split, {len(data.records)} faces; MAE / gender; ms per face at batch 64, 2 threads")
    print("| Variant | single pass | flip | ms/face |\n|---|---|---|---|")
    print(row("float32", args.model), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in variants(onnx.load(str(args.model))).items():
            path = quantize_int8(args.model, Path(tmp) / "int8.onnx", chips, **kwargs)
            print(row(name, path), flush=True)


if __name__ == "__main__":
    main()
