"""Face detection with five landmarks: YuNet, no torch needed, run by OpenVINO or ONNX Runtime
(:func:`detector_runtime` picks; both faster than OpenCV's DNN module on the same file) or by OpenCV itself
(``cv2.FaceDetectorYN``).

OpenVINO and ONNX Runtime run the network and this module does what ``cv2.FaceDetectorYN`` does around it: the
image padded to a multiple of 32 at its bottom and right, scores ``sqrt(cls * obj)``, boxes and landmarks decoded
per stride (8, 16, 32) and the same non-maximum suppression; tests check they give OpenCV's faces.

Weights are found by :func:`locate_weights`, in this order: an explicit ``model_path``, the environment
variable ``AGEGENDER_YUNET``, the agegender cache (see ``agegender.artifacts``), else a one-time
download of OpenCV Zoo's ``face_detection_yunet_2023mar.onnx`` into that cache, verified by sha256.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from agegender.artifacts import RemoteFile, WeightsError, artifact
from agegender.inference.backends import (
    CPU_BF16_FEATURES,
    BackendError,
    OpenVinoModels,
    available_backends,
    cpu_info,
    ort_session,
)

__all__ = [
    "DETECTOR_RUNTIMES",
    "YUNET_OUTPUTS",
    "DETECT_SIZE",
    "MIN_DETECT_SIZE",
    "YUNET_FILENAME",
    "YUNET_SHA256",
    "YUNET_URL",
    "LANDMARK_NAMES",
    "Detection",
    "FaceDetector",
    "WeightsError",
    "detector_runtime",
    "locate_weights",
]

LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")
"""Landmark order (YuNet's). "Right" is the subject's right, i.e. the image-left side of a frontal face."""

log = logging.getLogger(__name__)

YUNET = cast(RemoteFile, artifact("yunet"))
# The longer side photos are detected at (larger photos are downscaled, a JPEG decoded at the DCT scale that holds
# it). 640 (YuNet's own input size) was about twice as fast on 12 MP photos and found fewer of their smaller faces
# (docs/photos.md). MIN_DETECT_SIZE: the smallest accepted.
DETECT_SIZE = 1280
MIN_DETECT_SIZE = 32
#: What runs YuNet: ``auto`` (:func:`detector_runtime`), ONNX Runtime, OpenVINO or OpenCV's DNN module.
DETECTOR_RUNTIMES = ("auto", "onnxruntime", "openvino", "opencv")
YUNET_FILENAME, YUNET_URL, YUNET_SHA256 = YUNET.filename, YUNET.url, YUNET.sha256


def locate_weights(model_path: str | os.PathLike | None = None) -> Path:
    """Return the path of the YuNet ONNX file, downloading it into the cache if needed.

    An explicit ``model_path`` or ``$AGEGENDER_YUNET`` is used as given (any YuNet variant works) and
    must exist. The cached file is checked against :data:`YUNET_SHA256` and fetched again if it does
    not match. Raises :class:`WeightsError` when nothing usable can be found or downloaded.
    """
    return YUNET.locate(model_path)


@dataclass(frozen=True, eq=False)
class Detection:
    """One face, in original image pixel coordinates.

    ``box`` is ``(x, y, w, h)`` (top-left corner and size; it may extend past the image border),
    ``score`` the detector confidence in [0, 1], and ``landmarks`` a read-only float32 ``(5, 2)`` array
    of ``(x, y)`` points in YuNet's order: right eye, left eye, nose tip, right mouth corner, left mouth
    corner, where "right" is the subject's right (image-left on a frontal face). See ``LANDMARK_NAMES``.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"box": [x, y, w, h], "score": s, "landmarks": {name: [x, y]}}``."""
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": {
                name: [round(float(x), 2), round(float(y), 2)]
                for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks, strict=True)
            },
        }


#: YuNet's strides (the downsampling of its three heads), and its outputs in its files' order: scores, objectness,
#: boxes and landmarks, each per stride.
YUNET_STRIDES = (8, 16, 32)
YUNET_OUTPUTS = tuple(f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in YUNET_STRIDES)


