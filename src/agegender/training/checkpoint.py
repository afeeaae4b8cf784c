"""Atomic checkpoints: written to a temporary file, then renamed, so an interrupted write loses nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agegender.model_config import ModelConfig
from agegender.models import create_model


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint the engine wrote (its config travels with it), in eval mode. A run
    trained with ``ema`` gives its averaged weights (those it validated), from ``best.pt`` and ``last.pt``."""
    state = torch.load(path, map_location=device, weights_only=False)
    config = ModelConfig.from_dict(state["model_config"])
    fields = {k: v for k, v in config.to_dict().items() if k not in ("name", "extra")}
    model = create_model(config.name, **{**fields, **state.get("model_args", {})})
    weights = state["model"]
    if state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    model.load_state_dict(weights)
    return model.eval()
