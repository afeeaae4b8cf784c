"""The runtimes behind an exported model: ONNX Runtime and OpenVINO agree, honour the metadata and the age
correction, and a missing backend or device is said clearly (or falls back where the user did not insist)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender.age_calibration import INTERVAL_METADATA_KEY, METADATA_KEY, IntervalCalibration
from agegender.inference import backends
from agegender.inference.accurate.stacked import StackedAgeGender
from agegender.inference.backends import BackendError, CpuInfo, choose_backend, open_session, set_metadata
from agegender.inference.onnx_model import OnnxAgeGender, shipped_model_path
from agegender.inference.paired import PairedAgeGender
from agegender.outputs import Decoded, decode
from agegender.oversample import flip_average
from agegender.preprocess import chips_to_input, resize_square

needs_openvino = pytest.mark.skipif("openvino" not in backends.available_backends(),
                                    reason="openvino is not installed (pip install 'agegender[openvino]')")


@pytest.fixture(scope="module")
def chips(utkface_dir: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(utkface_dir.glob("*.jpg"))[::200][:100]]


@needs_openvino
@pytest.mark.parametrize(("name", "max_age", "mean_age", "gender_flips"),
                         [("flagship", 1e-3, 1e-4, 0), ("flagship-int8", 2.5, 0.25, 3)])
def test_openvino_agrees_with_onnxruntime(chips: list[np.ndarray], name: str, max_age: float, mean_age: float,
                                          gender_flips: int) -> None:
    """float32 agrees to rounding where OpenVINO computes in f32; where it computes in bf16 (a CPU with AVX512-BF16
    or AMX: on 100 UTKFace chips at most 0.09 years apart for v14 on an EPYC, 0.23 for v18 on a Xeon with AMX) and
    for int8 (its own int8 kernels: v14 a mean 0.11 years apart, at most 0.87, one gender of 100 flipped; v18 on
    the Xeon 0.13, at most 1.74, none flipped) within the int8 tolerance (at most 2.5 years apart, as for the
    int8 file quantised again, `test_quantize.py`)."""
    ort_model = OnnxAgeGender(name, threads=1, backend="onnxruntime")
    ov_model = OnnxAgeGender(name, threads=1, backend="openvino")
    assert ov_model.metadata == ort_model.metadata and ov_model.age_calibration == ort_model.age_calibration
    assert ov_model.age_calibration is not None  # the shipped files carry a correction: both apply it
    assert ort_model.describe()["float_precision"] == "f32"
    if ov_model.describe()["float_precision"] == "bf16":
        max_age, mean_age, gender_flips = 2.5, 0.25, 3
    a, b = ort_model.predict(chips), ov_model.predict(chips)
    diff = np.abs(a.age - b.age)
    assert diff.max() <= max_age and diff.mean() <= mean_age
    assert int(((a.female_prob >= 0.5) != (b.female_prob >= 0.5)).sum()) <= gender_flips
    assert ov_model.describe()["backend"] == "openvino" and ort_model.describe()["backend"] == "onnxruntime"


@needs_openvino
def test_openvino_threads_are_not_pinned_to_cores(yunet_path: Path) -> None:
    """OpenVINO pins its threads by default; our models and the detector, compiled static or dynamic, do not, so
    that processes of one thread each (bulk workers, Ray actors) spread over the cores."""
    from agegender.inference.detector import FaceDetector

    model = OnnxAgeGender("flagship-int8", threads=1, backend="openvino")
    detector = FaceDetector(yunet_path, threads=1, runtime="openvino")
    for models in (model.session.models, detector._yunet.models):  # type: ignore[attr-defined]
        static = models._compile((2, 3, 64, 64) if models is model.session.models else (1, 640, 640, 3))
        for compiled in (models.dynamic, static):
            assert compiled.get_property("ENABLE_CPU_PINNING") is False
            assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


@needs_openvino
def test_openvino_batch_sizes_get_their_own_model_and_threads_infer_at_once(chips: list[np.ndarray],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch size seen often runs on a model compiled for it, with the same outputs as the model for any size;
    threads predicting at once each get their own request, and the same predictions as one thread."""
    monkeypatch.setattr(backends._OpenVinoSession, "STATIC_AFTER", 3)
    model = OnnxAgeGender("flagship-int8", threads=1, backend="openvino")
    models = model.session.models  # type: ignore[attr-defined]

    def predict(chips: list[np.ndarray]) -> Decoded:  # on the network's own graph, not predict's fused one
        return decode(model.outputs(chips))

    dynamic = [predict([c]) for c in chips[:2]]  # batch 2 (a face and its mirror): 2 of the 3 calls
    static = [predict([c]) for c in chips[:6]]
    assert list(models.compiled) == [(2, 3, 64, 64)] and (2, 3, 64, 64) not in models.seen
    for a, b in zip(dynamic, static, strict=False):
        assert np.allclose(a.age, b.age, atol=1e-4) and np.allclose(a.female_prob, b.female_prob, atol=1e-5)
    for run in (predict, model.predict):  # predict's fused graph on its own requests alike
        serial = [run([c]).age[0] for c in chips[:40]]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda c, run=run: run([c]).age[0], chips[:40]))
        assert np.allclose(serial, parallel, atol=1e-4)
    # the network's graph compiled for a face and its mirror, predict's fused graph took over that batch size
    assert model._fused[True].models.compiled_for((1, 3, 64, 64))  # type: ignore[attr-defined]


