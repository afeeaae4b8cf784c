"""Runtimes that run an exported ONNX file: ONNX Runtime (the default install; CPU, or CUDA with
``onnxruntime-gpu``) and OpenVINO (the ``openvino`` extra, which reads ONNX directly).

:func:`open_session` gives the same small interface for each: the model's ``agegender.`` metadata, its input and
output names, and ``run``. ``backend="auto"`` picks by the machine: OpenVINO where it is installed and the CPU has
the matrix or VNNI units it uses (Intel AMX, AVX-512 VNNI or BF16), ONNX Runtime otherwise; :func:`cpu_info` says
what the CPU has. A graph with control flow (``If``, ``Loop``, ``Scan``: the Levi-Hassner family's exports hold
``If`` nodes) runs on ONNX Runtime under ``auto``: OpenVINO's CPU plugin gave the chained net an age output of
shape ``()`` instead of N x 8 (2026-12-07, openvino 2026.4.1). A backend or device that is missing raises
:class:`BackendError` when the user asked for it by name, and falls back to ONNX Runtime on the CPU (logged) when
they did not.

Each session says in ``float_precision`` what its float operations compute in: ``f32`` for ONNX Runtime, and for
OpenVINO what its CPU plugin chose: ``bf16`` on a CPU with AVX512-BF16 or AMX (its default there, and most of its
speed), ``f32`` elsewhere. A bf16 float32 model differs from ONNX Runtime's by rounding (on 100 UTKFace chips at
most 0.09 years on an AVX512-BF16 EPYC), as the int8 model does by its own kernels.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import platform
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["BACKENDS", "CPU_BF16_FEATURES", "DEVICES", "INPUT_NAME", "META_PREFIX", "BackendError", "CpuInfo",
           "ModelError", "OpenVinoModels", "Session", "available_backends", "choose_backend", "cpu_info",
           "open_session", "ort_session", "set_metadata"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino")
DEVICES = ("cpu", "cuda")
#: Prefix of every metadata entry agegender writes into an ONNX file (read here, written by :func:`set_metadata`).
META_PREFIX = "agegender."
#: The input of every exported model: ``N x 3 x S x S`` float32 RGB pixels (``agegender.export``).
INPUT_NAME = "pixels"
#: CPU features that OpenVINO's CPU plugin turns into its fastest int8/bf16 kernels.
OPENVINO_FEATURES = ("amx_tile", "amx_int8", "amx_bf16", "avx512_vnni", "avx512_bf16")
#: CPU features with native bfloat16 arithmetic (oneDNN's and OpenVINO's fast bfloat16 kernels need one of them).
CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


class ModelError(RuntimeError):
    """The model file is missing or is not an agegender export."""


class BackendError(ModelError):
    """A runtime cannot load the model, or a backend or device that was asked for is not available."""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and the features that matter for inference speed."""

    model: str
    features: tuple[str, ...]

    def has_any(self, names: tuple[str, ...]) -> bool:
        return any(name in self.features for name in names)

    def describe(self) -> str:
        return f"{self.model} ({', '.join(self.features) or 'no AVX-512, VNNI or AMX'})"


#: The features :func:`cpu_info` reports, in this order.
REPORTED_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                     "amx_bf16")


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """From ``/proc/cpuinfo`` on Linux; elsewhere the platform's processor string and no features."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return CpuInfo(model, tuple(f for f in REPORTED_FEATURES if f in flags))


def available_backends() -> tuple[str, ...]:
    """The installed runtimes, by name."""
    return tuple(name for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
                 if importlib.util.find_spec(module) is not None)


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(backend: str = "auto", device: str = "cpu") -> tuple[str, str]:
    """The backend to use on ``device`` and why. ``auto`` on a CPU: OpenVINO where it is installed and the CPU
    has one of :data:`OPENVINO_FEATURES`, else ONNX Runtime; on CUDA: ONNX Runtime's CUDA provider.

    >>> choose_backend("onnxruntime")
    ('onnxruntime', 'asked for')
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    installed = available_backends()
    if backend != "auto":
        if backend not in installed:
            extra = " (pip install 'agegender[openvino]')" if backend == "openvino" else ""
            raise BackendError(f"the {backend} backend is not installed{extra}")
        if backend == "openvino" and device == "cuda":
            raise BackendError("the openvino backend runs on the CPU here: use --backend onnxruntime for CUDA")
        return backend, "asked for"
    if device == "cuda":
        return "onnxruntime", "CUDA runs through ONNX Runtime's CUDA provider"
    cpu = cpu_info()
    if "openvino" in installed and cpu.has_any(OPENVINO_FEATURES):
        units = ", ".join(f for f in cpu.features if f in OPENVINO_FEATURES)
        return "openvino", f"OpenVINO is installed and the CPU has {units}"
    if "openvino" in installed:
        return "onnxruntime", "the CPU has no AMX, AVX-512 VNNI or BF16, where OpenVINO gains most"
    return "onnxruntime", "the default runtime (OpenVINO is not installed)"


