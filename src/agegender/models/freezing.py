"""Freezing by layer for fine-tuning: seed 003 §3's gradual unfreezing of VGG-16 and seed 001 §4's ResNet-34
with "only the last 10 layers" trainable.

A layer is a module holding parameters of its own (a conv, linear or norm layer), in definition order, which
is forward order for the sequential trunks here (backbone first, then heads). Keras also counts layers without
parameters (pooling, activations), so a Keras "last N layers" is the parameterised layers among them. Frozen
BatchNorm layers still update their running statistics in training mode; set them to eval if unwanted.
"""

from __future__ import annotations

from torch import nn


def parameterised_layers(module: nn.Module) -> list[nn.Module]:
    """The modules under ``module`` (itself included) that hold parameters directly, in definition order."""
    return [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]


def unfreeze_last(module: nn.Module, n: int) -> None:
    """Make the last ``n`` parameterised layers trainable, leaving the others as they are."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    layers = parameterised_layers(module)
    for layer in layers[max(len(layers) - n, 0):]:
        layer.requires_grad_(True)


def freeze_all_but_last(module: nn.Module, n: int) -> None:
    """Freeze every parameter of ``module`` except those of its last ``n`` parameterised layers."""
    module.requires_grad_(False)
    unfreeze_last(module, n)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module``, or of those that require gradients."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
