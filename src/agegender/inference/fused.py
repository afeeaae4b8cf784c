"""The default model's decoding inside its graph: one inference from pixels to calibrated predictions.

:meth:`OnnxAgeGender.predict <agegender.inference.onnx_model.OnnxAgeGender.predict>` runs the network, then flip
averaging (:func:`~agegender.oversample.average_crops`), :func:`~agegender.outputs.decode` and the file's age and
interval calibrations (:mod:`agegender.age_calibration`) in NumPy. At batch 1 that NumPy is a third of a face's
time: right after each inference it finds cold caches and runs at about half its isolated speed
(``agegender bench --profile``, "in a row"). :func:`fused_graph` appends the same steps to the exported graph as
ONNX nodes, for the output family of the shipped models (an age distribution over one-year bins and a gender
logit) with no interval calibration or one by bands of the true age, so that the runtime runs them in the same
inference. On a 2-core Xeon with AMX, OpenVINO, the int8 default with flip, each compiled for its batch size:
0.91 against 1.08 ms per face at batch 1, 0.39 against 0.40 at batch 64 (``python
scripts/measure/fused_decoding.py``, ``docs/logs/fused_decoding.md``; ONNX Runtime: ``--backend onnxruntime``,
``docs/logs/fused_decoding_ort.md``). OpenVINO's model for any input shape ran the fused graph no faster (the same
log), so ``predict`` uses it there only for batch sizes compiled for (see
:class:`~agegender.inference.onnx_model.OnnxAgeGender`).

The nodes restate, in float32, what those NumPy functions compute in float64 (ages agree within 1e-4 years,
P(female) within 1e-6: ``tests/test_backends.py``); a change to one is a change to the other. What they compute:

- with flip, the mirror of each input and both passes in one batch (faces first, then the mirrors); the mean of the
  two age distributions' probabilities and of the two P(female);
- the 8 group probabilities (each group's one-year bins summed, as the cumulative distribution at its last bin
  less that at the previous group's: ``BIN_GROUP``);
- the median and the 10th and 90th percentiles of the distribution, each bin's mass spread over its year
  (:func:`~agegender.outputs.age_quantiles`), the interval widened to hold the age;
- the age correction's hinge on all three (:class:`~agegender.age_calibration.AgeCalibration`);
- the interval's calibration by bands of the true age (:meth:`IntervalCalibration.bounds
  <agegender.age_calibration.IntervalCalibration.bounds>`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agegender.age_calibration import AgeCalibration, IntervalCalibration
from agegender.labels import MAX_AGE, NUM_AGE_GROUPS
from agegender.outputs import BIN_GROUP, Decoded

__all__ = ["FUSED_OUTPUTS", "fused_decoded", "fused_graph", "why_not_fused"]

#: The raw outputs the fused decoding reads: the shipped models' family.
RAW_OUTPUTS = frozenset({"age_dist_logits", "gender_logit"})
#: The fused graph's outputs: ``ages`` (N x 3: age, low, high), ``group_probs`` (N x 8), ``female_prob`` (N).
FUSED_OUTPUTS = ("ages", "group_probs", "female_prob")


def why_not_fused(output_names: Sequence[str], interval: IntervalCalibration | None) -> str | None:
    """Why a model with these outputs and interval calibration cannot have its decoding fused (None: it can)."""
    if set(output_names) != RAW_OUTPUTS:
        return f"its outputs are {', '.join(sorted(output_names))}, not {', '.join(sorted(RAW_OUTPUTS))}"
    if interval is not None and interval.by != "true_age":
        return f"its interval is calibrated by {interval.by.replace('_', ' ')}"
    return None


#: Prefix of the names of the nodes, values and constants the fusion adds.
PREFIX = "fused/"


class _Nodes:
    """The nodes appended to ``graph``, in order, and the constants they read: every name the fusion makes gets
    :data:`PREFIX`, the names in ``outside`` (the network's input and raw outputs, the fused outputs) do not."""

    def __init__(self, graph: Any, outside: set[str]) -> None:
        self.graph, self.outside = graph, outside
        self.nodes: list[Any] = []

    def _name(self, name: str) -> str:
        return name if name in self.outside else PREFIX + name

    def __call__(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, [self._name(x) for x in inputs], [self._name(x) for x in outputs],
                                           **attrs))

    def const(self, dtype: type = np.float32, /, **values: Any) -> None:
        """Constants of ``dtype``, by name."""
        from onnx import numpy_helper

        for name, value in values.items():
            self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), PREFIX + name))


def _mirror(add: _Nodes, input_name: str, views: str) -> None:
    """``views``: the input's faces, then their mirrors (the network's input once flip averaging is fused)."""
    add.const(np.int64, mirror_starts=[-1], mirror_ends=[-(2 ** 62)], mirror_axes=[3], mirror_steps=[-1])
    add("Slice", [input_name, "mirror_starts", "mirror_ends", "mirror_axes", "mirror_steps"], ["mirror"])
    add("Concat", [input_name, "mirror"], [views], axis=0)