class Session(Protocol):
    """A loaded model: what :func:`open_session` returns."""

    backend: str
    device: str
    float_precision: str
    metadata: dict[str, str]
    input_name: str
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Get ready for inputs of ``shape`` (OpenVINO compiles for it; ONNX Runtime has nothing to do)."""

    def ready_for(self, shape: tuple[int, ...]) -> bool:
        """Whether inputs of ``shape`` run at full speed: always on ONNX Runtime; on OpenVINO once a model is
        compiled for that shape (by :meth:`prepare`, or after enough runs of it)."""


def ort_session(path: Path | bytes, threads: int | None = None, device: str = "cpu") -> Any:
    """An ONNX Runtime ``InferenceSession`` of a file or a serialised model (CPU, or CUDA with the CPU as fallback
    for unsupported nodes); ``threads`` caps the intra-op threads. Raises BackendError if it cannot be loaded.

    Its worker threads sleep when idle instead of spinning: a spinning pool keeps the cores busy after each run
    and slows whatever runs next on them (YuNet's detection, dlib's network, the next session). On the 2-core
    development machine a 7-face photo went from 16.8 to 11.3 ms end to end, for 0.3 ms more per face when chips
    alone are predicted one at a time (``python scripts/measure/ort_spinning.py --accurate`` measures the trade)."""
    import onnxruntime as ort

    if isinstance(path, Path) and not path.is_file():
        raise BackendError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own untyped errors
        what = "the serialised model" if isinstance(path, bytes) else str(path)
        raise BackendError(f"{what} is not a loadable ONNX model: {err}") from err


class _OrtSession:
    backend = "onnxruntime"
    float_precision = "f32"

    def __init__(self, path: Path, threads: int | None, device: str, graph: bytes | None = None) -> None:
        if graph is not None and not path.is_file():
            raise BackendError(f"model file not found: {path}")
        self.session = ort_session(path if graph is None else graph, threads, device)
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, values, strict=True))

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Nothing: ONNX Runtime plans for any shape alike."""

    def ready_for(self, shape: tuple[int, ...]) -> bool:
        return True