@needs_openvino
def test_prepare_compiles_for_a_batch_size_at_once(chips: list[np.ndarray]) -> None:
    """``prepare(faces)`` gives the first call of that batch size its own compiled model (OpenVINO), for the
    network's own graph (the faces and their mirrors) and for predict's fused one (the faces), the outputs
    unchanged; ONNX Runtime has nothing to prepare."""
    model = OnnxAgeGender("flagship-int8", threads=1, backend="openvino")
    models = model.session.models  # type: ignore[attr-defined]
    before = model.outputs(chips[:3])  # the dynamic model: a batch size seen once
    predicted = model.predict(chips[:3])
    # outputs, then predict: on the network's graph, the fused one not even made for a size not compiled for
    assert not models.compiled and models.seen[(6, 3, 64, 64)] == 2 and not model._fused
    model.prepare(3)
    model.prepare(1, flip=False)
    fused = model._fused[True].models  # type: ignore[attr-defined]
    assert list(models.compiled) == [(6, 3, 64, 64), (1, 3, 64, 64)] and (6, 3, 64, 64) not in models.seen
    assert list(fused.compiled) == [(3, 3, 64, 64)] and (3, 3, 64, 64) not in fused.seen
    assert list(model._fused[False].models.compiled) == [(1, 3, 64, 64)]  # type: ignore[attr-defined]
    compiled, fused_compiled = models.compiled[(6, 3, 64, 64)], fused.compiled[(3, 3, 64, 64)]
    after, predicted_after = model.outputs(chips[:3]), model.predict(chips[:3])
    assert models.compiled[(6, 3, 64, 64)] is compiled and fused.compiled[(3, 3, 64, 64)] is fused_compiled
    np.testing.assert_allclose(after["age_dist_logits"], before["age_dist_logits"], atol=1e-4)
    np.testing.assert_allclose(predicted_after.age, predicted.age, atol=1e-4)
    OnnxAgeGender("flagship-int8", backend="onnxruntime").prepare(3)


def test_flip_averages_each_face_with_its_own_mirror(chips: list[np.ndarray]) -> None:
    """Faces and mirrors run interleaved in one batch: each face's outputs are averaged with its own mirror's, as
    two separate passes would give them, and a batch predicts what its faces predict one at a time."""
    model = OnnxAgeGender("flagship", backend="onnxruntime")
    pixels = chips_to_input(chips[:5], model.config)
    expected = flip_average(model.raw(pixels), model.raw(np.ascontiguousarray(pixels[..., ::-1])))
    got = model.forward(pixels, flip=True)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=1e-5)
    batch = model.predict(chips[:5])
    one_by_one = [model.predict([chip]) for chip in chips[:5]]
    np.testing.assert_allclose(batch.age, [d.age[0] for d in one_by_one], atol=1e-4)
    np.testing.assert_allclose(batch.female_prob, [d.female_prob[0] for d in one_by_one], atol=1e-5)


def test_auto_picks_openvino_only_where_the_cpu_has_its_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "available_backends", lambda: ("onnxruntime", "openvino"))
    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo("Xeon", ("avx512f", "avx512_vnni", "amx_tile")))
    assert choose_backend("auto")[0] == "openvino"
    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo("EPYC", ("avx2",)))
    backend, why = choose_backend("auto")
    assert backend == "onnxruntime" and "AMX" in why
    assert choose_backend("auto", "cuda")[0] == "onnxruntime"


