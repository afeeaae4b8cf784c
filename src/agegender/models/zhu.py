"""Zhu et al. lightweight CNN (seed 002 §3.1) and its single-task depth variants (§4.3, Table 3).

64 x 64 input; conv blocks of 64, 128, 256 and 512 3x3 filters, each with BN, ReLU and 2x2 max-pool; two FC
512 with dropout 0.5 (§4.1). "single-5conv" and "single-6conv" append one or two 512-filter 3x3 conv + ReLU
(no BN, no pool). "single-3conv" is not described: it stops after the 256-filter block. The paper gives no
initialisation: He normal, biases zero.

Outputs. The paper regresses a 2-vector (age label, gender label) under an L2 loss (eq. 2). Here the age
component is ``age`` in years and the gender component is ``gender_logit``: the paper's squared error on the
gender value is the squared error between ``sigmoid(gender_logit)`` and the 0/1 label (a Brier score); binary
cross-entropy on the logit is the usual alternative. The paper's Adience age label is a group, which stands
for its midpoint in years.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import nn

from agegender.model_config import ModelConfig
from agegender.models._catalog import ZHU
from agegender.models.layers import HeadedNet, Heads, conv_block, dense_block, flat_features, init_weights
from agegender.models.options import arch_options
from agegender.models.registry import register_model

BLOCK_CHANNELS = (64, 128, 256, 512)
FC_WIDTH = 512


def zhu_net(outputs: Sequence[str], conv_layers: int = 4, input_size: int = 64) -> HeadedNet:
    """Zhu's network with ``conv_layers`` conv operations (3..6, Table 3)."""
    if not 3 <= conv_layers <= 6:
        raise ValueError(f"Table 3 has 3 to 6 conv layers, got {conv_layers}")
    layers: list[nn.Module] = []
    channels = 3
    for filters in BLOCK_CHANNELS[:conv_layers]:
        layers.append(conv_block(channels, filters))
        channels = filters
    for _ in range(conv_layers - len(BLOCK_CHANNELS)):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Flatten())
    width = flat_features(nn.Sequential(*layers), input_size)
    layers += [dense_block(width, FC_WIDTH, dropout=0.5), dense_block(FC_WIDTH, FC_WIDTH, dropout=0.5)]
    model = HeadedNet(nn.Sequential(*layers), Heads(FC_WIDTH, outputs))
    init_weights(model, partial(nn.init.kaiming_normal_, nonlinearity="relu"))
    return model


VARIANTS = ZHU


def build(config: ModelConfig, **overrides: Any) -> HeadedNet:
    """Registry builder for every Zhu variant."""
    options = arch_options(config, overrides, "conv_layers")
    return zhu_net(config.outputs, input_size=config.input_size, **options)


for _config in VARIANTS:
    register_model(_config)(build)
