"""ResNet-34 multi-task networks of seed 001 §4 (models 9-14): the ``torchvision.models.resnet34`` trunk
without its classifier, an optional squeeze-and-excitation block after the final activation (§4.2, "modified
ResNet"), global average pooling, and age and gender heads; age as 8 groups (§4.1-4.2) or as 8 ordinal "older
than group k" outputs (§4.3). Seed 001 pretrained on CelebA's 40 attributes: ``resnet34_attributes`` is that
network (40 ``attributes`` logits), and a config's ``init:`` of its run starts models 9-12 from its trunk
(``configs/seeds/chen_cao/celeba_*.yaml``); ``pretrained=True`` loads ImageNet weights instead, and
``weights=PATH`` the same from a local file. Inputs are normalised with ImageNet statistics (seed 001 scales
pixels to 0..1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torchvision
from torch import nn
from torchvision.models import ResNet34_Weights, WeightsEnum

from agegender.model_config import ModelConfig
from agegender.models._catalog import RESNET
from agegender.models.layers import HeadedNet, Heads, SqueezeExcitation, global_pool
from agegender.models.options import arch_options, torchvision_net
from agegender.models.registry import register_model

FEATURES = 512


def resnet34_multitask(
    outputs: Sequence[str], se: bool = False, weights: WeightsEnum | str | None = None,
    pretrained: bool = False,
) -> HeadedNet:
    """ResNet-34 trunk (``model.backbone``, SE block included) and linear heads for ``outputs``.
    ``pretrained=True`` loads ``ResNet34_Weights.IMAGENET1K_V1``; ``weights`` is an entry of that enum (or its
    name) or the path of its ``.pth`` file (``options.torchvision_net``)."""
    net = torchvision_net(torchvision.models.resnet34, weights, pretrained, ResNet34_Weights.IMAGENET1K_V1)
    layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
    if se:
        layers.append(SqueezeExcitation(FEATURES))
    return HeadedNet(nn.Sequential(*layers, global_pool()), Heads(FEATURES, outputs))


VARIANTS = RESNET


def build(config: ModelConfig, **overrides: Any) -> HeadedNet:
    """Registry builder for every ResNet-34 variant."""
    options = arch_options(config, overrides, "se", "weights", "pretrained")
    return resnet34_multitask(config.outputs, **options)


for _variant in VARIANTS:
    register_model(_variant)(build)