def test_a_missing_backend_is_an_error_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "available_backends", lambda: ("onnxruntime",))
    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo("Xeon", ("amx_tile",)))
    with pytest.raises(BackendError, match=r"openvino backend is not installed.*agegender\[openvino\]"):
        choose_backend("openvino")
    assert choose_backend("auto")[0] == "onnxruntime"
    with pytest.raises(BackendError, match="unknown backend"):
        choose_backend("tensorrt")


def test_cuda_asked_for_without_a_gpu_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_cuda_available", lambda: False)
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        OnnxAgeGender("flagship", device="cuda")
    assert OnnxAgeGender("flagship").describe()["device"] == "cpu"  # not insisted: the CPU


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        open_session(bad, "onnxruntime")
    if "openvino" in backends.available_backends():
        with pytest.raises(BackendError, match="OpenVINO cannot load"):
            open_session(bad, "openvino")


@needs_openvino
def test_a_graph_with_control_flow_runs_on_onnxruntime_under_auto_and_keeps_its_output_names(
        tmp_path: Path, chips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """The Levi-Hassner family's exports hold If nodes (its LRN): under auto, OpenVINO named the two-head net's
    gender output /model/heads/Squeeze_output_0 (predict failed an assertion) and gave the chained net's age the
    shape ()."""
    from agegender.export import export_onnx
    from agegender.models import create_model

    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo("Xeon", ("avx512f", "avx512_vnni", "amx_tile")))
    path = export_onnx(create_model("levi_hassner_chained").eval(), tmp_path / "chained.onnx")
    assert backends.control_flow(path) == ("If",) and backends.control_flow(tmp_path / "none.onnx") == ()
    auto = OnnxAgeGender(path)
    assert auto.session.backend == "onnxruntime" and auto.output_names == ["age_group_logits", "gender_logit"]
    decoded = auto.predict(chips[:3])
    assert decoded.group_probs.shape == (3, 8) and decoded.female_prob.shape == (3,)
    asked = OnnxAgeGender(path, backend="openvino")  # asked for by name: OpenVINO, under the file's own names
    assert asked.session.backend == "openvino" and asked.output_names == auto.output_names
    flagship = OnnxAgeGender("flagship")  # no control flow: OpenVINO where the CPU has its units
    assert backends.control_flow(flagship.path) == () and flagship.session.backend == "openvino"


def _assert_same_predictions(got: Decoded, expected: Decoded) -> None:
    """Fused float32 nodes against float64 NumPy: rounding apart, the same predictions."""
    for field in ("age", "age_low", "age_high"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.female_prob, expected.female_prob, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.group_probs, expected.group_probs, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.age_group, expected.age_group)


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_predict_runs_flip_decoding_and_calibrations_in_the_graph(chips: list[np.ndarray], backend: str) -> None:
    """The int8 default fuses its decoding: one inference from pixels to calibrated predictions (on OpenVINO once
    compiled for the batch size), the same as the network followed by NumPy, with and without flip, in a batch
    and one face at a time."""
    model = OnnxAgeGender("flagship-int8", threads=1, backend=backend)
    assert model.fused_why_not is None and model.interval_calibration is not None
    expected = {flip: model.calibrate(decode(model.outputs(chips[:20], flip))) for flip in (True, False)}
    unprepared = model.predict(chips[:20])
    if backend == "openvino":  # a batch size the fused graph is not compiled for: the network's graph and NumPy
        np.testing.assert_array_equal(unprepared.age, expected[True].age)
    for flip in (True, False):
        for faces in (20, 1):
            model.prepare(faces, flip)
    network_outputs = model.outputs
    model.outputs = None  # type: ignore[assignment,method-assign]  # predict must not need them now
    try:
        for flip in (True, False):
            _assert_same_predictions(model.predict(chips[:20], flip), expected[flip])
            for i, chip in enumerate(chips[:3]):
                single = model.predict([chip], flip)
                assert single.n == 1 and abs(single.age[0] - expected[flip].age[i]) < 1e-4
    finally:
        model.outputs = network_outputs  # type: ignore[method-assign]


