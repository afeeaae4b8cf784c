"""Export a trained model to ONNX with its preprocessing config and metrics inside the file, and an optional
static int8 (QDQ) variant calibrated on real face chips."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from agegender.age_calibration import INTERVAL_METADATA_KEY, METADATA_KEY
from agegender.data.cache import cached_images
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.inference.onnx_model import META_PREFIX
from agegender.labels import AGE_GROUPS
from agegender.model_config import ModelConfig
from agegender.models import config_of
from agegender.preprocess import center_crop, normalization
from agegender.version import __version__

INPUT_NAME = "pixels"


class _Graph(nn.Module):
    """The model's outputs as a tuple in key order; with ``normalise``, it takes RGB pixels on a 0..255 scale and
    normalises them as the config says."""

    def __init__(self, model: nn.Module, config: ModelConfig, normalise: bool = True) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.model = model
        self.keys = list(config.outputs)
        self.normalise = normalise
        mean, std = normalization(config)
        self.register_buffer("mean", torch.from_numpy(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.from_numpy(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model((x - self.mean) / self.std if self.normalise else x)
        return tuple(out[k] for k in self.keys)


def write_graph(model: nn.Module, path: str | Path, normalise: bool = True) -> Path:
    """Trace ``model`` (which carries ``.config``) into an ONNX graph: input ``pixels`` N x 3 x S x S float32 (RGB
    0..255 with ``normalise``, else already normalised), one output per contract key, dynamic batch."""
    config = config_of(model)
    graph = _Graph(model.eval(), config, normalise).eval()
    dummy = torch.rand(2, 3, config.input_size, config.input_size) * 255
    torch.onnx.export(graph, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(config.outputs),
                      dynamic_axes={INPUT_NAME: {0: "batch"}, **{k: {0: "batch"} for k in config.outputs}},
                      opset_version=17, dynamo=False)
    return Path(path)


def export_onnx(model: nn.Module, path: str | Path, metrics: Mapping[str, Any] | None = None,
                extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (which carries ``.config``) as ONNX: input ``pixels`` N x 3 x S x S float32 RGB 0..255,
    one output per contract key; config, version, age groups and metrics stored as metadata."""
    config = config_of(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_graph(model, tmp)
        set_metadata(tmp, {"config": config.to_json(), "version": __version__, "age_groups": json.dumps(AGE_GROUPS),
                           "input": "float32 N x 3 x S x S, RGB, 0..255 (normalisation is inside the graph)",
                           "metrics": json.dumps(dict(metrics or {})), **dict(extra_metadata or {})})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left where something failed
    return path


def set_metadata(path: str | Path, meta: Mapping[str, str]) -> Path:
    """Store ``meta`` in an ONNX file's metadata, each key under the ``agegender.`` prefix (replacing an entry
    of the same key)."""
    proto = onnx.load(str(path))
    keys = {META_PREFIX + key for key in meta}
    kept = [entry for entry in proto.metadata_props if entry.key not in keys]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    path = Path(path)
    tmp = path.with_name(f".{path.name}.meta.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)  # the file is never left half-written
    return path


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
    convolution (quantising it, i.e. the normalised pixels, cost the flagship about 0.3 years of MAE and 1.5 points
    of gender on the validation split; every other layer together costs nothing measurable:
    ``scripts/measure/int8_settings.py``); ``[]`` quantises every layer. ``method``: minmax,
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
    images, ok = cached_images(train, config.load_size, config.face_crop, progress=False) if train else (
        np.zeros((0,)), np.zeros((0,), bool))
    if not np.any(ok):  # quantising on nothing writes a file whose every activation range is wrong
        raise ValueError(f"no quantisation chip in {root or 'the shared UTKFace folder'}: its training split holds "
                         "no readable UTKFace chip (files named AGE_GENDER_RACE_DATE.jpg)")
    crops = center_crop(np.asarray(images)[ok], config.input_size)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