def _refusal(path: Path, runtime: str, why: str) -> WeightsError:
    return WeightsError(f"{runtime} could not load {path} as a YuNet ONNX model ({why}). {YUNET.fix_hint()}")


def _padded(image: np.ndarray) -> np.ndarray:
    """A BGR ``H x W x 3`` uint8 image as YuNet's input here: ``1 x H' x W' x 3`` uint8, zero-padded at the bottom
    and right to multiples of 32 (the graph makes its float planes: :func:`_uint8_graph`)."""
    height, width = image.shape[:2]
    return cv2.copyMakeBorder(image, 0, -height % 32, 0, -width % 32, cv2.BORDER_CONSTANT, value=0)[None]


def _uint8_graph(path: Path, runtime: str) -> bytes:
    """YuNet's file as a serialised ONNX model of any input size that reads :func:`_padded`'s uint8 image and casts
    and transposes it to the network's float planes itself. Against building the float32 planes in NumPy: the same
    outputs, and on OpenVINO 18.8-20.2 instead of 22.5-24.6 ms to detect at 1280 x 960 (the working size of a 12 MP
    photo; a 2-core Xeon with AMX, three alternated rounds: ``docs/logs/yunet_uint8_input.md``): a quarter of the
    bytes to hand over, and no NumPy pass over them."""
    import onnx
    from onnx import TensorProto, helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's untyped errors
        raise _refusal(path, runtime, str(exc)) from exc
    graph = model.graph
    if tuple(o.name for o in graph.output) != YUNET_OUTPUTS:
        raise _refusal(path, runtime,
                       f"its outputs are {', '.join(o.name for o in graph.output) or 'none'}, not YuNet's")
    name = graph.input[0].name
    planes, floats = f"{name}/planes", f"{name}/float"
    for node in graph.node:
        node.input[:] = [planes if x == name else x for x in node.input]
    graph.node.insert(0, helper.make_node("Transpose", [floats], [planes], perm=[0, 3, 1, 2]))
    graph.node.insert(0, helper.make_node("Cast", [name], [floats], to=TensorProto.FLOAT))
    graph.input.remove(graph.input[0])
    graph.input.insert(0, helper.make_tensor_value_info(name, TensorProto.UINT8, [1, "height", "width", 3]))
    for out in graph.output:
        out.type.tensor_type.shape.dim[1].Clear()
    del graph.value_info[:]
    return model.SerializeToString()


class _YuNet:
    """YuNet's network with ``cv2.FaceDetectorYN``'s pre- and post-processing (module doc); a subclass runs the
    network. ``detect`` returns ``FaceDetectorYN``'s ``(N, 15)`` rows."""

    def __init__(self, score_threshold: float, nms_threshold: float, top_k: int) -> None:
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k

    def _run(self, padded: np.ndarray) -> list[np.ndarray]:
        """The network's outputs (:data:`YUNET_OUTPUTS`' order) for a :func:`_padded` image."""
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> np.ndarray:
        padded = _padded(image)
        outputs = self._run(padded)
        cls, obj, bbox, kps = (outputs[i:i + 3] for i in range(0, 12, 3))
        faces = [self._decode(stride, padded.shape[2] // stride, c, o, b, k)
                 for stride, c, o, b, k in zip(YUNET_STRIDES, cls, obj, bbox, kps, strict=True)]
        rows = np.concatenate(faces)
        if len(rows) > 1:
            keep = cv2.dnn.NMSBoxes(rows[:, :4].astype(np.int32).astype(float).tolist(), rows[:, 14].tolist(),
                                    self.score_threshold, self.nms_threshold, top_k=self.top_k)
            rows = rows[np.asarray(keep, dtype=np.int64).reshape(-1)]
        return rows

    def _decode(self, stride: int, columns: int, cls: np.ndarray, obj: np.ndarray, bbox: np.ndarray,
                kps: np.ndarray) -> np.ndarray:
        """The rows of one stride's cells that score at least the threshold."""
        score = np.sqrt(np.clip(cls.reshape(-1), 0, 1) * np.clip(obj.reshape(-1), 0, 1))
        cells = np.flatnonzero(score >= self.score_threshold)
        col, row = (cells % columns).astype(np.float32), (cells // columns).astype(np.float32)
        box, points = bbox.reshape(-1, 4)[cells], kps.reshape(-1, 5, 2)[cells]
        size = np.exp(box[:, 2:]) * stride
        centre = (np.stack([col, row], axis=1) + box[:, :2]) * stride
        points = (points + np.stack([col, row], axis=1)[:, None, :]) * stride
        return np.concatenate([centre - size / 2, size, points.reshape(-1, 10), score[cells, None]],
                              axis=1).astype(np.float32)


class _OrtYuNet(_YuNet):
    """YuNet on ONNX Runtime, any input size (:func:`_uint8_graph`)."""

    def __init__(self, path: Path, score_threshold: float, nms_threshold: float, top_k: int,
                 threads: int | None) -> None:
        super().__init__(score_threshold, nms_threshold, top_k)
        try:
            self.session = ort_session(_uint8_graph(path, "ONNX Runtime"), threads)
        except BackendError as exc:
            raise _refusal(path, "ONNX Runtime", str(exc)) from exc
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, padded: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: padded}))


