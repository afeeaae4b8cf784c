"""The output contract every model honours, and the one decoder that turns any model's outputs into predictions
(:mod:`agegender.inference.fused` restates it as ONNX nodes for the shipped models' outputs, tested to agree).

A model's ``forward`` returns a dict holding any of these keys (batch first):

- ``age_group_logits`` (N, 8): softmax over the Adience groups;
- ``age_ordinal_logits`` (N, 8): logit of "older than group k" for k = 0..7 (seed 001's encoding);
- ``age`` (N,): age regression in years (a point: decoded with no interval and no group probabilities);
- ``age_dist_logits`` (N, 101): softmax over ages 0..100 (label-distribution learning); the decoded age is its
  median, the estimate with the least expected absolute error (the mean, which training's L1 term reads, has the
  least squared error), and the 80% interval its 10th and 90th percentiles;
- ``joint_logits`` (N, 16): gender x age group, index ``gender * 8 + group``;
- ``gender_logit`` (N,): logit of P(female);
- ``attributes`` (N, 40): logit of each of CelebA's 40 binary attributes (``ATTRIBUTES``, in the data set's
  order; seed 001 §4.1 pre-trains on them). A model without ``gender_logit`` or ``joint_logits`` reads its gender
  from the ``Male`` attribute.

In training mode a model may add an auxiliary output that only a loss reads, never the decoder or an export:

- ``descriptor`` (N, D): a regression onto a teacher's face descriptor (feature distillation).

The decoder is plain NumPy, so inference never needs torch.

>>> import numpy as np
>>> d = decode({"age": np.array([30.0]), "gender_logit": np.array([2.0])})
>>> round(float(d.age[0]), 1), AGE_GROUPS[int(d.age_group[0])], round(float(d.female_prob[0]), 3)
(30.0, '25-32', 0.881)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agegender.labels import AGE_GROUPS, MAX_AGE, NUM_AGE_GROUPS, ages_to_groups, group_midpoint

OUTPUT_KEYS = (
    "age_group_logits", "age_ordinal_logits", "age", "age_dist_logits", "joint_logits", "gender_logit",
    "attributes",
)
AUXILIARY_KEYS = ("descriptor",)
#: What turns each output into what it predicts: a softmax or a sigmoid for the probability heads, nothing for an
#: age in years. Decoding, output averaging (``agegender.oversample``) and distillation all read this table.
ACTIVATIONS = {
    "age_group_logits": "softmax", "age_dist_logits": "softmax", "joint_logits": "softmax",
    "age_ordinal_logits": "sigmoid", "gender_logit": "sigmoid", "age": "identity", "attributes": "sigmoid",
}
#: CelebA's 40 attributes, in the order of its ``list_attr_celeba.txt``: the columns of the ``attributes`` output.
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
#: The column of ``attributes`` whose probability is P(male).
MALE_ATTRIBUTE = ATTRIBUTES.index("Male")
AGE_KEYS = frozenset({"age_group_logits", "age_ordinal_logits", "age", "age_dist_logits", "joint_logits"})
GENDER_KEYS = frozenset({"gender_logit", "joint_logits", "attributes"})  # attributes: its `Male` column
#: Group index of every one-year bin 0..100, following the gap policy.
BIN_GROUP = ages_to_groups(np.arange(MAX_AGE + 1))
#: The first bin of each group (BIN_GROUP rises with the age), where ``np.add.reduceat`` starts its sums.
_GROUP_STARTS = np.flatnonzero(np.diff(BIN_GROUP, prepend=-1))
GROUP_MIDPOINTS = np.array([group_midpoint(g) for g in range(NUM_AGE_GROUPS)], dtype=np.float32)
#: Ages are reported (a face's fields, JSON, rows) to a tenth of a year; the group follows the age so reported.
AGE_DECIMALS = 1


def reported_ages(ages: np.ndarray | float | Sequence[float]) -> np.ndarray:
    """Ages (years) as reported: rounded to :data:`AGE_DECIMALS` (monotone, so an interval stays around its age).

    >>> reported_ages(np.array([56.449, 56.45001])).tolist()
    [56.4, 56.5]
    """
    return np.round(np.asarray(ages, dtype=np.float64), AGE_DECIMALS)


@dataclass(frozen=True)
class Decoded:
    """Per-face predictions decoded from a batch of model outputs (arrays of length N)."""

    age: np.ndarray | None  # years, float (a distribution's median); None for gender-only nets
    #: 10th and 90th percentiles in years (an 80% interval); None without a distribution (gender-only nets, and
    #: age regressions, which give a point and nothing to bound it with)
    age_low: np.ndarray | None
    age_high: np.ndarray | None
    group_probs: np.ndarray | None  # (N, 8); None without a distribution, as the interval
    female_prob: np.ndarray | None  # None when the model has no gender output
    #: The group is the one the age falls in (gap policy), not the most probable: set when both come from one age
    #: distribution, so that a face never reads "age 36, group 25-32" (``scripts/measure/age_group_rule.py``
    #: found the two rules level on exact group accuracy and the age's group ahead on one-off); and for an age
    #: regression, whose group is only the one its age falls in.
    group_follows_age: bool = False

    @property
    def age_group(self) -> np.ndarray | None:
        """The predicted group index per face (see ``group_follows_age``); None for a gender-only net."""
        if self.group_follows_age and self.age is not None:
            return ages_to_groups(reported_ages(self.age))
        return None if self.group_probs is None else self.group_probs.argmax(axis=1)

    @property
    def n(self) -> int:
        present = self.age if self.age is not None else self.female_prob
        return 0 if present is None else len(present)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ordinal_to_group_probs(logits: np.ndarray) -> np.ndarray:
    """Group probabilities from "older than group k" logits: P(g=k) = P(>k-1) - P(>k), made monotone.

    >>> int(ordinal_to_group_probs(np.array([[9.0, 9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0]])).argmax())
    2
    """
    older = np.minimum.accumulate(sigmoid(logits)[:, : NUM_AGE_GROUPS - 1], axis=1)
    upper = np.concatenate([np.ones((len(older), 1)), older], axis=1)
    lower = np.concatenate([older, np.zeros((len(older), 1))], axis=1)
    return upper - lower


def dist_to_group_probs(age_probs: np.ndarray) -> np.ndarray:
    """Sum a distribution over one-year bins into the 8 groups (gap ages go where the gap policy says)."""
    return np.add.reduceat(np.asarray(age_probs, dtype=np.float64), _GROUP_STARTS, axis=1)


def age_quantile(age_probs: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile in years of distributions over one-year bins 0..100, each bin's mass spread evenly over
    [age - 0.5, age + 0.5] (so the result is continuous), clipped to 0..100.

    >>> probs = np.zeros((1, 101)); probs[0, 20:30] = 0.1  # ages 20..29, equally likely
    >>> age_quantile(probs, 0.5), age_quantile(probs, 0.1)
    (array([24.5]), array([20.5]))
    """
    return age_quantiles(age_probs, (q,))[0]