def _probabilities(add: _Nodes, raw: Mapping[str, str], flip: bool) -> None:
    """``probs`` (N x bins) and ``female_prob`` (N): with ``flip``, the mean over the two views of each."""
    if not flip:
        add("Softmax", [raw["age_dist_logits"]], ["probs"], axis=-1)
        add("Sigmoid", [raw["gender_logit"]], ["female_prob"])
        return
    add.const(np.int64, views2=[2, -1], views3=[2, -1, MAX_AGE + 1])
    add("Reshape", [raw["age_dist_logits"], "views3"], ["age_views"])
    add("Softmax", ["age_views"], ["age_view_probs"], axis=-1)
    add("ReduceMean", ["age_view_probs"], ["probs"], axes=[0], keepdims=0)
    add("Reshape", [raw["gender_logit"], "views2"], ["gender_views"])
    add("Sigmoid", ["gender_views"], ["female_views"])
    add("ReduceMean", ["female_views"], ["female_prob"], axes=[0], keepdims=0)


def _groups_and_quantiles(add: _Nodes) -> None:
    """``group_probs`` (N x 8) and ``quantiles`` (N x 3: the median, the 10th and the 90th percentile)."""
    from onnx import TensorProto

    group_ends = np.flatnonzero(np.diff(BIN_GROUP, append=NUM_AGE_GROUPS))  # each group's last bin
    add.const(np.int64, group_ends=group_ends, cdf_pad=[0, 1, 0, 0])
    add.const(q=[[[0.5], [0.1], [0.9]]], q_row=[0.5, 0.1, 0.9], tiny=np.finfo(np.float32).tiny, half=0.5, one=1.0)
    add("CumSum", ["probs", "axis1"], ["cdf"])
    # each group's probability: the cumulative distribution at its last bin less that at the previous group's
    # (float32 elementwise: a MatMul ran in bf16 on OpenVINO)
    add("Gather", ["cdf", "group_ends"], ["cdf_at_ends"], axis=1)
    add("Slice", ["cdf_at_ends", "i0", "last", "i1"], ["cdf_before_last"])
    add("Pad", ["cdf_before_last", "cdf_pad"], ["cdf_at_starts"])
    add("Sub", ["cdf_at_ends", "cdf_at_starts"], ["group_probs"])
    # each quantile: the bin k where the cumulative distribution reaches q, then linear inside that bin
    add("Unsqueeze", ["cdf", "i1"], ["cdf3"])
    add("Less", ["cdf3", "q"], ["under"])
    add("Cast", ["under"], ["under_f"], to=TensorProto.FLOAT)
    add("ReduceSum", ["under_f", "last"], ["k_all"], keepdims=0)
    add("Min", ["k_all", "max_age"], ["k_f"])
    add("Cast", ["k_f"], ["k"], to=TensorProto.INT64)
    add("Sub", ["k_f", "one"], ["k1_all"])
    add("Max", ["k1_all", "zero"], ["k1_f"])
    add("Cast", ["k1_f"], ["k1"], to=TensorProto.INT64)
    add("GatherElements", ["cdf", "k1"], ["cdf_k1"], axis=1)
    add("Greater", ["k_f", "zero"], ["k_positive"])
    add("Where", ["k_positive", "cdf_k1", "zero"], ["below"])
    add("GatherElements", ["probs", "k"], ["p_k"], axis=1)
    add("Max", ["p_k", "tiny"], ["p_k_safe"])
    add("Sub", ["q_row", "below"], ["rest"])
    add("Div", ["rest", "p_k_safe"], ["inside"])
    add("Sub", ["k_f", "half"], ["bin_start"])
    add("Add", ["bin_start", "inside"], ["q_all"])
    add("Max", ["q_all", "zero"], ["q_pos"])
    add("Min", ["q_pos", "max_age"], ["quantiles"])


def _hinge(add: _Nodes, calibration: AgeCalibration, quantiles: str) -> str:
    """The age correction on the age and both ends of its interval; returns the corrected values' name."""
    add.const(knee=calibration.knee, slope=calibration.slope)
    add("Sub", [quantiles, "knee"], ["over"])
    add("Mul", ["over", "slope"], ["over_scaled"])
    add("Add", ["over_scaled", "knee"], ["hinged"])
    add("Greater", [quantiles, "knee"], ["past_knee"])
    add("Where", ["past_knee", "hinged", quantiles], ["corrected"])
    return "corrected"


def _age_and_interval(add: _Nodes, quantiles: str) -> tuple[str, str]:
    """``age`` (N x 1) and the interval's ends (their names), the interval widened to hold the age."""
    add.const(np.int64, i2=[2], i3=[3])
    add("Slice", [quantiles, "i0", "i1", "i1"], ["age"])
    add("Slice", [quantiles, "i1", "i2", "i1"], ["lo_q"])
    add("Slice", [quantiles, "i2", "i3", "i1"], ["hi_q"])
    add("Min", ["lo_q", "age"], ["low"])
    add("Max", ["hi_q", "age"], ["high"])
    return "low", "high"


