"""Vu et al. multi-task CNN (seed 004 §III-B, Table I): 64 x 64 input; three conv-BN-ReLU-max-pool-dropout
blocks (32, 64, 128 filters), four depthwise-separable blocks (BN and ReLU6 after the depthwise and the
pointwise conv), global average pooling, FC 512 with ReLU and dropout 0.25. Xavier uniform weights and zero
biases (§III-C).

Table I's last pointwise row reads "No. of Filer = 256" but "Output Size 2x2x512"; 512 is taken, as it gives
the paper's 0.9M parameters (256 would give 0.6M). Outputs follow §III-C: a regressed 2-vector (age, gender)
under L2, expressed as ``age`` in years and ``gender_logit`` (the paper's squared error on the gender value is
the squared error of ``sigmoid(gender_logit)``; see ``zhu`` for the same mapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from torch import nn

from agegender.model_config import ModelConfig
from agegender.models._catalog import VU
from agegender.models.layers import (
    HeadedNet,
    Heads,
    conv_block,
    dense_block,
    depthwise_separable,
    global_pool,
    init_weights,
)
from agegender.models.options import arch_options
from agegender.models.registry import register_model

CONV_FILTERS = (32, 64, 128)
#: (pointwise filters, depthwise stride) of the four depthwise-separable blocks of Table I.
SEPARABLE = ((256, 1), (256, 2), (512, 1), (512, 2))
FC_WIDTH = 512
DROPOUT = 0.25


def vu_multitask(outputs: Sequence[str] = ("age", "gender_logit")) -> HeadedNet:
    """The Table I network with linear heads for ``outputs``."""
    layers: list[nn.Module] = [conv_block(i, o, DROPOUT) for i, o in pairwise((3, *CONV_FILTERS))]
    channels = CONV_FILTERS[-1]
    for filters, stride in SEPARABLE:
        layers.append(depthwise_separable(channels, filters, stride))
        channels = filters
    layers += [global_pool(), dense_block(channels, FC_WIDTH, DROPOUT)]
    model = HeadedNet(nn.Sequential(*layers), Heads(FC_WIDTH, outputs))
    init_weights(model, nn.init.xavier_uniform_)
    return model


@register_model(VU)
def build(config: ModelConfig, **overrides: Any) -> HeadedNet:
    arch_options(config, overrides)  # no options: rejects unknown names
    return vu_multitask(config.outputs)
