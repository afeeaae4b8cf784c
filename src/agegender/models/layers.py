"""Building blocks shared by the model zoo: the output heads, a backbone-plus-heads network, conv and dense
blocks, the Caffe-style LRN stage, squeeze-and-excitation, and weight initialisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from agegender.labels import MAX_AGE, NUM_AGE_GROUPS
from agegender.outputs import ATTRIBUTES, OUTPUT_KEYS

#: Width of each contract output (see ``agegender.outputs``); the scalar ones are returned as shape (N,).
OUTPUT_SIZES: dict[str, int] = {
    "age_group_logits": NUM_AGE_GROUPS,
    "age_ordinal_logits": NUM_AGE_GROUPS,
    "age": 1,
    "age_dist_logits": MAX_AGE + 1,
    "joint_logits": 2 * NUM_AGE_GROUPS,
    "gender_logit": 1,
    "attributes": len(ATTRIBUTES),
}

Outputs = dict[str, Tensor]
WeightInit = Callable[[Tensor], object]


class Heads(nn.Module):
    """One linear layer per requested contract output, applied to a feature vector (N, in_features)."""

    def __init__(self, in_features: int, outputs: Sequence[str]) -> None:
        super().__init__()
        unknown = [key for key in outputs if key not in OUTPUT_SIZES]
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUT_KEYS}, got {tuple(outputs)}")
        self.layers = nn.ModuleDict({key: nn.Linear(in_features, OUTPUT_SIZES[key]) for key in outputs})

    def forward(self, features: Tensor) -> Outputs:
        return {key: _shape(key, layer(features)) for key, layer in self.layers.items()}


def start_age_at(model: nn.Module, years: float) -> int:
    """Set the bias of every ``age`` regression head under ``model`` to ``years``; returns how many heads.

    A regression output that starts at zero spends its first epochs learning the mean age (about 33 years on
    UTKFace) under a small learning rate; starting it there leaves the features to learn the rest.

    >>> heads = Heads(4, ("age", "gender_logit"))
    >>> start_age_at(heads, 33.0), heads.layers["age"].bias.item()
    (1, 33.0)
    """
    layers = [cast(nn.Linear, m.layers["age"]) for m in model.modules() if isinstance(m, Heads) and "age" in m.layers]
    with torch.no_grad():
        for layer in layers:
            layer.bias.fill_(years)
    return len(layers)


def _shape(key: str, logits: Tensor) -> Tensor:
    # [..., 0], not squeeze(-1): the exporter writes a squeeze of a dynamic batch as an If node, which OpenVINO
    # renamed and, in the chained net, ran wrong
    return logits[..., 0] if OUTPUT_SIZES[key] == 1 else logits


class Branches(nn.ModuleList):
    """Task branches on one shared feature: each maps it to a dict of outputs, merged into one."""

    def forward(self, features: Tensor) -> Outputs:
        outputs: Outputs = {}
        for branch in self:
            outputs.update(branch(features))
        return outputs


class HeadedNet(nn.Module):
    """``heads(backbone(x))``, the shape of every single-network model; fine-tuning freezes ``backbone``."""

    def __init__(self, backbone: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, x: Tensor) -> Outputs:
        return self.heads(self.backbone(x))


def conv_block(
    in_channels: int, out_channels: int, dropout: float = 0.0, spatial: bool = False
) -> nn.Sequential:
    """3x3 'same' conv, BatchNorm, ReLU, 2x2 max-pool, optional (spatial) dropout (seeds 002, 003, 004)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]
    if dropout:
        layers.append(nn.Dropout2d(dropout) if spatial else nn.Dropout(dropout))
    return nn.Sequential(*layers)


def dense_block(
    in_features: int, out_features: int, dropout: float, batch_norm: bool = False
) -> nn.Sequential:
    """Linear, optional BatchNorm, ReLU, dropout (seed 000 §3.1 fc6/fc7 without BN; seed 003 with BN)."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def caffe_conv_stage(
    in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, lrn: bool
) -> nn.Sequential:
    """Conv, ReLU, 3x3/2 max-pool with Caffe's ceil rounding, then LRN(5, 1e-4, 0.75) if asked (the Levi &
    Hassner deploy prototxts). Caffe's LRN divides alpha by the window size, as ``nn.LocalResponseNorm``
    does."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
    ]
    if lrn:
        layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
    return nn.Sequential(*layers)


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv, BN, ReLU6, 1x1 pointwise conv, BN, ReLU6 (seed 004 §III-B, MobileNet style)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels),
        nn.BatchNorm2d(in_channels),
        nn.ReLU6(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from the globally pooled map; seed 001 §4.2."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)[:, :, None, None]


def global_pool() -> nn.Sequential:
    """Global average pooling to a flat (N, C) feature vector."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def flat_features(module: nn.Module, input_size: int) -> int:
    """Length of ``module``'s flattened output for one 3 x input_size x input_size image."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        size = module(torch.zeros(1, 3, input_size, input_size)).numel()
    module.train(was_training)
    return size


def init_weights(module: nn.Module, weight_init: WeightInit) -> None:
    """``weight_init`` on every conv and linear weight under ``module``; their biases to zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            weight_init(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
