"""How a builder reads its architecture options: call overrides, then the registered ``config.extra``."""

from __future__ import annotations

from typing import Any

from torchvision.models import WeightsEnum

from agegender.model_config import ModelConfig


def arch_options(config: ModelConfig, overrides: dict[str, Any], *names: str) -> dict[str, Any]:
    """The options among ``names`` that are set, by ``overrides`` or else by ``config.extra``; the model
    function's defaults cover the rest. Overrides may also repeat any other ``config.extra`` key (loss
    settings), so ``create_model(name, **config.extra)`` rebuilds a model; any other name is a typo."""
    unknown = set(overrides) - set(names) - set(config.extra)
    if unknown:
        raise TypeError(f"{config.name}: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    merged = {**config.extra, **overrides}
    return {name: merged[name] for name in names if name in merged}


def torchvision_weights(
    weights: WeightsEnum | str | None, pretrained: bool, imagenet: WeightsEnum
) -> WeightsEnum | str | None:
    """``weights`` as given, or the ImageNet weights when only ``pretrained=True`` is asked for."""
    return imagenet if pretrained and weights is None else weights
