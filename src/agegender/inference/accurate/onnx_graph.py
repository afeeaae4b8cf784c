"""dlib's face-recognition ResNet (as :mod:`.dlib_format` reads it) written as an ONNX graph: ``image`` float32
[N, 3, 150, 150] RGB 0..255 in, dlib's 128-number ``descriptor`` out. Needs the ``onnx`` package (the
``accurate`` extra), imported only when writing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from agegender.inference.accurate.dlib_format import (
    DESCRIPTOR_SIZE,
    INPUT_SCALE,
    AddPrev,
    Affine,
    Conv,
    Dense,
    DlibResNet,
    Layer,
    Pool,
    Relu,
    Skip,
    Tag,
)

__all__ = ["to_onnx"]

OPSET = 17


def _fold_affine(conv: Conv, affine: Affine) -> Conv:
    """``affine(conv(x))`` as one convolution."""
    gamma, beta = affine.gamma.astype(np.float64), affine.beta.astype(np.float64)
    weight = conv.weight.astype(np.float64) * gamma[:, None, None, None]
    bias = conv.bias.astype(np.float64) * gamma + beta
    return Conv(weight.astype(np.float32), bias.astype(np.float32), conv.stride, conv.padding)


def _fold_input_scaling(conv: Conv, mean_rgb: tuple[float, float, float]) -> Conv:
    """``conv((x - mean) / 256)`` as one convolution of ``x``; exact only without padding (checked by the caller)."""
    weight = conv.weight.astype(np.float64) / INPUT_SCALE
    bias = conv.bias.astype(np.float64) - np.einsum("ochw,c->o", weight, np.asarray(mean_rgb, np.float64))
    return Conv(weight.astype(np.float32), bias.astype(np.float32), conv.stride, conv.padding)


def _folded_layers(net: DlibResNet) -> tuple[list[Layer], bool]:
    """The layers with every conv -> affine pair merged, and whether the input scaling went into the first conv."""
    layers: list[Layer] = []
    for layer in net.layers:
        if isinstance(layer, Affine) and layers and isinstance(layers[-1], Conv):
            layers[-1] = _fold_affine(layers[-1], layer)  # adjacent: no tag can refer to the conv's own output
        else:
            layers.append(layer)
    first = layers[0]
    if isinstance(first, Conv) and first.padding == (0, 0):
        layers[0] = _fold_input_scaling(first, net.mean_rgb)
        return layers, True
    return layers, False


def _output_side(size: int, kernel: int, stride: int, padding: int) -> int:
    """dlib's (and ONNX's floor-mode) output length of a convolution or pooling."""
    side = (size + 2 * padding - kernel) // stride + 1
    if side < 1:
        raise ValueError(f"a {kernel}-wide window with stride {stride}, padding {padding} does not fit {size}")
    return side


class _Graph:
    """Collects ONNX nodes and initializers while walking the layers; tracks the current tensor's C, H, W."""

    def __init__(self, helper: Any, numpy_helper: Any, shape: tuple[int, ...]) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.current, self.shape = "image", shape
        self.tags: dict[int, tuple[str, tuple[int, ...]]] = {}

    def const(self, array: np.ndarray, hint: str) -> str:
        name = f"{hint}_{len(self.initializers)}"
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def input_scaling(self, mean_rgb: tuple[float, float, float]) -> None:
        mean = self.const(np.asarray(mean_rgb, np.float32).reshape(1, 3, 1, 1), "mean")
        scale = self.const(np.full((1, 1, 1, 1), 1 / INPUT_SCALE, np.float32), "scale")
        self.current = self.node("Mul", [self.node("Sub", [self.current, mean]), scale])

    def conv(self, layer: Conv) -> None:
        (py, px), (sy, sx) = layer.padding, layer.stride
        out, _, kh, kw = layer.weight.shape
        inputs = [self.current, self.const(layer.weight, "weight"), self.const(layer.bias, "bias")]
        self.current = self.node("Conv", inputs, kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
        self.shape = (out, _output_side(self.shape[1], kh, sy, py), _output_side(self.shape[2], kw, sx, px))

    def affine(self, layer: Affine) -> None:
        shape = (1, -1, 1, 1)
        gamma, beta = self.const(layer.gamma.reshape(shape), "gamma"), self.const(layer.beta.reshape(shape), "beta")
        self.current = self.node("Add", [self.node("Mul", [self.current, gamma]), beta])

    def pool(self, layer: Pool) -> None:
        channels, rows, cols = self.shape
        if layer.kernel == (0, 0):
            self.current = self.node("GlobalMaxPool" if layer.mode == "max" else "GlobalAveragePool", [self.current])
            self.shape = (channels, 1, 1)
            return
        if layer.mode == "avg" and layer.padding != (0, 0):
            raise ValueError("average pooling with padding is not supported (dlib's border handling is not mapped)")
        (kh, kw), (sy, sx), (py, px) = layer.kernel, layer.stride, layer.padding
        op = "MaxPool" if layer.mode == "max" else "AveragePool"
        self.current = self.node(op, [self.current], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
        self.shape = (channels, _output_side(rows, kh, sy, py), _output_side(cols, kw, sx, px))

    def padded(self, name: str, shape: tuple[int, ...], target: tuple[int, ...]) -> str:
        """``name`` zero-padded at the end of C, H and W up to ``target``, as dlib's add does."""
        if shape == target:
            return name
        pads = np.array([0, 0, 0, 0, 0, *(t - s for t, s in zip(target, shape, strict=True))], np.int64)
        return self.node("Pad", [name, self.const(pads, "pads")], mode="constant")

    def tagged(self, tag: int, user: str) -> tuple[str, tuple[int, ...]]:
        if tag not in self.tags:
            raise ValueError(f"{user}{tag} before any tag{tag}")
        return self.tags[tag]

    def add_prev(self, layer: AddPrev) -> None:
        other, other_shape = self.tagged(layer.tag, "add_prev")
        target = tuple(max(a, b) for a, b in zip(self.shape, other_shape, strict=True))
        self.current = self.node("Add", [self.padded(self.current, self.shape, target),
                                         self.padded(other, other_shape, target)])
        self.shape = target

    def dense(self, layer: Dense) -> None:
        if layer.weight.shape[0] != math.prod(self.shape):
            raise ValueError(f"fc_ expects {layer.weight.shape[0]} inputs, the network gives {self.shape}")
        flat = self.node("Flatten", [self.current], axis=1)
        self.current = self.node("MatMul", [flat, self.const(layer.weight, "fc_weight")])
        if layer.bias is not None:
            self.current = self.node("Add", [self.current, self.const(layer.bias, "fc_bias")])
        self.shape = (layer.weight.shape[1],)

    def layer(self, layer: Layer) -> None:
        if isinstance(layer, Tag):
            self.tags[layer.id] = (self.current, self.shape)
        elif isinstance(layer, Skip):
            self.current, self.shape = self.tagged(layer.id, "skip")
        elif isinstance(layer, Relu):
            self.current = self.node("Relu", [self.current])
        elif isinstance(layer, Conv):
            self.conv(layer)
        elif isinstance(layer, Affine):
            self.affine(layer)
        elif isinstance(layer, Pool):
            self.pool(layer)
        elif isinstance(layer, AddPrev):
            self.add_prev(layer)
        else:
            self.dense(layer)


def to_onnx(net: DlibResNet, path: str | Path) -> Path:
    """Write ``net`` as an ONNX model (opset 17): ``image`` float32 [N, 3, H, W] RGB 0..255 -> ``descriptor``
    [N, 128]. Needs the ``onnx`` package."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as err:
        raise ImportError("writing the ONNX model needs the onnx package: pip install onnx") from err
    rows, cols = net.input_size
    layers, folded = _folded_layers(net)
    graph = _Graph(helper, numpy_helper, (3, rows, cols))
    if not folded:
        graph.input_scaling(net.mean_rgb)
    for layer in layers:
        graph.layer(layer)
    if graph.shape != (DESCRIPTOR_SIZE,):
        raise ValueError(f"the network ends in shape {graph.shape}, not ({DESCRIPTOR_SIZE},)")
    graph.nodes.append(helper.make_node("Identity", [graph.current], ["descriptor"], name="descriptor"))
    float32 = onnx.TensorProto.FLOAT
    model = helper.make_model(
        helper.make_graph(graph.nodes, "dlib_face_recognition_resnet",
                          [helper.make_tensor_value_info("image", float32, ["N", 3, rows, cols])],
                          [helper.make_tensor_value_info("descriptor", float32, ["N", DESCRIPTOR_SIZE])],
                          graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8, producer_name="agegender.dlib_resnet",
        doc_string=(f"dlib's face-recognition ResNet converted from {net.source} (sha256 {net.sha256}). Input: "
                    f"RGB face chips aligned like dlib.get_face_chip(size={rows}, padding=0.25), values 0..255. "
                    "Output: dlib's 128-number descriptor, as compute_face_descriptor returns it (same person "
                    f"below distance {net.distance_threshold:g})."))
    helper.set_model_props(model, {"source": net.source, "source_sha256": net.sha256,
                                   "distance_threshold": f"{net.distance_threshold:g}",
                                   "input": f"image: float32 [N, 3, {rows}, {cols}], RGB, 0..255"})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
