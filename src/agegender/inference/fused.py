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


def _const(name: str, value: object, dtype: type = np.float32) -> Any:
    """A constant named ``PREFIX + name``."""
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype), PREFIX + name)


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
    outside = {input_name, views, *raw.values(), *FUSED_OUTPUTS}  # the names not prefixed

    def n(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        """A node whose own values are named with :data:`PREFIX`."""
        return helper.make_node(op, [x if x in outside else PREFIX + x for x in inputs],
                                [x if x in outside else PREFIX + x for x in outputs], **attrs)

    bins = MAX_AGE + 1
    group_ends = np.flatnonzero(np.diff(BIN_GROUP, append=NUM_AGE_GROUPS))  # each group's last bin
    graph.initializer.extend([
        _const("axis1", 1, np.int64), _const("last", [-1], np.int64),
        _const("i0", [0], np.int64), _const("i1", [1], np.int64), _const("i2", [2], np.int64),
        _const("i3", [3], np.int64), _const("q", [[[0.5], [0.1], [0.9]]]),
        _const("q_row", [0.5, 0.1, 0.9]), _const("zero", 0.0), _const("one", 1.0),
        _const("half", 0.5), _const("max_age", float(MAX_AGE)),
        _const("tiny", np.finfo(np.float32).tiny), _const("group_ends", group_ends, np.int64),
        _const("cdf_pad", [0, 1, 0, 0], np.int64),
    ])
    nodes: list[Any] = []
    if flip:
        del graph.value_info[:]  # shapes inferred at export: the network now runs on twice the batch
        for node in graph.node:
            node.input[:] = [views if x == input_name else x for x in node.input]
        graph.initializer.extend([
            _const("mirror_starts", [-1], np.int64), _const("mirror_ends", [-(2 ** 62)], np.int64),
            _const("mirror_axes", [3], np.int64), _const("mirror_steps", [-1], np.int64),
            _const("views2", [2, -1], np.int64), _const("views3", [2, -1, bins], np.int64)])
        nodes += [n("Slice", [input_name, "mirror_starts", "mirror_ends", "mirror_axes",
                              "mirror_steps"], ["mirror"]),
                  n("Concat", [input_name, "mirror"], [views], axis=0)]
    nodes += list(graph.node)
    if flip:  # the mean over the two views of each output's probabilities
        nodes += [n("Reshape", [raw["age_dist_logits"], "views3"], ["age_views"]),
                  n("Softmax", ["age_views"], ["age_view_probs"], axis=-1),
                  n("ReduceMean", ["age_view_probs"], ["probs"], axes=[0], keepdims=0),
                  n("Reshape", [raw["gender_logit"], "views2"], ["gender_views"]),
                  n("Sigmoid", ["gender_views"], ["female_views"]),
                  n("ReduceMean", ["female_views"], ["female_prob"], axes=[0], keepdims=0)]
    else:
        nodes += [n("Softmax", [raw["age_dist_logits"]], ["probs"], axis=-1),
                  n("Sigmoid", [raw["gender_logit"]], ["female_prob"])]
    nodes += [
        # each quantile: the bin k where the cumulative distribution reaches q, then linear inside that bin
        n("CumSum", ["probs", "axis1"], ["cdf"]),
        # each group's probability: the cumulative distribution at its last bin less that at the previous group's
        # (float32 elementwise: a MatMul ran in bf16 on OpenVINO)
        n("Gather", ["cdf", "group_ends"], ["cdf_at_ends"], axis=1),
        n("Slice", ["cdf_at_ends", "i0", "last", "i1"], ["cdf_before_last"]),
        n("Pad", ["cdf_before_last", "cdf_pad"], ["cdf_at_starts"]),
        n("Sub", ["cdf_at_ends", "cdf_at_starts"], ["group_probs"]),
        n("Unsqueeze", ["cdf", "i1"], ["cdf3"]),
        n("Less", ["cdf3", "q"], ["under"]),
        n("Cast", ["under"], ["under_f"], to=TensorProto.FLOAT),
        n("ReduceSum", ["under_f", "last"], ["k_all"], keepdims=0),
        n("Min", ["k_all", "max_age"], ["k_f"]),
        n("Cast", ["k_f"], ["k"], to=TensorProto.INT64),
        n("Sub", ["k_f", "one"], ["k1_all"]), n("Max", ["k1_all", "zero"], ["k1_f"]),
        n("Cast", ["k1_f"], ["k1"], to=TensorProto.INT64),
        n("GatherElements", ["cdf", "k1"], ["cdf_k1"], axis=1),
        n("Greater", ["k_f", "zero"], ["k_positive"]),
        n("Where", ["k_positive", "cdf_k1", "zero"], ["below"]),
        n("GatherElements", ["probs", "k"], ["p_k"], axis=1),
        n("Max", ["p_k", "tiny"], ["p_k_safe"]),
        n("Sub", ["q_row", "below"], ["rest"]),
        n("Div", ["rest", "p_k_safe"], ["inside"]),
        n("Sub", ["k_f", "half"], ["bin_start"]),
        n("Add", ["bin_start", "inside"], ["q_all"]),
        n("Max", ["q_all", "zero"], ["q_pos"]),
        n("Min", ["q_pos", "max_age"], ["quantiles"]),
    ]
    quantiles = "quantiles"
    if calibration is not None:  # the hinge, on the age and both ends
        graph.initializer.extend([_const("knee", calibration.knee), _const("slope", calibration.slope)])
        nodes += [n("Sub", [quantiles, "knee"], ["over"]),
                  n("Mul", ["over", "slope"], ["over_scaled"]),
                  n("Add", ["over_scaled", "knee"], ["hinged"]),
                  n("Greater", [quantiles, "knee"], ["past_knee"]),
                  n("Where", ["past_knee", "hinged", quantiles], ["corrected"])]
        quantiles = "corrected"
    nodes += [n("Slice", [quantiles, "i0", "i1", "i1"], ["age"]),
              n("Slice", [quantiles, "i1", "i2", "i1"], ["lo_q"]),
              n("Slice", [quantiles, "i2", "i3", "i1"], ["hi_q"]),
              n("Min", ["lo_q", "age"], ["low"]), n("Max", ["hi_q", "age"], ["high"])]
    low, high = "low", "high"
    if interval is not None:  # IntervalCalibration._bounds, by bands of the true age
        graph.initializer.extend([
            _const("min_half", interval.min_half_width), _const("scales", interval.scales),
            _const("band_starts", [-np.inf, *interval.edges]), _const("band_ends", [*interval.edges, np.inf]),
            _const("inf", np.inf), _const("ninf", -np.inf)])
        age = "age"
        nodes += [
            n("Sub", [age, low], ["reach_lo_all"]), n("Max", ["reach_lo_all", "min_half"], ["reach_lo"]),
            n("Sub", [high, age], ["reach_hi_all"]), n("Max", ["reach_hi_all", "min_half"], ["reach_hi"]),
            n("Mul", ["scales", "reach_lo"], ["down"]), n("Sub", [age, "down"], ["lows_all"]),
            n("Max", ["band_starts", "lows_all"], ["lows"]),
            n("Min", ["band_ends", age], ["band_tops"]),
            n("Less", ["lows", "band_tops"], ["low_reached"]),
            n("Where", ["low_reached", "lows", "inf"], ["lows_kept"]),
            n("ReduceMin", ["lows_kept"], ["lowest"], axes=[-1], keepdims=1),
            n("Min", [age, "lowest"], ["low_new"]),
            n("Mul", ["scales", "reach_hi"], ["up"]), n("Add", [age, "up"], ["highs_all"]),
            n("Min", ["band_ends", "highs_all"], ["highs"]),
            n("Max", ["band_starts", age], ["band_bottoms"]),
            n("Greater", ["highs", "band_bottoms"], ["high_reached"]),
            n("Where", ["high_reached", "highs", "ninf"], ["highs_kept"]),
            n("ReduceMax", ["highs_kept"], ["highest"], axes=[-1], keepdims=1),
            n("Max", [age, "highest"], ["high_new"]),
            n("Max", ["low_new", "zero"], ["low_pos"]), n("Min", ["low_pos", age], ["low_c"]),
            n("Max", ["high_new", age], ["high_up"]), n("Max", [age, "max_age"], ["cap"]),
            n("Min", ["high_up", "cap"], ["high_c"])]
        low, high = "low_c", "high_c"
    nodes.append(n("Concat", ["age", low, high], ["ages"], axis=1))
    del graph.node[:]
    graph.node.extend(nodes)
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
