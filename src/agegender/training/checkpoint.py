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


def run_checkpoint(path: str | Path, what: str) -> Path:
    """A checkpoint path from a checkpoint or a run folder (whose ``best.pt`` it is); ``what`` names the config
    key in the error message."""
    path = Path(path)
    checkpoint = path / "best.pt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint at {checkpoint} (give a .pt file or a run folder holding "
                                "best.pt)")
    return checkpoint


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


def init_from(model: nn.Module, path: str | Path) -> None:
    """Copy into ``model`` the weights of a checkpoint or run folder (``init:`` in a training config); the
    averaged weights when that run kept an average. The two must be the same network."""
    source = load_model(run_checkpoint(path, "init"))
    if source.config.name != model.config.name:
        raise ValueError(f"init: {path} holds a {source.config.name}, not a {model.config.name}")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(f"init: {path} is a {source.config.name} of another shape (check model_args): "
                         f"{' '.join(str(err).split())[:300]}") from err
