"""Atomic checkpoints: written to a temporary file, then renamed, so an interrupted write loses nothing."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agegender.model_config import ModelConfig
from agegender.models import config_of, create_model, with_config

log = logging.getLogger(__name__)
#: The builder options that load pretrained weights, and the values that load none.
NO_WEIGHTS = {"pretrained": False, "weights": None}


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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint the engine wrote (its config travels with it), in eval mode. A run
    trained with ``ema`` gives its averaged weights (those it validated), from ``best.pt`` and ``last.pt``."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        config = ModelConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} is not an agegender checkpoint (best.pt or last.pt of `agegender train`; an "
                         f".onnx export where a command takes one): {err}") from err
    fields = {k: v for k, v in config.to_dict().items() if k not in ("name", "extra")}
    args = dict(state.get("model_args", {}))
    # the checkpoint's weights replace any a builder would load: no download, no local weights file needed
    skipped = {key: args[key] for key in NO_WEIGHTS if key in args}
    model = create_model(config.name, **{**fields, **args, **{key: NO_WEIGHTS[key] for key in skipped}})
    built = config_of(model)
    with_config(model, built.replace(extra={**built.extra, **skipped}))  # as the run recorded them
    weights = state["model"]
    if state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    model.load_state_dict(weights)
    return model.eval()


def init_from(model: nn.Module, path: str | Path) -> None:
    """Copy into ``model`` the weights of a checkpoint or run folder (``init:`` in a training config); the
    averaged weights when that run kept an average. The same network gets every weight. Another network that
    shares its trunk and input (pre-training, e.g. seed 001's ``resnet34_attributes`` on CelebA for a
    ``resnet34_multitask``) gets every weight the two share by name and shape, which must include the source's
    whole ``backbone``; its own heads and blocks the source lacks keep their fresh start, and are logged."""
    source = load_model(run_checkpoint(path, "init"))
    name = config_of(source).name
    if name != config_of(model).name:
        _init_trunk(model, source, path)
        return
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(f"init: {path} is a {name} of another shape (check model_args): "
                         f"{' '.join(str(err).split())[:300]}") from err


def _init_trunk(model: nn.Module, source: nn.Module, path: str | Path) -> None:
    """:func:`init_from` across networks: the trunk and whatever else matches by name and shape."""
    theirs, ours = config_of(source), config_of(model)
    names = f"init: {path} holds a {theirs.name}, not a {ours.name}"
    inputs = ("input_size", "resize", "face_crop", "resampling", "mean", "std")
    differ = [f"{key} {getattr(theirs, key)} vs {getattr(ours, key)}" for key in inputs
              if getattr(theirs, key) != getattr(ours, key)]
    if differ:
        raise ValueError(f"{names}, trained on other inputs ({'; '.join(differ)}): set model_args alike")
    target, weights = model.state_dict(), source.state_dict()
    shared = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    trunk = [k for k in weights if k.startswith("backbone.")]
    misfit = [k for k in trunk if k not in shared]
    if not trunk or misfit:
        raise ValueError(f"{names}, and its trunk does not fit ({len(misfit) if trunk else 'no'} of its "
                         f"{len(trunk)} backbone tensors without a match{f', e.g. {misfit[0]}' if misfit else ''})")
    model.load_state_dict(shared, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in target if k not in shared})
    log.info("init: %s's trunk and the layers they share (%d tensors) from %s; starting fresh: %s",
             theirs.name, len(shared), path, ", ".join(fresh) or "nothing")
