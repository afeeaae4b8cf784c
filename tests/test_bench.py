"""``agegender bench``: the timer, the peer adapters on real UTKFace test chips, a small end-to-end run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from agegender.benchmark.peers import (
    CHIP_FACE_CENTER,
    CHIP_FACE_SIDE,
    CydralDlib,
    FaceModel,
    OpenVinoRetail0013,
    dlib_chip_template,
    load_peers,
    square_crop,
)
from agegender.benchmark.run import BenchOptions, load_models, subset, utkface_test
from agegender.benchmark.timing import Timing, per_face_latency, time_call
from agegender.cli import main
from agegender.data.records import FaceRecord
from agegender.images import load_image
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.reporting.metrics import exact_accuracy, mae
from tests.conftest import shared_path

N_CHIPS = 100


# --- timer ------------------------------------------------------------------------------------------------

def test_time_call_measures_a_known_sleep() -> None:
    calls = []
    stats = time_call(lambda: (calls.append(1), time.sleep(0.01)), warmup=2, runs=5, min_seconds=0)
    assert len(calls) == 7 and stats.runs == 5
    assert 10.0 <= stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.median_ms < 40.0  # generous: the machine may be busy


def test_time_call_runs_for_min_seconds() -> None:
    stats = time_call(lambda: time.sleep(0.005), warmup=0, runs=1, min_seconds=0.1)
    assert stats.runs >= 10


def test_per_face_latency_divides_by_batch_and_cycles_chips() -> None:
    sizes = []

    def predict(chips: list[np.ndarray]) -> None:
        sizes.append(len(chips))
        time.sleep(0.02)

    stats = per_face_latency(predict, [np.zeros((2, 2, 3), np.uint8)] * 3, batch=4, warmup=1, runs=3,
                             min_seconds=0)
    assert set(sizes) == {4}
    assert 5.0 <= stats.median_ms < 20.0  # 20 ms per call / 4 faces


def test_timing_statistics() -> None:
    stats = Timing.from_seconds([0.004, 0.001, 0.003, 0.002, 0.010])
    assert stats.median_ms == pytest.approx(3.0) and stats.min_ms == pytest.approx(1.0)
    assert stats.p90_ms == pytest.approx(7.6)
    with pytest.raises(ValueError):
        Timing.from_seconds([])


# --- peer adapters ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peers_dir() -> Path:
    """The peer models folder in the shared assets."""
    return shared_path("peers")


@pytest.fixture(scope="module")
def test_chips(utkface_dir: Path) -> tuple[list[FaceRecord], list[np.ndarray]]:
    """A fixed random subset of our UTKFace test split, with its chips."""
    records = subset(utkface_test(utkface_dir), N_CHIPS)
    return records, [load_image(r.path) for r in records]


def _check_sane(model: FaceModel, records: list[FaceRecord], chips: list[np.ndarray], expected_mae: float,
                expected_gender: float) -> None:
    """Plausible outputs, and accuracy past the midpoint between the peer's measured figure (``expected_*``, on the
    full test split) and what a constant predictor scores on these chips, so that a broken adapter that answers
    one age and one gender fails."""
    decoded = model.predict(chips)
    assert decoded.age.shape == (len(chips),) and np.isfinite(decoded.age).all()
    assert (decoded.age >= 0).all() and (decoded.age <= 100).all()
    assert decoded.female_prob is not None
    assert ((decoded.female_prob >= 0) & (decoded.female_prob <= 1)).all()
    assert np.allclose(decoded.group_probs.sum(axis=1), 1.0)
    ages, genders = [r.age for r in records], [r.gender for r in records]
    constant_mae = mae(np.full(len(ages), np.median(ages)), ages)  # the best constant age
    constant_gender = max(np.mean(genders), 1 - np.mean(genders))  # always the majority gender
    max_mae, min_gender = (expected_mae + constant_mae) / 2, (expected_gender + constant_gender) / 2
    assert expected_mae < constant_mae and expected_gender > constant_gender
    age_error = mae(decoded.age, ages)
    gender_accuracy = exact_accuracy((decoded.female_prob >= 0.5).astype(int), genders)
    assert age_error < max_mae, f"{model.name}: age MAE {age_error:.2f} (constant {constant_mae:.2f})"
    assert gender_accuracy > min_gender, f"{model.name}: gender accuracy {gender_accuracy:.2f}"


def test_cydral_on_utkface_test_chips(peers_dir: Path, test_chips: tuple[list, list]) -> None:
    # Measured on the full test split: MAE about 6, gender about 93%.
    _check_sane(CydralDlib(peers_dir / CydralDlib.folder_name, threads=1), *test_chips, expected_mae=6.0,
                expected_gender=0.93)


def test_openvino_on_utkface_test_chips(peers_dir: Path, test_chips: tuple[list, list]) -> None:
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    # Not made for children (UTKFace has many). Full test split: MAE about 10, gender about 90%.
    _check_sane(OpenVinoRetail0013(peers_dir / OpenVinoRetail0013.folder_name, threads=1), *test_chips,
                expected_mae=10.0, expected_gender=0.90)


def test_one_chip_predicts_like_a_batch(peers_dir: Path, test_chips: tuple[list, list]) -> None:
    models, _ = load_peers(peers_dir, threads=1)
    chips = test_chips[1][:5]
    for model in models:
        batch, single = model.predict(chips), model.predict(chips[2:3])
        assert single.age[0] == pytest.approx(batch.age[2], abs=1e-3)


def test_missing_peers_are_reported(tmp_path: Path) -> None:
    models, unavailable = load_peers(tmp_path)
    assert models == []
    assert set(unavailable) == {CydralDlib.name, OpenVinoRetail0013.name}
    assert all("not found" in reason for reason in unavailable.values())


def test_peer_crop_geometry() -> None:
    eyes = dlib_chip_template()[:2]
    assert eyes[0, 1] == pytest.approx(eyes[1, 1])  # level eyes
    assert (eyes[1, 0] - eyes[0, 0]) / 200 == pytest.approx((0.7547 - 0.2255) / 1.4)
    chip = np.arange(200 * 200 * 3, dtype=np.uint8).reshape(200, 200, 3)
    assert square_crop(chip, (100, 100), 200, 200).tolist() == chip.tolist()
    big = square_crop(chip, CHIP_FACE_CENTER, CHIP_FACE_SIDE * 1.2, 62)  # past the chip: edge repeated
    assert big.shape == (62, 62, 3)


def test_bench_defaults_to_both_shipped_models() -> None:
    models, unavailable = load_models(BenchOptions(threads=1))
    assert unavailable == {} and [m.name for m in models] == [
        "agegender flagship int8", "agegender flagship int8, no flip",
        "agegender flagship fp32", "agegender flagship fp32, no flip"]


# --- the whole bench --------------------------------------------------------------------------------------

def test_bench_cli_small_run(tmp_path: Path, model_path: Path, shared_dir: Path, peers_dir: Path,
                             utkface_dir: Path, yunet_path: Path, photos_dir: Path) -> None:
    table = tmp_path / "table.md"
    fold = shared_dir / "data" / "adience_folds" / "original_txt_files" / "fold_0_data.txt"
    sample = shared_dir / "data" / "adience_sample"
    code = main(["bench", "--model", str(model_path), "--peers", str(peers_dir),
                 "--utkface", str(utkface_dir), "--adience-sample", str(sample), "--adience-fold", str(fold),
                 "--photos", str(photos_dir), "--detector", str(yunet_path), "--limit", "20",
                 "--threads", "1", "--runs", "2", "--min-time", "0",
                 "--out", str(tmp_path / "out"), "--markdown", str(table)])
    assert code == 0
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    names = [m["name"] for m in result["models"]]
    assert len(names) == 2 + 2 - len(result["unavailable"])  # ours with and without flip, then the peers
    precision = "int8" if "quantization" in OnnxAgeGender(model_path).metadata else "fp32"
    assert names[:2] == [f"agegender flagship {precision}", f"agegender flagship {precision}, no flip"]
    for dataset in ("utkface", "adience"):
        assert result["datasets"][dataset]["faces"] == 20
        for name in names:
            overall = result["accuracy"][dataset][name]["overall"]
            assert overall["n"] == 20 and 0 <= overall["gender_accuracy"] <= 1
    assert result["datasets"]["adience"]["labels"]["gender"]["male"] > 0
    for name in names:
        assert set(result["speed"][name]) == {"1", "64"}
        assert result["speed"][name]["64"]["median_ms"] > 0
    assert len(result["photos"]) == 5 and all(set(p["models"]) == set(names) for p in result["photos"])
    markdown = table.read_text()
    assert markdown.startswith("## Benchmark") and "| Model | Size (MB) | UTKFace age MAE" in markdown
    assert all(f"| {name} |" in markdown for name in names)
    assert "### End-to-end photo latency" in markdown
