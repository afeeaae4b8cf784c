"""dlib's face-recognition ResNet read from its ``.dat`` file in pure Python (:mod:`.onnx_graph` writes it as ONNX),
so that it runs in ONNX Runtime without dlib.

``dlib_face_recognition_resnet_model_v1.dat`` (Davis King, CC0; shipped in the ``face_recognition_models``
package) maps an aligned 150x150 RGB face chip to 128 numbers, placing one person's faces within 0.6 of each
other. The optional "accurate" inference mode uses these descriptors; dlib itself is a large C++ build (or the
``dlib-bin`` wheel, for few platforms), while ONNX Runtime is already a dependency. :func:`read_dlib_resnet`
parses the file with numpy alone and ``onnx_graph.to_onnx`` writes an equivalent ONNX model (``onnx`` needed
only there). The model's input ``image`` is float32 ``[N, 3, 150, 150]``, RGB, 0..255 (dlib's per-channel mean
and 1/256 scaling are folded into the first, unpadded, convolution); its output ``descriptor`` is ``[N, 128]``,
exactly what ``dlib.face_recognition_model_v1.compute_face_descriptor`` returns (not L2-normalised).

dlib's format (``dlib/serialize.h``, ``dlib/dnn/core.h``), in short:

- integers: a control byte (bit 7: negative; low 4 bits: byte count) then the magnitude, little-endian;
  strings: a length integer then the bytes; bools: ASCII ``'0'``/``'1'``;
- scalar floats: a mantissa integer then an exponent integer, value ``mantissa * 2**exponent``;
- tensors (version 2): version, ``n, k, nr, nc``, then raw little-endian float32;
- ``add_loss_layer``: version, loss details, subnetwork. ``add_layer``: version, *subnetwork*, its own details,
  then training state (three bools, three tensors, all empty in the published file). ``add_tag_layer`` and
  ``add_skip_layer``: version and subnetwork only. So after the loss comes a run of wrapper versions, outermost
  first, and then the layer details in forward order, starting with the input layer.

Tag and skip layers are stored as a bare version 1 (neither their kind nor their ID), and ``add_prev_`` does
not store which tag it adds: the topology is not in the file. :data:`FACE_NET` is therefore the network of
dlib's ``dnn_face_recognition_ex.cpp`` written out in forward order; the file must match it layer by layer
(kinds, filter counts, kernel sizes and strides), and the graph is built from the file's weights, paddings
and input means on that template's tag/skip/add_prev wiring, with dlib's semantics (``add_prev`` of tensors
of different shapes zero-pads both to the larger size in every dimension).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DAT_NAME", "DESCRIPTOR_SIZE", "FACE_NET", "DlibFormatError", "DlibResNet", "installed_model_path",
           "read_dlib_resnet"]

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
DAT_SIZE = 22_466_066
"""Bytes in the published file, quoted in error messages about truncated copies."""
DESCRIPTOR_SIZE = 128
INPUT_SCALE = 256.0
"""dlib's ``input_rgb_image_sized`` feeds ``(pixel - mean) / 256`` (256, not 255)."""


class DlibFormatError(ValueError):
    """The file is not (a complete copy of) dlib's face-recognition ResNet."""


# --- the network, as parsed ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Conv:
    """Convolution: ``weight`` [out, in, kh, kw], ``bias`` [out]; dlib convolutions are cross-correlations."""
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Affine:
    """Per-channel ``x * gamma + beta`` (dlib's inference-time batch norm)."""
    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    """max(x, 0)."""


@dataclass(frozen=True)
class Pool:
    """Max or average pooling; ``kernel`` (0, 0) pools the whole input (``avg_pool_everything``)."""
    mode: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Dense:
    """Fully connected: ``x.flatten() @ weight`` [inputs, outputs], plus ``bias`` when there is one."""
    weight: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class Tag:
    """Remembers the current tensor as tag ``id``."""
    id: int


@dataclass(frozen=True)
class Skip:
    """Continues from the tensor last tagged ``id``."""
    id: int


@dataclass(frozen=True)
class AddPrev:
    """Adds the tensor last tagged ``tag`` to the current one."""
    tag: int


Layer = Conv | Affine | Relu | Pool | Dense | Tag | Skip | AddPrev