def openvino_config(threads: int | None) -> dict[str, Any]:
    """OpenVINO's CPU settings for every model of this package: latency first, at most ``threads`` threads (None:
    OpenVINO's choice), and the threads not pinned to cores. OpenVINO pins them by default, and processes of one
    thread each (bulk workers, Ray actors) then all run on the same core: two such processes predicting 12 MP
    photos took 85-94 ms each per photo pinned and 57-60 unpinned, on a 2-core EPYC (one-off timing, 2026-12-06;
    ``scripts/measure/cpu_per_photo.py --processes 2`` measures it: docs/photos.md, "The bulk path")."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoModels:
    """An ONNX file on OpenVINO's CPU plugin (:func:`openvino_config`, ``threads``), compiled for any input shape
    (``dynamic``), and for each shape seen ``static_after`` times compiled for that shape alone (the ``keep`` most
    recent kept): a static model runs a little faster (on a quiet 2-core EPYC, one measurement each: YuNet at 1280 x
    960 16.2 ms against 18.4; the flagship at batch 2 0.375 ms against 0.405) for a compilation paid once (about 250
    and 120 ms). Each thread runs its own inference requests, so threads infer at once. Raises OpenVINO's own
    errors."""

    def __init__(self, path: Path, threads: int | None, dynamic_shape: tuple[int, ...] | None = None,
                 static_after: int = 50, keep: int = 8, graph: bytes | None = None) -> None:
        import openvino as ov

        self.core, self.config = ov.Core(), openvino_config(threads)
        self.static_after, self.keep = static_after, keep
        #: The model as read (its metadata, inputs and outputs; ``graph``: a serialised ONNX model in place of the
        #: file's); compiled models are made from copies of it. Read by the ONNX front end alone:
        #: ``Core.read_model`` tries every front end, and the TensorFlow one prints its parse errors for a file that
        #: is not ONNX.
        from openvino.frontend import FrontEndManager

        onnx = FrontEndManager().load_by_framework("onnx")
        self.model = onnx.convert(onnx.load(str(path) if graph is None else io.BytesIO(graph)))
        self.dynamic = self._compile(dynamic_shape)
        self.compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # static models, the most recent last
        self.seen: OrderedDict[tuple[int, ...], int] = OrderedDict()  # shapes without one yet: how often seen
        self._compiling = threading.Lock()
        self._local = threading.local()

    def _compile(self, shape: tuple[int, ...] | None) -> Any:
        model = self.model.clone()
        if shape is not None:
            model.reshape({model.inputs[0]: list(shape)})
        return self.core.compile_model(model, "CPU", self.config)

    def _model_for(self, shape: tuple[int, ...]) -> Any:
        """The compiled model ``shape`` runs on: its own once seen often enough, else the dynamic one."""
        with self._compiling:
            compiled = self.compiled.pop(shape, None)
            if compiled is None:
                count = self.seen.pop(shape, 0) + 1
                if count < self.static_after:
                    self.seen[shape] = count
                    while len(self.seen) > 64 * self.keep:
                        self.seen.popitem(last=False)
                    return self.dynamic
                log.debug("OpenVINO: compiling %s for input shape %s", self.model.get_friendly_name(), shape)
                compiled = self._compile(shape)
            self._keep(shape, compiled)
            return compiled

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Compile for ``shape`` now, as after ``static_after`` calls of it (a server or a benchmark that knows
        its batch size, so that its first calls run as fast as the later ones)."""
        with self._compiling:
            self.seen.pop(shape, None)
            compiled = self.compiled.pop(shape, None)
            self._keep(shape, self._compile(shape) if compiled is None else compiled)

    def compiled_for(self, shape: tuple[int, ...]) -> bool:
        """Whether a model compiled for ``shape`` alone is kept."""
        with self._compiling:
            return shape in self.compiled

    def _keep(self, shape: tuple[int, ...], compiled: Any) -> None:
        """Keep ``compiled`` for ``shape`` as the most recent, dropping the oldest beyond ``keep``."""
        self.compiled[shape] = compiled
        while len(self.compiled) > self.keep:
            self.compiled.popitem(last=False)

    def request(self, shape: tuple[int, ...]) -> Any:
        """This thread's inference request for an input of ``shape``."""
        compiled = self._model_for(shape)
        requests = self._local.__dict__.setdefault("requests", {})
        key = None if compiled is self.dynamic else shape
        request = requests.get(key)
        if request is None or request[0] is not compiled:
            requests.pop(key, None)
            while len(requests) > self.keep:
                requests.pop(next(k for k in requests if k is not None))
            requests[key] = request = (compiled, compiled.create_infer_request())
        return request[1]

    def infer(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The outputs for one input, in the model's output order (copies: the request's buffers are reused).
        Shared, not copied, in and out: at batch 1 (a face and its mirror) the copies cost 0.18 of 0.62 ms on a
        2-core EPYC."""
        pixels = np.ascontiguousarray(pixels)
        request = self.request(pixels.shape)
        request.infer({0: pixels}, share_inputs=True, share_outputs=True)
        return [np.array(request.get_output_tensor(i).data) for i in range(len(self.dynamic.outputs))]


class _OpenVinoSession:
    backend = "openvino"
    device = "cpu"
    #: Calls of one batch size before it gets its own compiled model: its 120 ms are paid back after about 4,000
    #: calls (0.03 ms each at batch 2), so only a long collection or a server pays them.
    STATIC_AFTER = 1000

    def __init__(self, path: Path, threads: int | None, graph: bytes | None = None) -> None:
        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        try:
            self.models = OpenVinoModels(path, threads, static_after=self.STATIC_AFTER, graph=graph)
        except Exception as err:  # OpenVINO raises its own untyped errors
            raise BackendError(f"OpenVINO cannot load {path}: {str(err).strip().splitlines()[-1]}") from err
        info = self.models.model.get_rt_info()  # ONNX metadata_props arrive under "framework"
        framework = info["framework"] if "framework" in info else {}
        self.metadata = {k[len(META_PREFIX):]: v.astype(str) for k, v in framework.items() if k.startswith(META_PREFIX)}
        compiled = self.models.dynamic
        self.float_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.input_name = compiled.inputs[0].get_any_name()
        # as the ONNX file names them: compiling can rename an output that an If node makes (an internal name
        # such as /model/heads/Squeeze_output_0 came out for gender_logit)
        self.output_names = [o.get_any_name() for o in self.models.model.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.models.infer(feeds[self.input_name]), strict=True))

    def prepare(self, shape: tuple[int, ...]) -> None:
        self.models.prepare(shape)

    def ready_for(self, shape: tuple[int, ...]) -> bool:
        return self.models.compiled_for(shape)


@lru_cache(maxsize=32)
def _control_flow(path: Path, size: int, mtime_ns: int) -> tuple[str, ...]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # not ONNX: the runtime that loads it says so
        return ()
    return tuple(sorted({node.op_type for node in graph.node} & {"If", "Loop", "Scan"}))


def control_flow(path: Path) -> tuple[str, ...]:
    """The control-flow operators (``If``, ``Loop``, ``Scan``) in the main graph of the ONNX file at ``path``."""
    try:
        stat = path.stat()
    except OSError:
        return ()
    return _control_flow(path, stat.st_size, stat.st_mtime_ns)


#: First bytes of the files ``torch.save`` writes: a zip archive, or (before PyTorch 1.6) a pickle.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` starts as a PyTorch checkpoint does (an ONNX file starts with a protobuf field tag)."""
    try:
        with path.open("rb") as file:
            return file.read(4).startswith(_TORCH_MAGIC)
    except OSError:
        return False


