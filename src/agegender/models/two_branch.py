"""The two UTKFace networks of seed 003 (128 x 128 input): Model A, a two-branch CNN trained from scratch
(§2), and Model B, a VGG-16 conv base with two dense branches, fine-tuned by gradual unfreezing (§3).

Both regress age (linear output, ``age`` in years) and classify gender (sigmoid output, here its logit
``gender_logit``). Initialisation follows §2: He uniform for ReLU layers, Glorot normal for the sigmoid
output, and Keras' default Glorot uniform for the linear age output; biases zero.

The widths are not in the text (they are in its figures, which are not available); they are the ones that
reproduce the trainable-parameter counts of §4 exactly with power-of-two layer sizes. Dropout rates are not
given either.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torchvision
from torch import nn
from torchvision.models import VGG16_Weights, WeightsEnum

from agegender.model_config import ModelConfig
from agegender.models._catalog import UTK_MODEL_A, UTK_MODEL_B
from agegender.models.layers import (
    Branches,
    HeadedNet,
    Heads,
    conv_block,
    dense_block,
    flat_features,
    global_pool,
    init_weights,
)
from agegender.models.options import arch_options, torchvision_net
from agegender.models.registry import register_model

#: Model A widths: 1,015,906 trainable parameters (§4) are matched exactly by these, the only all-power-of-two
#: choice whose last feature map is 4 x 4 (five pools of 128).
SHARED_FILTERS = (64, 128, 256)
BRANCH_FILTERS = (128, 16)
BRANCH_DENSE = 32


def _init_keras_style(module: nn.Module, age_head: nn.Module, gender_head: nn.Module) -> None:
    """Seed 003 §2 initialisation of ``module``'s layers (see the module doc)."""
    init_weights(module, nn.init.kaiming_uniform_)  # defaults: gain sqrt(2), fan-in = Keras' he_uniform
    init_weights(age_head, nn.init.xavier_uniform_)
    init_weights(gender_head, nn.init.xavier_normal_)


def utk_model_a(spatial_dropout: float = 0.2, dropout: float = 0.5, input_size: int = 128) -> HeadedNet:
    """Model A (§2, Fig. 1): three shared conv-BN-ReLU-pool blocks; per task, two such blocks with spatial
    dropout, flatten, dense-BN-ReLU-dropout and a one-unit output."""
    trunk = nn.Sequential(*(conv_block(i, o) for i, o in pairwise((3, *SHARED_FILTERS))))
    branches = []
    for key in ("age", "gender_logit"):
        convs = [
            conv_block(i, o, spatial_dropout, spatial=True)
            for i, o in pairwise((SHARED_FILTERS[-1], *BRANCH_FILTERS))
        ]
        width = flat_features(nn.Sequential(trunk, *convs, nn.Flatten()), input_size)
        dense = dense_block(width, BRANCH_DENSE, dropout, batch_norm=True)
        branches.append(nn.Sequential(*convs, nn.Flatten(), dense, Heads(BRANCH_DENSE, (key,))))
    model = HeadedNet(trunk, Branches(branches))
    _init_keras_style(model, branches[0][-1], branches[1][-1])
    return model


def utk_vgg16(
    weights: WeightsEnum | str | None = None,
    pretrained: bool = False,
    dropout: float = 0.3,
    age_units: tuple[int, ...] = (1024, 512),
    gender_units: tuple[int, ...] = (512, 256),
) -> HeadedNet:
    """Model B (§3, Fig. 3): VGG-16 conv base (``torchvision.models.vgg16`` without its classifier), global
    average pooling and dropout; an age branch (dropout, dense-BN-ReLU-dropout blocks, linear output) and a
    gender branch (the same blocks, sigmoid output). ``model.backbone`` is the conv base.
    ``pretrained=True`` loads ``VGG16_Weights.IMAGENET1K_V1``; ``weights`` is an entry of that enum (or its name)
    or the path of its ``.pth`` file (``options.torchvision_net``).

    Four power-of-two branch widths give §4's 1,449,474: age (512, 256) or (1024, 512) or (1024, 128) or
    (1024, 256), with gender (1024, 512), (512, 256), (1024, 256), (1024, 128) respectively. The age branch
    is taken as the wider, since it is the one given an extra dropout layer."""
    vgg = torchvision_net(torchvision.models.vgg16, weights, pretrained, VGG16_Weights.IMAGENET1K_V1)
    backbone = nn.Sequential(vgg.features, global_pool(), nn.Dropout(dropout))
    features = 512

    def branch(key: str, units: tuple[int, ...]) -> nn.Sequential:
        blocks = [dense_block(i, o, dropout, batch_norm=True) for i, o in pairwise((features, *units))]
        return nn.Sequential(*blocks, Heads(units[-1], (key,)))

    age, gender = branch("age", age_units), branch("gender_logit", gender_units)
    heads = Branches([nn.Sequential(nn.Dropout(dropout), *age), gender])
    _init_keras_style(heads, age[-1], gender[-1])
    return HeadedNet(backbone, heads)


@register_model(UTK_MODEL_A)
def build_model_a(config: ModelConfig, **overrides: Any) -> HeadedNet:
    options = arch_options(config, overrides, "spatial_dropout", "dropout")
    return utk_model_a(input_size=config.input_size, **options)


@register_model(UTK_MODEL_B)
def build_model_b(config: ModelConfig, **overrides: Any) -> HeadedNet:
    options = arch_options(config, overrides, "weights", "pretrained", "dropout", "age_units", "gender_units")
    return utk_vgg16(**options)
