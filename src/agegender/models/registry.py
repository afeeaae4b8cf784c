"""One registry for every network: ``create_model(name, **overrides)``, ``get_config(name)`` and ``list_models()``.

Names and configs come from ``_catalog`` (no torch): listing models and reading their configs imports no network.
``create_model`` imports the module that registers a model's builder on first use. ``register_model`` also takes
models outside the catalog (they are listed once their module is imported).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agegender.model_config import ModelConfig
from agegender.models import _catalog

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]
_REGISTRY: dict[str, tuple[Builder, ModelConfig]] = {}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def register_model(config: ModelConfig) -> Callable[[Builder], Builder]:
    """Register ``builder(config, **kwargs) -> nn.Module`` under ``config.name``; a catalogued name must come
    with the catalog's config."""

    def wrap(builder: Builder) -> Builder:
        if config.name in _REGISTRY:
            raise ValueError(f"model {config.name!r} is registered twice")
        catalogued = _catalog.CONFIGS.get(config.name)
        if catalogued is not None and catalogued != config:
            raise ValueError(f"model {config.name!r} is registered with a config other than the catalog's")
        _REGISTRY[config.name] = (builder, config)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_catalog.CONFIGS.keys() | _REGISTRY.keys())


def get_config(name: str) -> ModelConfig:
    if name in _REGISTRY:
        return _REGISTRY[name][1]
    try:
        return _catalog.CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def create_model(name: str, /, **overrides: Any) -> nn.Module:
    """Build a registered model; overrides naming ``ModelConfig`` fields change its config, the rest go to the
    builder. The model carries its config as ``model.config``. ValueError for an argument the builder does not
    take or a value it cannot use (:class:`ModelConfig` checks its own; ``outputs`` that the network does not
    return as configured)."""
    builder, config = _lookup(name)
    if "name" in overrides:
        raise ValueError(f"create_model({name!r}, name=...): a registered model keeps its name")
    config_changes = {k: tuple(v) if k in ("outputs", "mean", "std") and isinstance(v, list) else v
                      for k, v in overrides.items() if k in _CONFIG_FIELDS}  # a YAML config's lists
    kwargs = {k: v for k, v in overrides.items() if k not in _CONFIG_FIELDS}
    config = config.replace(**config_changes)
    try:
        model = builder(config, **kwargs)
    except TypeError as err:  # an argument it does not take: a bad value of the config, as every other
        raise ValueError(f"model_args of {name!r} ({', '.join(kwargs) or 'none'}): {err}") from err
    if "outputs" in config_changes:  # a network with fixed heads ignores them: say so rather than record them
        _check_outputs(model, config)
    return with_config(model, config.replace(extra={**config.extra, **kwargs}))


def _check_outputs(model: nn.Module, config: ModelConfig) -> None:
    """ValueError unless one forward pass returns exactly ``config.outputs``."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        returned = set(model(torch.zeros(1, 3, config.input_size, config.input_size)))
    model.train(was_training)
    if returned != set(config.outputs):
        raise ValueError(f"{config.name!r} returns {', '.join(sorted(returned))} whatever its config says: it "
                         f"cannot be built with outputs {', '.join(config.outputs)}")


def with_config(model: nn.Module, config: ModelConfig) -> nn.Module:
    """``model`` carrying ``config`` as ``model.config``, which :func:`config_of` reads."""
    vars(model)["config"] = config  # a plain attribute (nn.Module's typing takes attributes for tensors or modules)
    return model


def config_of(model: nn.Module) -> ModelConfig:
    """The config every agegender model carries as ``model.config`` (``create_model`` sets it), typed.

    >>> config_of(object())
    Traceback (most recent call last):
    ...
    TypeError: object carries no agegender ModelConfig as .config
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(model).__name__} carries no agegender ModelConfig as .config")
    return config


def _lookup(name: str) -> tuple[Builder, ModelConfig]:
    """The builder and config of ``name``, importing the module that registers it the first time."""
    if name not in _REGISTRY and name in _catalog.MODULES:
        try:
            importlib.import_module(_catalog.MODULES[name])
        except ModuleNotFoundError as err:
            if err.name not in ("torch", "torchvision"):
                raise
            raise ModuleNotFoundError(f"building {name!r} needs PyTorch, which the base install leaves out: pip "
                                      f"install 'agegender[train]' ({err})", name=err.name) from err
        if name not in _REGISTRY:
            raise RuntimeError(f"{_catalog.MODULES[name]} registers no builder for the catalogued model {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