def _calibrated_interval(add: _Nodes, interval: IntervalCalibration, low: str, high: str) -> tuple[str, str]:
    """:meth:`IntervalCalibration.bounds <agegender.age_calibration.IntervalCalibration.bounds>` by bands of the
    true age; returns the calibrated ends' names."""
    add.const(min_half=interval.min_half_width, scales=interval.scales, band_starts=[-np.inf, *interval.edges],
              band_ends=[*interval.edges, np.inf], inf=np.inf, ninf=-np.inf)
    add("Sub", ["age", low], ["reach_lo_all"])
    add("Max", ["reach_lo_all", "min_half"], ["reach_lo"])
    add("Sub", [high, "age"], ["reach_hi_all"])
    add("Max", ["reach_hi_all", "min_half"], ["reach_hi"])
    # the lowest age of any band the scaled reach gets into, the highest likewise
    add("Mul", ["scales", "reach_lo"], ["down"])
    add("Sub", ["age", "down"], ["lows_all"])
    add("Max", ["band_starts", "lows_all"], ["lows"])
    add("Min", ["band_ends", "age"], ["band_tops"])
    add("Less", ["lows", "band_tops"], ["low_reached"])
    add("Where", ["low_reached", "lows", "inf"], ["lows_kept"])
    add("ReduceMin", ["lows_kept"], ["lowest"], axes=[-1], keepdims=1)
    add("Min", ["age", "lowest"], ["low_new"])
    add("Mul", ["scales", "reach_hi"], ["up"])
    add("Add", ["age", "up"], ["highs_all"])
    add("Min", ["band_ends", "highs_all"], ["highs"])
    add("Max", ["band_starts", "age"], ["band_bottoms"])
    add("Greater", ["highs", "band_bottoms"], ["high_reached"])
    add("Where", ["high_reached", "highs", "ninf"], ["highs_kept"])
    add("ReduceMax", ["highs_kept"], ["highest"], axes=[-1], keepdims=1)
    add("Max", ["age", "highest"], ["high_new"])
    # 0 <= low <= age <= high <= max(age, MAX_AGE)
    add("Max", ["low_new", "zero"], ["low_pos"])
    add("Min", ["low_pos", "age"], ["low_c"])
    add("Max", ["high_new", "age"], ["high_up"])
    add("Max", ["age", "max_age"], ["cap"])
    add("Min", ["high_up", "cap"], ["high_c"])
    return "low_c", "high_c"


def fused_graph(model: bytes, input_name: str, flip: bool, calibration: AgeCalibration | None,
                interval: IntervalCalibration | None) -> bytes:
    """A serialised ONNX model (``model``, with input ``input_name``) with flip averaging when ``flip``, decoding,
    the age correction ``calibration`` and the interval calibration ``interval`` (each None: none) appended; its
    outputs are :data:`FUSED_OUTPUTS`, its metadata the source's. Raises ValueError where :func:`why_not_fused`
    says no."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    reason = why_not_fused([o.name for o in graph.output], interval)
    if reason:
        raise ValueError(f"cannot fuse the decoding: {reason}")
    raw = {o.name: f"{o.name}_raw" for o in graph.output}
    for node in graph.node:
        node.output[:] = [raw.get(x, x) for x in node.output]
    views = f"{input_name}_views"
    network = list(graph.node)
    add = _Nodes(graph, {input_name, views, *raw.values(), *FUSED_OUTPUTS})
    add.const(np.int64, axis1=1, last=[-1], i0=[0], i1=[1])
    add.const(zero=0.0, max_age=float(MAX_AGE))
    if flip:
        del graph.value_info[:]  # shapes inferred at export: the network now runs on twice the batch
        for node in network:
            node.input[:] = [views if x == input_name else x for x in node.input]
        _mirror(add, input_name, views)
    add.nodes += network
    _probabilities(add, raw, flip)
    _groups_and_quantiles(add)
    quantiles = "quantiles" if calibration is None else _hinge(add, calibration, "quantiles")
    low, high = _age_and_interval(add, quantiles)
    if interval is not None:
        low, high = _calibrated_interval(add, interval, low, high)
    add("Concat", ["age", low, high], ["ages"], axis=1)
    del graph.node[:]
    graph.node.extend(add.nodes)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("ages", TensorProto.FLOAT, ["batch", 3]),
                         helper.make_tensor_value_info("group_probs", TensorProto.FLOAT, ["batch", NUM_AGE_GROUPS]),
                         helper.make_tensor_value_info("female_prob", TensorProto.FLOAT, ["batch"])])
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def fused_decoded(outputs: Mapping[str, np.ndarray]) -> Decoded:
    """:class:`Decoded` predictions from a fused graph's outputs (float64, as :func:`~agegender.outputs.decode`
    gives them; the group follows the age, as for any age distribution)."""
    ages = np.asarray(outputs["ages"], np.float64)
    return Decoded(age=ages[:, 0], age_low=ages[:, 1], age_high=ages[:, 2],
                   group_probs=np.asarray(outputs["group_probs"], np.float64),
                   female_prob=np.asarray(outputs["female_prob"], np.float64).reshape(-1), group_follows_age=True)