@dataclass(frozen=True, eq=False)
class DlibResNet:
    """A parsed dlib face-recognition network: ``layers`` in forward order, numpy weights."""
    layers: tuple[Layer, ...]
    mean_rgb: tuple[float, float, float]
    """Per-channel means dlib subtracts before scaling by 1/256."""
    input_size: tuple[int, int]
    """(rows, columns) of the input chip."""
    distance_threshold: float
    """The loss's same-person distance (0.6)."""
    source: str
    """File name it was read from."""
    sha256: str
    """Of the file it was read from."""


# --- the expected topology -------------------------------------------------------------------------------

def _block(filters: int, stride: int) -> list[tuple]:
    return [("con", filters, 3, stride), ("affine",), ("relu",), ("con", filters, 3, 1), ("affine",)]


def _ares(filters: int) -> list[tuple]:
    return [("tag", 1), *_block(filters, 1), ("add_prev", 1), ("relu",)]


def _ares_down(filters: int) -> list[tuple]:
    return [("tag", 1), *_block(filters, 2), ("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2),
            ("relu",)]


FACE_NET: tuple[tuple, ...] = (
    ("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2),
    *_ares(32) * 3,                          # alevel4
    *_ares_down(64), *_ares(64) * 3,         # alevel3
    *_ares_down(128), *_ares(128) * 2,       # alevel2
    *_ares_down(256), *_ares(256) * 2,       # alevel1
    *_ares_down(256),                        # alevel0
    ("avg_pool", 0, 1), ("fc", DESCRIPTOR_SIZE),
)
"""dnn_face_recognition_ex.cpp's network in forward order: (kind, filters/outputs, kernel, stride) per layer,
with tag/skip/add_prev IDs. Pool kernel 0 = the whole input."""


# --- dlib's serialization --------------------------------------------------------------------------------

class _Reader:
    """Reads dlib's serialized values from bytes, with errors that say where and what."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise DlibFormatError(
                f"{self.name} is truncated: it ends at byte {len(self.data):,}, but {what} at byte {self.pos:,} "
                f"needs {count:,} bytes (the complete {DAT_NAME} is {DAT_SIZE:,} bytes)")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def not_dlib(self, what: str, found: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name} is not a dlib network file: expected {what} at byte {self.pos:,}, "
                               f"found {found}")

    def integer(self, what: str) -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            self.pos -= 1
            raise self.not_dlib(f"{what} (a dlib integer)", f"the byte 0x{control:02x}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def count(self, what: str) -> int:
        value = self.integer(what)
        if value < 0:
            raise self.not_dlib(f"{what} (a count)", str(value))
        return value

    def real(self, what: str) -> float:
        mantissa = self.integer(what)
        exponent = self.integer(what)
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def flag(self, what: str) -> bool:
        byte = self.take(1, what)
        if byte not in (b"0", b"1"):
            self.pos -= 1
            raise self.not_dlib(f"{what} (a bool)", f"the byte 0x{byte[0]:02x}")
        return byte == b"1"

    def string(self, what: str) -> str:
        start = self.pos
        size = self.integer(what)
        if not 0 <= size <= 64:  # layer names are short: anything else means these bytes are something else
            self.pos = start
            raise self.not_dlib(what, f"a string length of {size:,}")
        raw = self.take(size, what)
        if not raw.isascii() or not raw.decode("ascii").isprintable():
            self.pos = start
            raise self.not_dlib(what, f"the bytes {raw[:16]!r}")
        return raw.decode("ascii")

    def shape(self, what: str) -> tuple[int, int, int, int]:
        return (self.count(what), self.count(what), self.count(what), self.count(what))

    def tensor(self, what: str) -> np.ndarray:
        version = self.integer(what)
        if version != 2:
            raise DlibFormatError(f"{self.name}: {what} at byte {self.pos:,} is a version-{version} tensor; "
                                  "only version 2 (raw float32, dlib 19.0 and later) is supported")
        shape = self.shape(what)
        raw = self.take(4 * math.prod(shape), what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        version = self.integer(what)
        if version != 1:
            raise self.not_dlib(f"{what} (alias_tensor version 1)", f"version {version}")
        return self.shape(what)

    def layer_name(self, expected: tuple[str, ...]) -> str:
        start = self.pos
        name = self.string("a layer name")
        if name not in expected:
            self.pos = start
            raise DlibFormatError(f"{self.name}: unsupported dlib layer {name!r} at byte {self.pos:,}; "
                                  f"this converter reads {', '.join(expected)}")
        return name


_LAYERS = ("con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2", "add_prev_", "fc_2")
_LOSSES = ("loss_metric_", "loss_metric_2")
_INPUTS = ("input_rgb_image_sized",)


def _split_params(params: np.ndarray, shapes: Sequence[tuple[int, ...]], what: str) -> list[np.ndarray]:
    """Consecutive views of a flat parameter tensor (dlib's alias tensors)."""
    sizes = [math.prod(s) for s in shapes]
    if params.size != sum(sizes):
        raise DlibFormatError(f"{what}: {params.size} parameters, but its parts {shapes} need {sum(sizes)}")
    flat, out, at = params.reshape(-1), [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[at:at + size].reshape(shape))
        at += size
    return out


def _read_conv(r: _Reader) -> tuple[tuple, Conv]:
    params = r.tensor("con_ parameters")
    filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (r.integer("con_ settings") for _ in range(7))
    weight_shape, bias_shape = r.alias("con_ filter shape"), r.alias("con_ bias shape")
    for _ in range(4):
        r.real("con_ learning-rate multipliers")
    weight, bias = _split_params(params, [weight_shape, bias_shape], "con_")
    if weight_shape[0] != filters or weight_shape[2:] != (rows, cols) or bias.size != filters:
        raise DlibFormatError(f"{r.name}: con_ with {filters} {rows}x{cols} filters stores shapes "
                              f"{weight_shape} and {bias_shape}")
    return ("con", filters, rows, stride_y), Conv(weight, bias.reshape(-1), (stride_y, stride_x), (pad_y, pad_x))


def _read_affine(r: _Reader) -> tuple[tuple, Affine]:
    params = r.tensor("affine_ parameters")
    gamma_shape, beta_shape = r.alias("affine_ gamma shape"), r.alias("affine_ beta shape")
    mode = r.integer("affine_ mode")
    if mode != 0:
        raise DlibFormatError(f"{r.name}: affine_ in fully-connected mode ({mode}) is not supported, "
                              "only the per-channel (convolutional) mode 0")
    gamma, beta = _split_params(params, [gamma_shape, beta_shape], "affine_")
    return ("affine",), Affine(gamma.reshape(-1), beta.reshape(-1))


def _read_pool(r: _Reader, name: str) -> tuple[tuple, Pool]:
    rows, cols, stride_y, stride_x, pad_y, pad_x = (r.integer(f"{name} settings") for _ in range(6))
    mode = name.split("_")[0]
    return (f"{mode}_pool", rows, stride_y), Pool(mode, (rows, cols), (stride_y, stride_x), (pad_y, pad_x))


def _read_fc(r: _Reader) -> tuple[tuple, Dense]:
    outputs, inputs = r.count("fc_ outputs"), r.count("fc_ inputs")
    params = r.tensor("fc_ parameters")
    weight_shape = r.alias("fc_ weight shape")
    r.alias("fc_ bias shape")  # all zeros without a bias
    has_bias = r.integer("fc_ bias mode") == 0
    for _ in range(4):
        r.real("fc_ learning-rate multipliers")
    if weight_shape[:2] != (inputs, outputs):
        raise DlibFormatError(f"{r.name}: fc_ {inputs} -> {outputs} stores weights of shape {weight_shape}")
    shapes = [(inputs, outputs)] + ([(outputs,)] if has_bias else [])
    parts = _split_params(params, shapes, "fc_")
    return ("fc", outputs), Dense(parts[0], parts[1] if has_bias else None)


def _read_layer(r: _Reader) -> tuple[tuple, Layer | None]:
    """One layer's details: its template key and the layer (None for add_prev_, whose tag is not stored)."""
    name = r.layer_name(_LAYERS)
    if name == "con_4":
        return _read_conv(r)
    if name == "affine_":
        return _read_affine(r)
    if name in ("max_pool_2", "avg_pool_2"):
        return _read_pool(r, name)
    if name == "fc_2":
        return _read_fc(r)
    return (name.removesuffix("_"),), (Relu() if name == "relu_" else None)


def _skip_training_state(r: _Reader, input_version: int | None = None) -> None:
    """The bools and tensors an ``add_layer`` keeps for training, after its details."""
    for _ in range(3):
        r.flag("add_layer state")
    for _ in range(3):
        r.tensor("add_layer state")
    if input_version == 3:
        r.count("add_layer sample expansion factor")


def _read_loss(r: _Reader) -> float:
    """The loss layer's same-person distance threshold."""
    version = r.integer("the loss-layer version")
    if version != 1:
        raise r.not_dlib("a dlib network (loss-layer version 1)", f"version {version}")
    name = r.string("the loss layer name")
    if name not in _LOSSES:
        raise DlibFormatError(f"{r.name} holds a dlib network with the loss {name!r}, not dlib's face-recognition "
                              f"ResNet ({DAT_NAME}, loss_metric_)")
    if name == "loss_metric_":
        return 0.75  # the distance dlib hard-coded for this loss version
    r.real("loss_metric_ margin")
    return r.real("loss_metric_ distance threshold")


def _read_wrapper_versions(r: _Reader) -> list[int]:
    """The run of wrapper versions after the loss, outermost first (add_layer 2, tag/skip 1, innermost 2 or 3)."""
    versions: list[int] = []
    while True:
        start = r.pos
        value = r.integer("a layer version")
        if value > 3:  # the input layer's name length: the run is over
            r.pos = start
            break
        if value < 1:
            r.pos = start
            raise r.not_dlib("a layer version (1..3)", str(value))
        versions.append(value)
    if not versions or versions[-1] not in (2, 3):
        raise r.not_dlib("the input add_layer (version 2 or 3) before the input layer",
                         f"versions {versions[-3:]}")
    return versions


def _read_input(r: _Reader) -> tuple[tuple[float, float, float], tuple[int, int]]:
    r.layer_name(_INPUTS)
    mean = (r.real("input mean"), r.real("input mean"), r.real("input mean"))
    return mean, (r.count("input rows"), r.count("input columns"))


def _resolve(found: list[tuple[tuple, Layer | None]], name: str) -> tuple[Layer, ...]:
    """Check the file's layers against FACE_NET; the layers with the template's tag/skip/add_prev IDs."""
    if len(found) != len(FACE_NET):
        raise DlibFormatError(f"{name} holds a {len(found)}-layer network, not dlib's {len(FACE_NET)}-layer "
                              f"face-recognition ResNet ({DAT_NAME})")
    layers: list[Layer] = []
    for index, (expected, (key, layer)) in enumerate(zip(FACE_NET, found, strict=True)):
        kind = expected[0]
        if kind in ("tag", "skip"):
            ok, layer = key == ("tag_or_skip",), (Tag(expected[1]) if kind == "tag" else Skip(expected[1]))
        elif kind == "add_prev":
            ok, layer = key == ("add_prev",), AddPrev(expected[1])
        else:
            ok = key == expected
        if not ok:
            raise DlibFormatError(f"{name}: layer {index} (forward order) is {key}, but dlib's face-recognition "
                                  f"ResNet ({DAT_NAME}) has {expected} there")
        assert layer is not None
        layers.append(layer)
    return tuple(layers)


def read_dlib_resnet(path: str | Path) -> DlibResNet:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (numpy only; a fraction of a second).

    Raises FileNotFoundError for a missing file and :class:`DlibFormatError` (a ValueError) for a truncated
    file, another dlib network, or a file that is not dlib's at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib model not found: {path} (expected {DAT_NAME}, {DAT_SIZE:,} bytes, from "
                                "the face_recognition_models package or http://dlib.net/files/)")
    data = path.read_bytes()
    r = _Reader(data, path.name)
    threshold = _read_loss(r)
    wrappers = _read_wrapper_versions(r)
    mean, size = _read_input(r)
    found = [_read_layer(r)]
    _skip_training_state(r, input_version=wrappers[-1])
    for version in reversed(wrappers[:-1]):  # innermost first = forward order
        if version == 1:
            found.append((("tag_or_skip",), None))
        else:
            found.append(_read_layer(r))
            _skip_training_state(r)
    layers = _resolve(found, path.name)
    if r.pos != len(data):
        raise DlibFormatError(f"{path.name} has {len(data) - r.pos:,} unexpected bytes after the network "
                              f"(from byte {r.pos:,}; the complete {DAT_NAME} is {DAT_SIZE:,} bytes)")
    return DlibResNet(layers=layers, mean_rgb=mean, input_size=size,
                      distance_threshold=threshold, source=path.name, sha256=hashlib.sha256(data).hexdigest())


def installed_model_path() -> Path | None:
    """The .dat in an installed ``face_recognition_models`` package, found without importing it (its
    ``__init__`` needs pkg_resources); None when the package or the file is missing."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / DAT_NAME
    return path if path.is_file() else None
