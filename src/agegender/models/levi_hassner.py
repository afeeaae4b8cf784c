"""Levi & Hassner (2015) CNN, seed 000 §3.1, layer for layer as ``peers/levi_hassner_2015/deploy_*.prototxt``;
seed 001's ablations (§3.1, Table 1) and joint age-gender heads (§3.3) on the same, parameterised trunk.

227 x 227 input (resized to 256, then cropped); three conv stages (96 7x7/4, 256 5x5 pad 2, 384 3x3 pad 1),
each with ReLU and a 3x3/2 max-pool with Caffe's ceil rounding, LRN after the first two; two FC 512 with ReLU
and dropout 0.5. Gaussian init with std 0.01 (Levi & Hassner §3.2), biases zero. Caffe's two-way gender
softmax is one ``gender_logit`` here (the difference of the two logits): the same model with 513 fewer
parameters. Seed 001's Table 1 writes "layernorm" where the original has LRN, and says it followed the
original.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import nn

from agegender.model_config import ModelConfig
from agegender.models._catalog import LEVI_HASSNER
from agegender.models.layers import (
    HeadedNet,
    Heads,
    caffe_conv_stage,
    dense_block,
    flat_features,
    init_weights,
)
from agegender.models.options import arch_options
from agegender.models.registry import register_model

#: (filters, kernel, stride, padding) of conv1..conv3 in the deploy prototxts.
CONV_STAGES = ((96, 7, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1))
FC_WIDTH = 512
VARIANTS = LEVI_HASSNER


def levi_hassner(
    outputs: Sequence[str], conv_layers: int = 3, fc_layers: int = 2, input_size: int = 227
) -> HeadedNet:
    """The Levi & Hassner network with its first ``conv_layers`` conv stages and ``fc_layers`` FC layers."""
    if not (1 <= conv_layers <= len(CONV_STAGES) and 1 <= fc_layers <= 2):
        raise ValueError(f"need 1..3 conv and 1..2 FC layers, got {conv_layers} and {fc_layers}")
    layers: list[nn.Module] = []
    channels = 3
    for index, (filters, kernel, stride, padding) in enumerate(CONV_STAGES[:conv_layers]):
        layers.append(caffe_conv_stage(channels, filters, kernel, stride, padding, lrn=index < 2))
        channels = filters
    layers.append(nn.Flatten())
    width = flat_features(nn.Sequential(*layers), input_size)
    for _ in range(fc_layers):
        layers.append(dense_block(width, FC_WIDTH, dropout=0.5))
        width = FC_WIDTH
    model = HeadedNet(nn.Sequential(*layers), Heads(FC_WIDTH, outputs))
    init_weights(model, partial(nn.init.normal_, std=0.01))
    return model


def build(config: ModelConfig, **overrides: Any) -> HeadedNet:
    """Registry builder for every variant: heads from ``config.outputs``, depth from ``config.extra``."""
    options = arch_options(config, overrides, "conv_layers", "fc_layers")
    return levi_hassner(config.outputs, input_size=config.input_size, **options)


for _config in VARIANTS:
    register_model(_config)(build)