class _OpenVinoYuNet(_YuNet):
    """YuNet on OpenVINO (:class:`~agegender.inference.backends.OpenVinoModels`, :func:`_uint8_graph`): one model
    compiled for any input size serves every image; a padded size seen :data:`STATIC_AFTER` times gets a model
    compiled for it alone (the :data:`SHAPES` most recent kept), whose compilation a collection's common sizes pay
    back after about a hundred photos, while a folder of mixed sizes never waits for one. Its float operations run in
    bf16 where the CPU has them (OpenVINO's default there). Threads detect at once."""

    SHAPES = 8
    STATIC_AFTER = 50

    def __init__(self, path: Path, score_threshold: float, nms_threshold: float, top_k: int,
                 threads: int | None) -> None:
        super().__init__(score_threshold, nms_threshold, top_k)
        graph = _uint8_graph(path, "OpenVINO")
        try:
            self.models = OpenVinoModels(path, threads, (1, -1, -1, 3), self.STATIC_AFTER, self.SHAPES, graph)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise _refusal(path, "OpenVINO", str(exc)) from exc

    def _run(self, padded: np.ndarray) -> list[np.ndarray]:
        return self.models.infer(padded)


def detector_runtime(runtime: str = "auto") -> tuple[str, str]:
    """What runs YuNet and why: ``auto`` is OpenVINO where it is installed and the CPU computes in bfloat16
    (there 16-18 ms against ONNX Runtime's 30 at 1280 x 960 on a 2-core EPYC, 2 threads), else ONNX Runtime;
    a runtime named is checked to be installed."""
    if runtime not in DETECTOR_RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(DETECTOR_RUNTIMES)}, got {runtime!r}")
    if runtime == "openvino" and "openvino" not in available_backends():
        raise BackendError("the openvino detector runtime is not installed (pip install 'agegender[openvino]')")
    if runtime != "auto":
        return runtime, "asked for"
    if "openvino" in available_backends() and cpu_info().has_any(CPU_BF16_FEATURES):
        return "openvino", "OpenVINO is installed and the CPU computes in bfloat16"
    return "onnxruntime", "ONNX Runtime (OpenVINO only where it is installed and the CPU has bfloat16)"


