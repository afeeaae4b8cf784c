"""Chained predictors of seed 000 §3.3 and §5: a gate network predicts one attribute, and one expert network
per class of that attribute (trained only on faces of that class) predicts the other.

- ``levi_hassner_chained``: a gender net, then a male-only and a female-only age net (Fig. 3, Table 4).
- ``levi_hassner_age_specific_gender``: an age net, then one gender net per age group (Table 3).

Selection is soft by default: the experts' class probabilities are mixed by the gate's probabilities,
``P(y | x) = sum_c P(c | x) P(y | x, expert_c)``, returned as log-probabilities (valid logits) for age groups
or as ``logit(P(female))``. ``hard=True`` is the paper's literal pipeline: only the expert of the gate's most
likely class counts. The gate's own output passes through unchanged. The engine trains the parts separately
(as the registered ``gate_model`` and ``expert_model`` of ``config.extra``) and composes them with the
classmethods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agegender.labels import NUM_AGE_GROUPS
from agegender.model_config import ModelConfig
from agegender.models._catalog import AGE_SPECIFIC_GENDER, CHAINED
from agegender.models.layers import Outputs
from agegender.models.options import arch_options
from agegender.models.registry import create_model, get_config, register_model

#: Number of classes behind each output key a gate or expert may use.
NUM_CLASSES = {"gender_logit": 2, "age_group_logits": NUM_AGE_GROUPS}


def class_log_probs(key: str, logits: Tensor) -> Tensor:
    """(N, C) log-probabilities of an output: age groups, or (male, female) from ``gender_logit``."""
    if key == "gender_logit":
        return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return F.log_softmax(logits, dim=1)


def to_output(key: str, log_probs: Tensor) -> Tensor:
    """Inverse of ``class_log_probs``: contract logits from (N, C) log-probabilities."""
    return log_probs[:, 1] - log_probs[:, 0] if key == "gender_logit" else log_probs


class ChainedPredictor(nn.Module):
    """A gate network and one expert network per gate class, mixed by the gate (see the module doc)."""

    config: ModelConfig  # set by ``create_model`` or by the classmethods

    def __init__(
        self, gate: nn.Module, experts: Sequence[nn.Module], gate_key: str, expert_key: str,
        hard: bool = False,
    ) -> None:
        super().__init__()
        if gate_key not in NUM_CLASSES or expert_key not in NUM_CLASSES or gate_key == expert_key:
            raise ValueError(f"gate and expert keys must be two different keys of {sorted(NUM_CLASSES)}")
        if len(experts) != NUM_CLASSES[gate_key]:
            raise ValueError(f"{gate_key} gate needs {NUM_CLASSES[gate_key]} experts, got {len(experts)}")
        self.gate = gate
        self.experts = nn.ModuleList(experts)
        self.gate_key, self.expert_key, self.hard = gate_key, expert_key, hard

    def forward(self, x: Tensor) -> Outputs:
        gate_logits = self.gate(x)[self.gate_key]
        weights = class_log_probs(self.gate_key, gate_logits)  # (N, K)
        if self.hard:
            chosen = F.one_hot(weights.argmax(dim=1), weights.shape[1]).bool()
            weights = torch.zeros_like(weights).masked_fill(~chosen, float("-inf"))
        experts = [class_log_probs(self.expert_key, net(x)[self.expert_key]) for net in self.experts]
        mixed = torch.logsumexp(weights[:, :, None] + torch.stack(experts, dim=1), dim=1)  # (N, C)
        return {self.gate_key: gate_logits, self.expert_key: to_output(self.expert_key, mixed)}

    @classmethod
    def gender_then_age(
        cls, gender_net: nn.Module, male_age_net: nn.Module, female_age_net: nn.Module, hard: bool = False
    ) -> ChainedPredictor:
        """Seed 000's chained net from three trained parts (``gender_logit``, then ``age_group_logits``)."""
        model = cls(gender_net, [male_age_net, female_age_net], "gender_logit", "age_group_logits", hard)
        model.config = _composed_config(CHAINED, hard)
        return model

    @classmethod
    def age_then_gender(
        cls, age_net: nn.Module, gender_nets: Sequence[nn.Module], hard: bool = False
    ) -> ChainedPredictor:
        """Seed 000's age-specific gender classifiers from a trained age net and 8 per-group gender nets."""
        model = cls(age_net, gender_nets, "age_group_logits", "gender_logit", hard)
        model.config = _composed_config(AGE_SPECIFIC_GENDER, hard)
        return model


def _composed_config(config: ModelConfig, hard: bool) -> ModelConfig:
    return config.replace(extra={**config.extra, "hard": hard})


def build(config: ModelConfig, **overrides: Any) -> ChainedPredictor:
    """Registry builder: untrained parts from the registry, at this config's input size."""
    gate_name, expert_name = config.extra["gate_model"], config.extra["expert_model"]
    gate_key, expert_key = get_config(gate_name).outputs[0], get_config(expert_name).outputs[0]
    gate = create_model(gate_name, input_size=config.input_size)
    experts = [create_model(expert_name, input_size=config.input_size) for _ in range(NUM_CLASSES[gate_key])]
    return ChainedPredictor(gate, experts, gate_key, expert_key, **arch_options(config, overrides, "hard"))


for _config in (CHAINED, AGE_SPECIFIC_GENDER):
    register_model(_config)(build)
