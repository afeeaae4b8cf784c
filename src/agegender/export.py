"""Export a trained model to ONNX with its preprocessing config and metrics inside the file (its int8 variant:
:mod:`agegender.quantize`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agegender.inference.backends import INPUT_NAME, set_metadata
from agegender.labels import AGE_GROUPS
from agegender.model_config import ModelConfig
from agegender.models import config_of
from agegender.preprocess import normalization
from agegender.version import __version__

__all__ = ["export_onnx", "write_graph"]


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