def open_session(path: str | Path, backend: str = "auto", device: str | None = None, threads: int | None = None,
                 graph: bytes | None = None) -> Session:
    """Load ``path`` with ``backend`` on ``device``: ``cpu``, ``cuda`` (an error when CUDA is missing), or
    ``None`` for CUDA where ONNX Runtime has it and the backend is not OpenVINO, else the CPU. See the module doc
    for ``auto``. A PyTorch checkpoint raises :class:`ModelError` saying how to export it. ``graph``: a serialised
    ONNX model made from the file's (e.g. :func:`agegender.inference.fused.fused_graph`), run in its place."""
    path = Path(path)
    if _torch_checkpoint(path):
        raise ModelError(f"{path} is a PyTorch checkpoint, not an ONNX model: export it first "
                         f"(`agegender export {path} model.onnx`), then give the .onnx file")
    if device is None:
        device = "cuda" if backend != "openvino" and available_backends()[:1] == ("onnxruntime",) \
            and _cuda_available() else "cpu"
    elif device == "cuda" and not _cuda_available():
        raise BackendError("device cuda: CUDA is not available to ONNX Runtime (install onnxruntime-gpu, and "
                           "run on a machine with an NVIDIA GPU and its driver)")
    chosen, why = choose_backend(backend, device)
    flow = control_flow(path) if backend == "auto" and chosen == "openvino" else ()
    if flow:
        chosen, why = "onnxruntime", f"{path.name} holds control flow ({', '.join(flow)}), which OpenVINO's CPU " \
                                     "plugin does not always run right"
    log.debug("backend %s on %s: %s", chosen, device, why)
    if chosen == "openvino":
        return _OpenVinoSession(path, threads, graph)
    return _OrtSession(path, threads, device, graph)


def set_metadata(path: str | Path, meta: Mapping[str, str]) -> Path:
    """Store ``meta`` in an ONNX file's metadata, each key under the ``agegender.`` prefix (replacing an entry
    of the same key). The file is replaced at once, never left half-written."""
    import onnx

    proto = onnx.load(str(path))
    keys = {META_PREFIX + key for key in meta}
    kept = [entry for entry in proto.metadata_props if entry.key not in keys]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    path = Path(path)
    tmp = path.with_name(f".{path.name}.meta.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path
