"""One registry for every network: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from agegender.model_config import ModelConfig

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, ModelConfig]] = {}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def register_model(config: ModelConfig) -> Callable[[Builder], Builder]:
    """Register ``builder(config, **kwargs) -> nn.Module`` under ``config.name``."""

    def wrap(builder: Builder) -> Builder:
        if config.name in _REGISTRY:
            raise ValueError(f"model {config.name!r} is registered twice")
        _REGISTRY[config.name] = (builder, config)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    return _lookup(name)[1]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; overrides naming ``ModelConfig`` fields change its config, the rest go to the
    builder. The model carries its config as ``model.config``."""
    builder, config = _lookup(name)
    config_changes = {k: v for k, v in overrides.items() if k in _CONFIG_FIELDS}
    kwargs = {k: v for k, v in overrides.items() if k not in _CONFIG_FIELDS}
    config = config.replace(**config_changes)
    model = builder(config, **kwargs)
    model.config = config.replace(extra={**config.extra, **kwargs})
    return model


def _lookup(name: str) -> tuple[Builder, ModelConfig]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
