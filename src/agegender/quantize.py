"""Static int8 (QDQ) quantisation of an exported model, its activation ranges measured on real face chips of
the training split. ONNX in, ONNX out: no torch (``agegender quantize`` runs in the base install)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from agegender.age_calibration import INTERVAL_METADATA_KEY, METADATA_KEY
from agegender.data.cache import cached_images
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.inference.backends import INPUT_NAME, META_PREFIX, set_metadata
from agegender.model_config import ModelConfig
from agegender.preprocess import center_crop

__all__ = ["first_convolution", "quantization_chips", "quantize_int8"]


def first_convolution(model: onnx.ModelProto) -> str:
    """Name of the graph's first Conv node (the one nearest the input, in topological order)."""
    for node in model.graph.node:
        if node.op_type == "Conv":
            return node.name
    raise ValueError("the model has no convolution")


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, chips: np.ndarray,
                  keep_float: Sequence[str] | None = None, method: str = "minmax") -> Path:
    """Static int8 QDQ quantisation whose activation ranges are measured on the quantisation ``chips`` (model
    inputs, N x 3 x S x S float32, 0..255; :func:`quantization_chips`): per-channel
    int8 weights, uint8 activations. ``keep_float``: names of nodes left in float, by default the first
    convolution (quantising it, i.e. the normalised pixels, cost flagship v5 about 0.3 years of MAE and 1.2-1.6 points
    of gender on its validation split, and every other layer together nothing measurable; on v14 and v18 it costs
    nothing measurable either: ``scripts/measure/int8_settings.py``, the model card); ``[]`` quantises every
    layer. ``method``: minmax,
    percentile or entropy. The file keeps the source's metadata except its metrics and age calibration, which
    were measured on the float model (``agegender evaluate INT8.onnx --store-metrics`` and ``agegender calibrate
    INT8.onnx`` measure and store its own)."""
    if not len(chips):
        raise ValueError("static int8 quantisation needs at least one quantisation chip")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # importing onnxruntime.quantization sets the root logger to INFO; its progress lines are noise to our users
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method {method!r}: use one of {', '.join(methods)}")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(np.array_split(chips, max(len(chips) // 32, 1)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.astype(np.float32)}

    source = onnx.load(str(fp32_path))
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)  # as export_onnx makes its folder
    tmp = int8_path.with_name(f".{int8_path.name}.tmp")
    prepared = int8_path.with_name(f".{int8_path.name}.prepared.tmp")
    try:
        quant_pre_process(str(fp32_path), str(prepared))  # shapes inferred and graph folded, as ORT advises
        graph = onnx.load(str(prepared))
        floats = [first_convolution(graph)] if keep_float is None else list(keep_float)
        unknown = sorted(set(floats) - {node.name for node in graph.graph.node})
        if unknown:
            raise ValueError(f"keep_float: no node named {', '.join(unknown)} in {fp32_path}")
        quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=methods[method], nodes_to_exclude=floats)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        prepared.unlink(missing_ok=True)
    target = onnx.load(str(tmp))
    del target.metadata_props[:]
    # the metrics and both age corrections were measured on the float model's outputs
    measured = {META_PREFIX + key for key in ("metrics", METADATA_KEY, INTERVAL_METADATA_KEY)}
    target.metadata_props.extend(e for e in source.metadata_props if e.key not in measured)
    onnx.save(target, str(tmp))
    kept = ("first convolution in float" if keep_float is None
            else f"in float: {', '.join(floats)}" if floats else "every layer quantised")
    try:
        set_metadata(tmp, {"quantization": f"static int8 QDQ, per-channel weights, {method} calibration, {kept}"})
        os.replace(tmp, int8_path)
    finally:
        tmp.unlink(missing_ok=True)  # only left where something failed
    return int8_path


def quantization_chips(config: ModelConfig, n: int, root: str | Path | None = None) -> np.ndarray:
    """Model inputs (N x 3 x S x S float32, 0..255) from ``n`` chips spread over the deduplicated training split
    of the UTKFace folder ``root`` (default: the shared one), never validation or test: what static int8
    quantisation measures its activation ranges on."""
    if n < 1:
        raise ValueError(f"the number of quantisation chips must be at least 1, got {n}")
    train = dataset_splits(DataConfig(root=None if root is None else str(root)), progress=False)["train"]
    train = train[:: max(len(train) // n, 1)][:n]
    images, ok = (cached_images(train, config.load_size, config.face_crop, config.resampling, progress=False)
                  if train else (np.zeros((0,)), np.zeros((0,), bool)))
    if not np.any(ok):  # quantising on nothing writes a file whose every activation range is wrong
        raise ValueError(f"no quantisation chip in {root or 'the shared UTKFace folder'}: its training split holds "
                         "no readable UTKFace chip (files named AGE_GENDER_RACE_DATE.jpg)")
    crops = center_crop(np.asarray(images)[ok], config.input_size)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