class FaceDetector:
    """YuNet face detector returning boxes, scores and five landmarks.

    Images whose longer side exceeds ``max_side`` are downscaled for detection (``None`` disables
    this); results are mapped back to original coordinates. Faces whose shorter box side is below
    ``min_face`` original pixels are dropped. ``score_threshold``, ``nms_threshold`` and ``top_k`` are
    ``cv2.FaceDetectorYN``'s. ``runtime``: one of :data:`DETECTOR_RUNTIMES` (:func:`detector_runtime`; the one
    chosen is ``self.runtime``); ``threads`` caps ONNX Runtime's or OpenVINO's threads (OpenCV's follow
    ``cv2.setNumThreads``).

    Thread safety: one instance may be shared by threads (e.g. a web server); with OpenCV, :meth:`detect` calls
    are serialised by an internal lock because the OpenCV object is stateful (ONNX Runtime and OpenVINO run them
    at once).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int | None = DETECT_SIZE,
        min_face: float = 20.0,
        runtime: str = "auto",
        threads: int | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must be in [0, 1]")
        if max_side is not None and max_side < MIN_DETECT_SIZE:
            raise ValueError(f"max_side must be >= {MIN_DETECT_SIZE} or None, got {max_side}")
        runtime, why = detector_runtime(runtime)
        self.model_path = locate_weights(model_path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.max_side = max_side
        self.min_face = min_face
        self.runtime = runtime
        log.debug("YuNet on %s: %s", runtime, why)
        self._lock = threading.Lock()
        if runtime != "opencv":
            network = _OrtYuNet if runtime == "onnxruntime" else _OpenVinoYuNet
            self._yunet = network(self.model_path, score_threshold, nms_threshold, top_k, threads)
            return
        try:
            # OpenCV 5 warns on every load that its new graph engine ignores the target: noise for a user.
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            self._net = cv2.FaceDetectorYN.create(
                str(self.model_path), "", (320, 320), score_threshold, nms_threshold, top_k
            )
        except cv2.error as exc:
            raise WeightsError(
                f"OpenCV could not load {self.model_path} as a YuNet ONNX model ({exc}). {YUNET.fix_hint()}"
            ) from exc

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Detect faces in a BGR ``uint8`` ``(H, W, 3)`` image; highest score first.

        Use :func:`agegender.images.load_image` to get such an array from a file or bytes.
        """
        if (
            not isinstance(image_bgr, np.ndarray)
            or image_bgr.dtype != np.uint8
            or image_bgr.ndim != 3
            or (image_bgr.shape[2] != 3)
        ):
            got = (
                f"{image_bgr.dtype} array of shape {image_bgr.shape}"
                if isinstance(image_bgr, np.ndarray)
                else type(image_bgr).__name__
            )
            raise ValueError(f"detect() needs a BGR uint8 HxWx3 array, got {got}; use load_image() first")
        height, width = image_bgr.shape[:2]
        if height == 0 or width == 0:
            return []
        if self.max_side is not None and max(height, width) > self.max_side:
            factor = self.max_side / max(height, width)
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            # Bilinear below a 2x reduction (all a reduced JPEG decode leaves): 6x faster than area averaging
            # from a 12 MP photo's 1/2 decode, and as accurate on 1,200 labelled faces in 12 MP photos
            # (docs/logs/photo_scale.md); area averaging from 2x, where bilinear would skip pixels.
            interpolation = cv2.INTER_LINEAR if factor > 0.5 else cv2.INTER_AREA
            image_bgr = cv2.resize(image_bgr, size, interpolation=interpolation)
        image_bgr = np.ascontiguousarray(image_bgr)
        scale = np.array([image_bgr.shape[1] / width, image_bgr.shape[0] / height], dtype=np.float32)
        if self.runtime != "opencv":
            faces = self._yunet.detect(image_bgr)
        else:
            with self._lock:  # OpenCV's detector is stateful: one call at a time
                self._net.setInputSize((image_bgr.shape[1], image_bgr.shape[0]))
                faces = self._net.detect(image_bgr)[1]
        if faces is None:
            return []
        detections = []
        for row in faces:
            x, y, w, h = (float(v) for v in (row[:4].reshape(2, 2) / scale).ravel())
            if min(w, h) < self.min_face:
                continue
            landmarks = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            landmarks.flags.writeable = False
            detections.append(Detection(box=(x, y, w, h), score=float(row[14]), landmarks=landmarks))
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections
