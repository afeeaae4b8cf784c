"""Heads' losses as small functions, and the weighted multi-task loss built from a config.

Missing labels (age NaN, group, gender or attribute -1) are masked out of every term.

>>> import torch
>>> ordinal_targets(torch.tensor([0, 3]))
tensor([[0., 0., 0., 0., 0., 0., 0., 0.],
        [1., 1., 1., 0., 0., 0., 0., 0.]])
>>> round(float(gaussian_age_targets(torch.tensor([30.0]), sigma=2.0)[0].argmax()), 1)
30.0
>>> logits = {"age_dist_logits": torch.randn(4, 101), "gender_logit": torch.randn(4)}
>>> abs(float(distillation_loss(logits, logits)[0])) < 1e-6  # a student that matches its teacher pays nothing
True
>>> distillation_loss({"descriptor": torch.zeros(2, 4)}, {"descriptor": torch.ones(2, 4)})[1]  # mean squared error
{'kd_descriptor': 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from agegender.labels import MAX_AGE, NUM_AGE_GROUPS
from agegender.outputs import ACTIVATIONS

Tensor = torch.Tensor


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def ordinal_targets(group: Tensor, num_thresholds: int = NUM_AGE_GROUPS) -> Tensor:
    """Seed 001's encoding: target k is 1 when the face is older than group k."""
    return (group[:, None] > torch.arange(num_thresholds, device=group.device)).float()


def ordinal_loss(logits: Tensor, group: Tensor, weights: Sequence[float] | None = None) -> Tensor:
    """Importance-weighted BCE over the "older than group k" thresholds (weights as in seed 001, Zhang et al.)."""
    mask = (group >= 0).float()
    per = F.binary_cross_entropy_with_logits(logits, ordinal_targets(group.clamp(min=0), logits.shape[1]),
                                             reduction="none")
    w = torch.as_tensor(weights if weights is not None else [1.0] * logits.shape[1], dtype=per.dtype)
    return _masked_mean((per * w).sum(dim=1), mask)


