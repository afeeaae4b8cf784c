"""The flagship: a compact residual CNN for CPU inference with a label-distribution age head and a gender head.

Not from a seed document; chosen by measurement (see configs/flagship/ and MODEL_CARD.md). A stem conv
(stride 2 for inputs larger than 64 px, so that the later layers keep their size), then stages of
basic residual blocks (3x3 conv, BN, ReLU) with stride-2 transitions, global average pooling, dropout, then a
101-bin age distribution (ages 0..100; the decoder reports its median) and a P(female) logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from agegender.labels import MAX_AGE
from agegender.model_config import ModelConfig
from agegender.models._catalog import FLAGSHIP
from agegender.models.registry import register_model


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), nn.ReLU(inplace=True), conv_bn(cout, cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, stride, kernel=1)
        self.act = nn.ReLU(inplace=True)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        """The body's last batch norm (zero-initialised, so that a new block starts as the identity)."""
        return cast(nn.BatchNorm2d, cast(nn.Sequential, self.body[-1])[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class CompactResNet(nn.Module):
    def __init__(self, config: ModelConfig, widths: Sequence[int] = (24, 48, 96, 192),
                 blocks: Sequence[int] = (1, 2, 2, 2), stem_width: int = 16, stem_stride: int = 1,
                 dropout: float = 0.2, descriptor_dim: int = 0) -> None:
        """``descriptor_dim`` > 0 adds a linear head that, in training mode only, regresses a teacher's face
        descriptor of that size (output ``descriptor``, for ``distill.stored``); eval mode and exports omit it."""
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, stem_width, stride=stem_stride), nn.ReLU(inplace=True)]
        cin = stem_width
        for width, n in zip(widths, blocks, strict=True):
            for i in range(n):
                layers.append(BasicBlock(cin, width, stride=2 if i == 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.age_dist = nn.Linear(cin, MAX_AGE + 1)
        self.gender = nn.Linear(cin, 1)
        self.descriptor = nn.Linear(cin, descriptor_dim) if descriptor_dim else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.modules():  # zero-init the last BN of each residual body: blocks start as identity
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.last_norm.weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        out = {"age_dist_logits": self.age_dist(f), "gender_logit": self.gender(f).squeeze(1)}
        if self.training and self.descriptor is not None:
            out["descriptor"] = self.descriptor(f)
        return out


@register_model(FLAGSHIP)
def flagship(config: ModelConfig, **kwargs) -> nn.Module:
    return CompactResNet(config, **kwargs)