def test_the_decoding_stays_in_numpy_where_it_cannot_be_fused(chips: list[np.ndarray], tmp_path: Path) -> None:
    """Each calibration is fused only in the forms the graph restates: with none, with the age correction alone,
    both; an interval by bands of the predicted age, a model that adds to the network's outputs and a float32 file
    computed in bf16 keep the NumPy path (and its exact outputs)."""
    path = Path(shutil.copy(shipped_model_path("flagship-int8"), tmp_path / "model.onnx"))
    shipped = OnnxAgeGender(path, backend="onnxruntime")
    hinge, precision = shipped.age_calibration, shipped.metadata["quantization"]
    assert hinge is not None
    for correction, interval in ((None, ""), (hinge.to_json(), "")):
        set_metadata(path, {METADATA_KEY: correction or "", INTERVAL_METADATA_KEY: interval})
        model = OnnxAgeGender(path, backend="onnxruntime")
        assert model.fused_why_not is None and model.interval_calibration is None
        assert (model.age_calibration is None) == (correction is None)
        _assert_same_predictions(model.predict(chips[:10]), model.calibrate(decode(model.outputs(chips[:10]))))
    by_prediction = IntervalCalibration(by="predicted_age", edges=(30.0,), scales=(0.8, 1.2),
                                        fitted_after=(hinge.knee, hinge.slope), precision=precision)
    set_metadata(path, {INTERVAL_METADATA_KEY: by_prediction.to_json()})
    model = OnnxAgeGender(path, backend="onnxruntime")
    assert model.interval_calibration == by_prediction
    assert model.fused_why_not == "its interval is calibrated by predicted age"
    expected = model.calibrate(decode(model.outputs(chips[:10])))
    np.testing.assert_array_equal(model.predict(chips[:10]).age_high, expected.age_high)
    assert StackedAgeGender.FUSE_DECODING is False and PairedAgeGender.FUSE_DECODING is False
    float32 = OnnxAgeGender("flagship", backend="openvino" if "openvino" in backends.available_backends()
                            else "onnxruntime")
    bf16 = float32.session.float_precision == "bf16"
    assert (float32.fused_why_not == "openvino computes this float32 file in bf16") if bf16 else \
        float32.fused_why_not is None


def test_a_file_whose_fused_graph_cannot_be_made_predicts_through_numpy(chips: list[np.ndarray], tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A file of another opset (here 18, where ReduceMean takes its axes as an input): the fused nodes do not fit
    it, so predict says so once and decodes in NumPy, with the network's own outputs."""
    import onnx

    proto = onnx.load(str(shipped_model_path("flagship-int8")))
    for opset in proto.opset_import:
        if opset.domain == "":
            opset.version = 18
    path = tmp_path / "opset18.onnx"
    onnx.save(proto, str(path))
    model = OnnxAgeGender(path, backend="onnxruntime")
    with caplog.at_level("WARNING", logger="agegender.inference.onnx_model"):
        got = model.predict(chips[:4])
    assert "decoding in NumPy: the fused graph could not be made" in caplog.text
    assert model.fused_why_not is not None and model.fused_why_not.startswith("the fused graph could not be made")
    np.testing.assert_array_equal(got.age, model.calibrate(decode(model.outputs(chips[:4]))).age)
    assert model.describe()["decoding"].startswith("NumPy (the fused graph could not be made")


def test_a_file_reads_its_chips_by_the_resampling_its_config_names(chips: list[np.ndarray], tmp_path: Path) -> None:
    """The resampling travels in the file's config, so that a model is served as it was trained (the shipped v18
    names "linear"); a file exported before the field existed (as v14) was trained on "area", and reads so."""
    linear = OnnxAgeGender("flagship", backend="onnxruntime")
    config = json.loads(linear.metadata["config"])
    assert config.pop("resampling") == "linear" == linear.config.resampling
    copy = shutil.copy(linear.path, tmp_path / "area.onnx")
    set_metadata(copy, {"config": json.dumps(config)})
    area = OnnxAgeGender(copy, backend="onnxruntime")
    assert area.config.resampling == "area"
    assert (linear.input_side, area.input_side) == (100, 72)  # faces decoded finely enough for what each reads
    expected = np.stack([resize_square(c, 72, resampling="linear")[4:68, 4:68, ::-1] for c in chips[:3]])
    np.testing.assert_array_equal(linear.network_input(chips[:3], flip=False), expected.transpose(0, 3, 1, 2))
    assert not np.array_equal(area.network_input(chips[:3], flip=False), expected.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(linear.predict(chips[:3]).age, area.predict(chips[:3]).age, atol=3.0)