def group_loss(logits: Tensor, group: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy over the age groups."""
    mask = (group >= 0).float()
    per = F.cross_entropy(logits, group.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    return _masked_mean(per, mask)


def joint_loss(logits: Tensor, group: Tensor, gender: Tensor) -> Tensor:
    """Cross-entropy over seed 001's 16 classes, gender * 8 + group."""
    mask = ((group >= 0) & (gender >= 0)).float()
    target = gender.clamp(min=0) * NUM_AGE_GROUPS + group.clamp(min=0)
    return _masked_mean(F.cross_entropy(logits, target, reduction="none"), mask)


def gender_loss(logit: Tensor, gender: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """BCE on the P(female) logit."""
    mask = (gender >= 0).float()
    target = gender.clamp(min=0).float() * (1 - label_smoothing) + 0.5 * label_smoothing
    return _masked_mean(F.binary_cross_entropy_with_logits(logit, target, reduction="none"), mask)


def attribute_loss(logits: Tensor, attributes: Tensor) -> Tensor:
    """Multi-label BCE over binary attributes (CelebA's 40), the mean over every known label (0 or 1; -1 is
    unknown and masked).

    >>> logits = torch.tensor([[0.0, 50.0]])
    >>> round(float(attribute_loss(logits, torch.tensor([[1.0, -1.0]]))), 4)  # only the first label counts
    0.6931
    """
    mask = (attributes >= 0).float()
    per = F.binary_cross_entropy_with_logits(logits, attributes.clamp(min=0).to(logits.dtype), reduction="none")
    return _masked_mean(per, mask)


def regression_loss(pred: Tensor, age: Tensor, kind: str = "l1") -> Tensor:
    """L1 or L2 on age in years."""
    mask = (~torch.isnan(age)).float()
    diff = pred - torch.nan_to_num(age)
    per = diff.abs() if kind == "l1" else diff.pow(2)
    return _masked_mean(per, mask)


def gaussian_age_targets(age: Tensor, sigma: float, num_bins: int = MAX_AGE + 1) -> Tensor:
    """Discretised Gaussian label distribution over ages 0..num_bins-1."""
    bins = torch.arange(num_bins, dtype=torch.float32, device=age.device)
    logp = -0.5 * ((bins[None] - age.clamp(0, num_bins - 1)[:, None]) / sigma) ** 2
    return torch.softmax(logp, dim=1)


def distribution_loss(logits: Tensor, age: Tensor, sigma: float = 2.0, l1_weight: float = 1.0) -> Tensor:
    """Label-distribution learning: KL to a Gaussian around the true age plus L1 on the expected age."""
    mask = (~torch.isnan(age)).float()
    age = torch.nan_to_num(age)
    logp = torch.log_softmax(logits, dim=1)
    kl = F.kl_div(logp, gaussian_age_targets(age, sigma, logits.shape[1]), reduction="none").sum(dim=1)
    expected = logp.exp() @ torch.arange(logits.shape[1], dtype=logp.dtype, device=logp.device)
    return _masked_mean(kl + l1_weight * (expected - age).abs(), mask)


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """KL from the teacher's softened class distribution to the student's, scaled by T^2 (Hinton et al.)."""
    t = torch.softmax(teacher / temperature, dim=1)
    logp = torch.log_softmax(student / temperature, dim=1)
    return F.kl_div(logp, t, reduction="batchmean") * temperature**2


def soft_binary_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Binary KL from the teacher's softened probabilities (one logit per threshold or head) to the student's."""
    t = torch.sigmoid(teacher / temperature)
    per = (F.binary_cross_entropy_with_logits(student / temperature, t, reduction="none")
           - F.binary_cross_entropy_with_logits(teacher / temperature, t, reduction="none"))
    return per.reshape(len(per), -1).sum(dim=1).mean() * temperature**2




def scheduled_weight(weight: float | Sequence[Sequence[float]], epoch: float) -> float:
    """A loss weight given as a number, or as ``[epoch, weight]`` knots: linear between knots, held beyond them.

    >>> scheduled_weight(0.5, 7)
    0.5
    >>> [scheduled_weight([[0, 1.0], [10, 1.0], [20, 0.0]], e) for e in (0, 10, 15, 20, 30)]
    [1.0, 1.0, 0.5, 0.0, 0.0]
    """
    if isinstance(weight, int | float):
        return float(weight)
    knots = sorted((float(e), float(w)) for e, w in weight)
    if not knots:
        raise ValueError("a weight schedule needs at least one [epoch, weight] knot")
    return float(np.interp(epoch, [e for e, _ in knots], [w for _, w in knots]))


def distillation_loss(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], temperature: float = 1.0,
                      weights: Mapping[str, float] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Knowledge distillation over every head the student and teacher share: soft cross-entropy for
    softmax heads, binary KL for sigmoid heads, L1 for an age in years, mean squared error for a descriptor.
    Returns the sum, each head's term weighted by ``weights[head]`` (default 1), and each unweighted term."""
    terms: dict[str, Tensor] = {}
    for key in sorted(student.keys() & teacher.keys()):
        s, t = student[key], teacher[key].detach()
        if ACTIVATIONS.get(key) == "softmax":
            terms[key] = soft_cross_entropy(s, t, temperature)
        elif ACTIVATIONS.get(key) == "sigmoid":
            terms[key] = soft_binary_cross_entropy(s, t, temperature)
        elif key == "age":
            terms[key] = (s - t).abs().mean()
        elif key == "descriptor":  # a teacher's (standardised) face descriptor, regressed
            terms[key] = F.mse_loss(s, t)
    if not terms:
        raise ValueError(f"the student's outputs {sorted(student)} share no head with the teacher's {sorted(teacher)}")
    weights = weights or {}
    total = cast(Tensor, sum(weights.get(k, 1.0) * v for k, v in terms.items()))
    return total, {f"kd_{k}": float(v.detach()) for k, v in terms.items()}


_Weight = Annotated[float, Field(ge=0)]
#: An ``[epoch, weight]`` pair, both at least 0.
_Knot = Annotated[list[_Weight], Field(min_length=2, max_length=2)]


class LossSpec(BaseModel):
    """Weights of each term, and the options of the terms. ``gender_schedule`` lists ``[epoch, weight]`` pairs
    from which on the gender weight changes (seed 001 section 4.3 lowers it after the first epochs)."""

    model_config = ConfigDict(extra="forbid")

    age_group: _Weight = 1.0
    age_ordinal: _Weight = 1.0
    age: _Weight = 1.0
    age_dist: _Weight = 1.0
    joint: _Weight = 1.0
    gender: _Weight = 1.0
    attributes: _Weight = 1.0  # multi-label BCE on the ``attributes`` output (CelebA's 40)
    #: One weight per "older than group k" output of ``age_ordinal_logits`` (``NUM_AGE_GROUPS`` of them).
    ordinal_weights: list[_Weight] | None = Field(default=None, min_length=NUM_AGE_GROUPS, max_length=NUM_AGE_GROUPS)
    regression: Literal["l1", "l2"] = "l1"
    sigma: float = Field(default=2.0, gt=0)  # years: the width of the Gaussian label distribution
    l1_weight: _Weight = 1.0
    label_smoothing: float = Field(default=0.0, ge=0, le=1)
    gender_schedule: list[_Knot] = Field(default_factory=list)

    def gender_weight(self, epoch: int) -> float:
        weight = self.gender
        for start, w in sorted(self.gender_schedule):
            if epoch >= start:
                weight = w
        return weight


#: The outputs each setting of :class:`LossSpec` acts on: a weight (``age_group``, ...) is the weight of the term
#: :func:`multitask_loss` adds for that output, an option (``sigma``, ...) changes that term (``label_smoothing``
#: two). A model with none of them ignores the setting: a config that sets it is logged as ignored
#: (``training.config.validate_config``).
LOSS_OUTPUTS: dict[str, tuple[str, ...]] = {
    "age_group": ("age_group_logits",), "age_ordinal": ("age_ordinal_logits",),
    "ordinal_weights": ("age_ordinal_logits",), "age": ("age",), "regression": ("age",),
    "age_dist": ("age_dist_logits",), "sigma": ("age_dist_logits",), "l1_weight": ("age_dist_logits",),
    "joint": ("joint_logits",), "gender": ("gender_logit",), "gender_schedule": ("gender_logit",),
    "attributes": ("attributes",), "label_smoothing": ("age_group_logits", "gender_logit"),
}


#: The labels (fields of :class:`~agegender.data.records.FaceRecord`) each output's loss term reads: a face
#: without one of them adds nothing to that term, and data without any leaves the output untrained.
OUTPUT_LABELS: dict[str, tuple[str, ...]] = {
    "age": ("age",), "age_dist_logits": ("age",), "age_group_logits": ("age_group",),
    "age_ordinal_logits": ("age_group",), "joint_logits": ("age_group", "gender"), "gender_logit": ("gender",),
    "attributes": ("attributes",),
}


def multitask_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], spec: LossSpec,
                   epoch: int = 0) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the loss of every output the model has (one term per output, :data:`LOSS_OUTPUTS`);
    returns it and each unweighted term."""
    age, group, gender = targets["age"], targets["group"], targets["gender"]
    terms: dict[str, tuple[float, Tensor]] = {}
    if "age_group_logits" in outputs:
        terms["age_group"] = (spec.age_group, group_loss(outputs["age_group_logits"], group, spec.label_smoothing))
    if "age_ordinal_logits" in outputs:
        terms["age_ordinal"] = (spec.age_ordinal,
                                ordinal_loss(outputs["age_ordinal_logits"], group, spec.ordinal_weights))
    if "age" in outputs:
        terms["age"] = (spec.age, regression_loss(outputs["age"], age, spec.regression))
    if "age_dist_logits" in outputs:
        terms["age_dist"] = (spec.age_dist, distribution_loss(outputs["age_dist_logits"], age, spec.sigma,
                                                              spec.l1_weight))
    if "joint_logits" in outputs:
        terms["joint"] = (spec.joint, joint_loss(outputs["joint_logits"], group, gender))
    if "gender_logit" in outputs:
        terms["gender"] = (spec.gender_weight(epoch),
                           gender_loss(outputs["gender_logit"], gender, spec.label_smoothing))
    if "attributes" in outputs and "attributes" in targets:  # data without attribute labels adds no term
        terms["attributes"] = (spec.attributes, attribute_loss(outputs["attributes"], targets["attributes"]))
    if not terms:
        hint = " (attributes are labelled in the celeba data set only)" if "attributes" in outputs else ""
        raise ValueError(f"no loss applies to the outputs {sorted(outputs)}{hint}")
    total = cast(Tensor, sum(w * t for w, t in terms.values()))
    return total, {k: float(t.detach()) for k, (_, t) in terms.items()}