def age_quantiles(age_probs: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """:func:`age_quantile` for each of ``qs``, all of them at once (one cumulative distribution, no loop).

    >>> probs = np.zeros((1, 101)); probs[0, 20:30] = 0.1
    >>> [q.tolist() for q in age_quantiles(probs, (0.5, 0.1, 0.9))]
    [[24.5], [20.5], [28.5]]
    """
    cdf = np.cumsum(age_probs, axis=1)
    q = np.asarray(qs, dtype=np.float64)
    rows = np.arange(len(age_probs))[:, None]
    k = np.minimum((cdf[:, None, :] < q[:, None]).sum(axis=2), age_probs.shape[1] - 1)  # faces x qs: the bin
    below = np.where(k > 0, cdf[rows, np.maximum(k - 1, 0)], 0.0)
    inside = (q - below) / np.maximum(age_probs[rows, k], np.finfo(np.float64).tiny)
    return list(np.minimum(np.maximum(k - 0.5 + inside, 0.0), float(MAX_AGE)).T)  # np.clip costs more per call


def _group_interval(group_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """80% interval in years from group probabilities, each group spread evenly over its contiguous span."""
    spans = np.zeros((len(group_probs), MAX_AGE + 1))
    for g in range(NUM_AGE_GROUPS):
        members = BIN_GROUP == g
        spans[:, members] = group_probs[:, [g]] / members.sum()
    return age_quantile(spans, 0.1), age_quantile(spans, 0.9)


def decode(outputs: Mapping[str, np.ndarray]) -> Decoded:
    """Decode any model's outputs (see module doc) into age, age interval, group probabilities and P(female);
    the age fields are None for a gender-only model, ``female_prob`` for an age-only one, the interval and the
    group probabilities for an age regression (a point has no spread to report).

    >>> decode({"gender_logit": np.array([0.0])}).age is None
    True
    >>> male = np.zeros((1, 40)); male[0, MALE_ATTRIBUTE] = 2.0  # an attribute net: gender from ``Male``
    >>> round(float(decode({"attributes": male}).female_prob[0]), 3)
    0.119
    >>> probs = np.full((1, 101), 1e-12); probs[0, 20], probs[0, 30] = 0.6, 0.4
    >>> round(float(decode({"age_dist_logits": np.log(probs)}).age[0]), 2)  # the median; the mean is 24
    20.33
    >>> regression = decode({"age": np.array([36.04]), "gender_logit": np.array([1.0])})
    >>> regression.age_low is None and regression.group_probs is None, AGE_GROUPS[int(regression.age_group[0])]
    (True, '38-43')
    """
    outputs = {k: np.asarray(v) for k, v in outputs.items() if k in OUTPUT_KEYS}
    if not outputs:
        raise ValueError(f"model outputs hold none of {OUTPUT_KEYS}")
    female = sigmoid(outputs["gender_logit"]).reshape(-1) if "gender_logit" in outputs else None
    if female is None and "attributes" in outputs and "joint_logits" not in outputs:
        female = sigmoid(-outputs["attributes"][:, MALE_ATTRIBUTE])
    group_probs = None
    if "joint_logits" in outputs:
        joint = softmax(outputs["joint_logits"]).reshape(-1, 2, NUM_AGE_GROUPS)
        group_probs = joint.sum(axis=1)
        if female is None:
            female = joint[:, 1].sum(axis=1)
    if "age_group_logits" in outputs:
        group_probs = softmax(outputs["age_group_logits"])
    elif "age_ordinal_logits" in outputs:
        group_probs = ordinal_to_group_probs(outputs["age_ordinal_logits"])

    follows = False
    if "age_dist_logits" in outputs:
        age_probs = softmax(outputs["age_dist_logits"])
        age, low, high = age_quantiles(age_probs, (0.5, 0.1, 0.9))
        follows = group_probs is None
        group_probs = dist_to_group_probs(age_probs) if group_probs is None else group_probs
    elif "age" in outputs:
        age = np.clip(outputs["age"].reshape(-1).astype(np.float64), 0, MAX_AGE + 16)
        if group_probs is None:  # a regression: a point, no interval, its group the one the age falls in
            return Decoded(age=age, age_low=None, age_high=None, group_probs=None, female_prob=female,
                           group_follows_age=True)
        low, high = _group_interval(group_probs)
    elif group_probs is not None:
        age = group_probs @ GROUP_MIDPOINTS
        low, high = _group_interval(group_probs)
    else:  # a gender-only model
        return Decoded(age=None, age_low=None, age_high=None, group_probs=None, female_prob=female)
    return Decoded(age=np.asarray(age, dtype=np.float64), age_low=np.minimum(low, age),
                   age_high=np.maximum(high, age), group_probs=group_probs, female_prob=female,
                   group_follows_age=follows)


__all__ = ["ACTIVATIONS", "AGE_DECIMALS", "AGE_GROUPS", "ATTRIBUTES", "MALE_ATTRIBUTE", "Decoded", "OUTPUT_KEYS",
           "age_quantile", "age_quantiles", "decode", "dist_to_group_probs", "ordinal_to_group_probs",
           "reported_ages"]
