"""Evaluation layer: every metric against values worked out by hand, oversampling, averaging, reports."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from agegender.labels import AGE_GROUPS, age_to_group
from agegender.outputs import ACTIVATIONS, OUTPUT_KEYS, Decoded, decode, sigmoid, softmax
from agegender.oversample import (
    CROP_ORDER,
    TEN_CROP_ORDER,
    average_crops,
    center_crop,
    flip_average,
    ten_crops,
)
from agegender.reporting.metrics import (
    METRIC_LABELS,
    binary_prf,
    compute_metrics,
    confusion_matrix,
    cumulative_score,
    exact_accuracy,
    format_metric,
    macro_f1,
    mae,
    mean_std,
    normalize_rows,
    one_off_accuracy,
    summarize_folds,
)
from agegender.reporting.report import write_report

approx = pytest.approx


# --- scalar metrics -------------------------------------------------------------------------------


def test_mae_and_cumulative_score():
    # errors |10-15|=5, |20-26|=6, |36-30|=6, |50-50|=0 -> MAE 17/4
    # CS@5 counts the errors 5 (the bound is included) and 0 -> 2/4
    pred, true = [10, 20, 36, 50], [15, 26, 30, 50]
    assert mae(pred, true) == 4.25
    assert cumulative_score(pred, true) == 0.5
    assert cumulative_score(pred, true, tolerance=6) == 1.0
    assert math.isnan(mae([], []))
    with pytest.raises(ValueError, match="differ in length"):
        mae([1, 2], [1])


def test_exact_and_one_off_accuracy():
    # pred 0 1 3 7 4 / true 0 2 5 6 4: equal at 0 and 4 -> 2/5; |diff| 0 1 2 1 0 -> four within one -> 4/5
    pred, true = [0, 1, 3, 7, 4], [0, 2, 5, 6, 4]
    assert exact_accuracy(pred, true) == 0.4
    assert one_off_accuracy(pred, true) == 0.8


def test_binary_prf_and_macro_f1_by_hand():
    pred = [1, 1, 1, 0, 0, 0, 1, 1]
    true = [1, 1, 0, 0, 1, 0, 1, 0]
    # female (1) positive: TP at 0,1,6 = 3; FP at 2,7 = 2; FN at 4 = 1
    # P = 3/5, R = 3/4, F1 = 2TP/(2TP+FP+FN) = 6/9
    assert binary_prf(pred, true) == approx((0.6, 0.75, 2 / 3))
    # male (0) positive: TP at 3,5 = 2; FP at 4 = 1; FN at 2,7 = 2 -> P 2/3, R 2/4, F1 4/7
    assert binary_prf(pred, true, positive=0) == approx((2 / 3, 0.5, 4 / 7))
    # macro-F1 = (2/3 + 4/7) / 2 = 13/21
    assert macro_f1(pred, true) == approx(13 / 21)


def test_binary_prf_undefined_parts_are_nan():
    nothing_predicted = binary_prf([0, 0], [1, 0])  # TP 0, FP 0, FN 1
    assert math.isnan(nothing_predicted.precision)
    assert nothing_predicted.recall == 0.0 and nothing_predicted.f1 == 0.0
    no_positive = binary_prf([1, 0], [0, 0])  # TP 0, FP 1, FN 0
    assert no_positive.precision == 0.0 and math.isnan(no_positive.recall) and no_positive.f1 == 0.0
    assert math.isnan(macro_f1([], []))


def test_confusion_matrix_3x3_by_hand():
    true = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    pred = [0, 1, 1, 1, 2, 2, 2, 0, 2]
    # row 0 (true 0): predicted 0 once, 1 once; row 1: 1 twice, 2 once; row 2: 2 three times, 0 once
    counts = confusion_matrix(pred, true, 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 2, 1], [1, 0, 3]])
    np.testing.assert_allclose(normalize_rows(counts), [[0.5, 0.5, 0], [0, 2 / 3, 1 / 3], [0.25, 0, 0.75]])
    assert np.trace(counts) / counts.sum() == exact_accuracy(pred, true)
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix([3], [0], 3)


def test_normalize_rows_keeps_empty_rows_zero():
    np.testing.assert_array_equal(normalize_rows([[0, 0], [2, 2]]), [[0, 0], [0.5, 0.5]])


def test_mean_std_is_sample_std_of_defined_values():
    # mean 0.55; deviations -0.05, 0, 0.05 -> sum of squares 0.005 / (3 - 1) -> std 0.05
    assert mean_std([0.5, 0.55, None, 0.6, math.nan]) == approx((0.55, 0.05))
    mean, std = mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)
    assert all(math.isnan(x) for x in mean_std([]))


def test_format_metric():
    assert format_metric("age_mae", 4.256) == "4.26"
    assert format_metric("gender_f1", 0.91234) == "91.2%"
    assert format_metric("age_cs5", 1.0) == "100.0%"
    assert format_metric("n", 17) == "17"
    assert format_metric("group_exact", None) == "–"


# --- compute_metrics ---------------------------------------------------------------------------------------

# Six faces. Face 5 has a group label but no age and no gender.
#  face  true age  true group  pred age  pred group  true gender  P(female) -> pred  race
#   0       1         0-2         3         0-2        male          0.2     male   white
#   1       5         4-6        12        8-13        female        0.7     female white
#   2      30       25-32        30       25-32        female        0.4     male   black
#   3      40       38-43        46       38-43        male          0.6     female black
#   4      65         60+        50       48-53        female        0.9     female asian
#   5       ?       15-20        18       15-20          ?           0.1     male     ?
TRUE_AGE = [1, 5, 30, 40, 65, None]
TRUE_GROUP = [0, 1, 4, 5, 7, 3]
TRUE_GENDER = [0, 1, 1, 0, 1, None]
RACES = [0, 0, 1, 1, 2, -1]
PRED_GROUP = [0, 2, 4, 5, 6, 3]


def _decoded(female_prob=(0.2, 0.7, 0.4, 0.6, 0.9, 0.1)) -> Decoded:
    age = np.array([3.0, 12.0, 30.0, 46.0, 50.0, 18.0])
    return Decoded(age=age, age_low=age, age_high=age, group_probs=np.eye(8)[PRED_GROUP],
                   female_prob=None if female_prob is None else np.array(female_prob))


@pytest.fixture
def example() -> dict:
    return compute_metrics(TRUE_AGE, TRUE_GROUP, TRUE_GENDER, _decoded(), RACES)


def test_compute_metrics_overall_by_hand(example):
    assert example["overall"] == approx({
        "age_mae": 6.0,  # faces 0-4: errors 2, 7, 0, 6, 15 -> 30/5
        "age_cs5": 0.4,  # errors 2 and 0 within 5 years
        "group_exact": 4 / 6,  # faces 0, 2, 3, 5
        "group_one_off": 1.0,  # faces 1 and 4 are one group off
        "gender_accuracy": 0.6,  # faces 0-4: pred M F M F F vs true M F F M F -> 0, 1, 4 right
        "gender_precision": 2 / 3,  # female positive: TP 1,4; FP 3; FN 2
        "gender_recall": 2 / 3,
        "gender_f1": 2 / 3,  # 4 / (4 + 1 + 1)
        "gender_macro_f1": 7 / 12,  # male F1: TP face 0, FP face 2, FN face 3 -> 2/4; (2/3 + 1/2) / 2
        "n": 6,
    })
    json.dumps(example, allow_nan=False)  # strict JSON


def test_compute_metrics_confusion_matrices(example):
    age = np.array(example["confusion"]["age_group"]["counts"])
    expected = np.zeros((8, 8), int)
    expected[[0, 1, 4, 5, 7, 3], PRED_GROUP] = 1  # rows true group, columns predicted
    np.testing.assert_array_equal(age, expected)
    gender = example["confusion"]["gender"]
    # true male (0, 3): predicted male once, female once; true female (1, 2, 4): male once, female twice
    assert gender["labels"] == ["male", "female"]
    assert gender["counts"] == [[1, 1], [1, 2]]
    np.testing.assert_allclose(gender["normalized"], [[0.5, 0.5], [1 / 3, 2 / 3]])


def test_compute_metrics_breakdowns(example):
    groups = example["by_age_group"]
    assert list(groups) == ["0-2", "4-6", "8-13", "15-20", "25-32", "38-43", "48-53", "60+"]
    assert groups["0-2"] == approx({"age_mae": 2.0, "age_cs5": 1.0, "group_exact": 1.0, "group_one_off": 1.0,
                                    "gender_accuracy": 1.0, "gender_precision": None, "gender_recall": None,
                                    "gender_f1": None, "gender_macro_f1": 1.0, "n": 1})
    assert groups["8-13"]["n"] == 0 and all(v is None for k, v in groups["8-13"].items() if k != "n")
    assert groups["15-20"]["n"] == 1 and groups["15-20"]["age_mae"] is None
    assert groups["15-20"]["group_exact"] == 1.0 and groups["15-20"]["gender_accuracy"] is None

    genders = example["by_gender"]  # only accuracy (each class's recall) within one gender
    assert genders["male"] == approx({"age_mae": 4.0, "age_cs5": 0.5, "group_exact": 1.0,
                                      "group_one_off": 1.0, "gender_accuracy": 0.5, "n": 2})
    assert genders["female"]["age_mae"] == approx(22 / 3)
    assert genders["female"]["gender_accuracy"] == approx(2 / 3)

    races = example["by_race"]
    assert [races[r]["n"] for r in races] == [2, 2, 1, 0, 0]
    assert races["white"]["age_mae"] == 4.5 and races["white"]["group_exact"] == 0.5
    assert races["black"]["age_mae"] == 3.0 and races["black"]["gender_accuracy"] == 0.0
    assert races["indian"]["age_mae"] is None


def test_compute_metrics_masks_missing_columns():
    # Adience-like: groups only, no gender output, no races
    m = compute_metrics(None, TRUE_GROUP, TRUE_GENDER, _decoded(female_prob=None))
    assert set(m["overall"]) == {"group_exact", "group_one_off", "n"}
    assert set(m["confusion"]) == {"age_group"} and "by_gender" not in m and "by_race" not in m
    m = compute_metrics(TRUE_AGE, TRUE_GROUP, None, _decoded())
    assert "gender_accuracy" not in m["overall"] and m["overall"]["age_mae"] == 6.0
    m = compute_metrics(TRUE_AGE, TRUE_GROUP, [-1] * 6, _decoded(), [None] * 6)
    assert "gender_f1" not in m["overall"] and "by_race" not in m


def test_compute_metrics_derives_groups_from_ages():
    # gap policy: 3 -> 4-6 (tie goes older), 22 -> 15-20, 23 -> 25-32; the missing age gives no group
    age = np.array([3.0, 22.0, 23.0, 40.0])
    decoded = decode({"age": age})
    m = compute_metrics([3, 22, 23, math.nan], None, None, decoded)
    counts = np.array(m["confusion"]["age_group"]["counts"])
    assert counts.sum() == 3 and counts[1, 1] == counts[3, 3] == counts[4, 4] == 1
    assert m["overall"]["group_exact"] == 1.0 and m["overall"]["age_mae"] == 0.0 and m["overall"]["n"] == 4


def test_compute_metrics_rejects_wrong_length():
    with pytest.raises(ValueError, match="true_group has 2 entries for 6"):
        compute_metrics(None, [0, 1], None, _decoded())


def test_summarize_folds(example, tmp_path):
    other = compute_metrics(TRUE_AGE, TRUE_GROUP, None, _decoded())
    s = summarize_folds([example, other])
    assert s["n_folds"] == 2
    assert s["overall"]["age_mae"] == {"mean": 6.0, "std": 0.0, "folds": 2}
    # one fold only: std undefined, and the report says over how many folds (it said "over 2 folds")
    assert s["overall"]["gender_accuracy"] == {"mean": 0.6, "std": None, "folds": 1}
    md = write_report(s, tmp_path, "Folds", "2-fold").read_text()
    assert "(over 1 of 2 folds)" in md and md.count("of 2 folds)") == sum(
        v["folds"] == 1 for v in s["overall"].values())
    assert s["confusion"]["age_group"]["counts"] == (2 * np.array(example["confusion"]["age_group"]["counts"])
                                                     ).tolist()
    assert s["confusion"]["gender"]["counts"] == [[1, 1], [1, 2]]
    assert s["folds"] == [example["overall"], other["overall"]]
    json.dumps(s, allow_nan=False)


# --- oversampling ---------------------------------------------------------------------------------


def _position_image(n: int, h: int, w: int) -> np.ndarray:
    """Channel 0 holds the row, channel 1 the column, channel 2 the image index of every pixel."""
    img = np.zeros((n, h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None]
    img[..., 1] = np.arange(w)[None, :]
    img[..., 2] = np.arange(n)[:, None, None]
    return img


def test_center_crop_pixel_exact():
    # H 7, W 8, crop 4: top (7-4)//2 = 1, left (8-4)//2 = 2
    crop = center_crop(_position_image(2, 7, 8), 4)
    assert crop.shape == (2, 4, 4, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[1, :, :, 0], np.repeat(np.arange(1, 5)[:, None], 4, axis=1))
    np.testing.assert_array_equal(crop[1, :, :, 1], np.repeat(np.arange(2, 6)[None, :], 4, axis=0))


def test_ten_crops_positions_and_order_pixel_exact():
    # H 6, W 8, crop 4: corners at rows 0 / 2 and columns 0 / 4; center at row (6-4)//2 = 1, column 2
    tops_lefts = {"top_left": (0, 0), "top_right": (0, 4), "bottom_left": (2, 0), "bottom_right": (2, 4),
                  "center": (1, 2)}
    crops = ten_crops(_position_image(2, 6, 8), 4)
    assert crops.shape == (20, 4, 4, 3) and crops.dtype == np.uint8 and crops.flags.c_contiguous
    assert TEN_CROP_ORDER[:5] == CROP_ORDER and TEN_CROP_ORDER[5] == "top_left_mirrored"
    for image in range(2):
        for k, name in enumerate(TEN_CROP_ORDER):
            crop = crops[10 * image + k]
            top, left = tops_lefts[name.removesuffix("_mirrored")]
            cols = np.arange(left, left + 4)
            cols = cols[::-1] if name.endswith("_mirrored") else cols
            rows = np.arange(top, top + 4)
            np.testing.assert_array_equal(crop[..., 0], np.repeat(rows[:, None], 4, axis=1))
            np.testing.assert_array_equal(crop[..., 1], np.repeat(cols[None, :], 4, axis=0))
            assert (crop[..., 2] == image).all()


def test_crops_reject_bad_shapes():
    with pytest.raises(ValueError, match="does not fit"):
        ten_crops(np.zeros((1, 4, 6, 3), np.uint8), 5)
    with pytest.raises(ValueError, match="N x H x W x C"):
        ten_crops(np.zeros((4, 4, 3), np.uint8), 2)


def test_every_output_key_has_an_averaging_rule():
    assert set(ACTIVATIONS) == set(OUTPUT_KEYS)


def test_average_crops_averages_probabilities_not_logits():
    # two crops of one face; softmax probabilities [.2 .3 .5] and [.6 .3 .1] average to [.4 .3 .3]
    group = np.log([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    # sigmoid: P 0.5 (logit 0) and 0.75 (logit log 3) -> 0.625 -> logit log(0.625 / 0.375) = log(5/3);
    # averaging logits would give sigmoid(log(3) / 2) = 0.634 instead
    gender = np.array([0.0, np.log(3.0)])
    out = average_crops({"age_group_logits": group, "gender_logit": gender, "age": np.array([20.0, 31.0]),
                         "features": np.ones((2, 5))}, 2)
    assert set(out) == {"age_group_logits", "gender_logit", "age"}  # keys outside the contract dropped
    np.testing.assert_allclose(out["age_group_logits"], np.log([[0.4, 0.3, 0.3]]))
    np.testing.assert_allclose(softmax(out["age_group_logits"]), [[0.4, 0.3, 0.3]])
    np.testing.assert_allclose(out["gender_logit"], [np.log(5 / 3)])
    np.testing.assert_allclose(out["age"], [25.5])


def test_average_crops_groups_rows_image_major_and_decodes():
    # ten crops each of two faces: face 0 always says group 2 (P .9), face 1 splits 5/5 between groups 6 and 7
    probs = np.full((20, 8), 0.1 / 7)
    probs[:10, 2] = 0.9
    probs[10:, :] = 0.0
    probs[10:15, 6] = probs[15:20, 7] = 1.0
    ordinal = np.zeros((20, 8))  # P(older than k) = 0.5 for every crop and threshold
    out = average_crops({"age_group_logits": np.log(np.maximum(probs, 1e-30)), "age_ordinal_logits": ordinal,
                         "gender_logit": np.r_[np.full(10, 2.0), np.full(10, -2.0)]}, 10)
    assert out["age_group_logits"].shape == (2, 8) and out["age_ordinal_logits"].shape == (2, 8)
    decoded = decode(out)
    np.testing.assert_allclose(decoded.group_probs[0], probs[0], atol=1e-12)
    np.testing.assert_allclose(decoded.group_probs[1, 6:], [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(sigmoid(out["age_ordinal_logits"]), 0.5)
    np.testing.assert_allclose(decoded.female_prob, sigmoid(np.array([2.0, -2.0])))
    with pytest.raises(ValueError, match="multiple of 10"):
        average_crops({"age": np.zeros(15)}, 10)


def test_saturated_probabilities_stay_finite():
    saturated = {"gender_logit": np.array([800.0, 800.0]), "joint_logits": np.array([[0, 900.0]] * 2)}
    out = average_crops(saturated, 2)
    assert np.isfinite(out["gender_logit"]).all() and np.isfinite(out["joint_logits"]).all()
    assert sigmoid(out["gender_logit"])[0] == approx(1.0)


def test_flip_average_is_the_two_crop_case():
    rng = np.random.default_rng(0)
    plain = {"age_dist_logits": rng.normal(size=(3, 101)), "gender_logit": rng.normal(size=3),
             "age": rng.normal(size=3)}
    flipped = {k: rng.normal(size=v.shape) for k, v in plain.items()}
    interleaved = {k: np.stack([plain[k], flipped[k]], axis=1).reshape(6, *plain[k].shape[1:]) for k in plain}
    expected = average_crops(interleaved, 2)
    got = flip_average(plain, flipped)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key])
    np.testing.assert_allclose(got["age"], (plain["age"] + flipped["age"]) / 2)


# --- report ---------------------------------------------------------------------------------------


def _history(path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_age_mae", "val_gender_accuracy"])
        writer.writerows([[1, 2.0, 2.2, 9.0, ""], [2, 1.2, 1.5, 7.0, 0.8], [3, 0.9, 1.3, 6.5, 0.85]])


def test_write_report_writes_every_file(tmp_path, example):
    pytest.importorskip("matplotlib")
    _history(tmp_path / "history.csv")
    report = write_report(example, tmp_path / "out", "Demo", "Six hand-made faces.", tmp_path / "history.csv")
    out = tmp_path / "out"
    assert report == out / "report.md"
    for name in ("metrics.json", "report.md", "confusion_age_group.csv", "confusion_age_group_normalized.csv",
                 "confusion_age_group.png", "confusion_gender.csv", "confusion_gender.png",
                 "breakdown_by_age_group.png", "breakdown_by_gender.png", "breakdown_by_race.png",
                 "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text()) == {**example, "protocol": "Six hand-made faces."}
    with open(out / "confusion_gender.csv", newline="") as f:
        assert list(csv.reader(f)) == [["true \\ predicted", "male", "female"], ["male", "1", "1"],
                                       ["female", "1", "2"]]

    md = report.read_text()
    for key in example["overall"]:
        assert METRIC_LABELS[key] in md, key
    assert "| Age MAE (years) | 6.00 |" in md and "| Age group exact accuracy | 66.7% |" in md
    assert "Six hand-made faces." in md and "## By race" in md and "| indian | 0 | – |" in md
    for line in md.splitlines():
        if line.startswith("!["):
            assert (out / line.split("](")[1].rstrip(")")).exists(), line


def test_write_report_for_folds(tmp_path, example):
    pytest.importorskip("matplotlib")
    md = write_report(summarize_folds([example, example]), tmp_path, "Folds", "2-fold").read_text()
    assert "over 2 folds" in md and "| Age MAE (years) | 6.00 ± 0.00 |" in md
    assert "| Fold 2 | 6 | 6.00 |" in md
    assert (tmp_path / "confusion_age_group.png").exists()


def test_write_report_without_matplotlib(tmp_path, example, monkeypatch):
    import agegender.reporting.report as report_module

    monkeypatch.setattr(report_module.importlib.util, "find_spec", lambda name: None)
    md = write_report(example, tmp_path, "No figures", "Base install.").read_text()
    assert not list(tmp_path.glob("*.png")) and "matplotlib is not installed" in md
    assert (tmp_path / "confusion_age_group.csv").exists() and "Gender macro-F1" in md


def test_plot_breakdown_skips_when_nothing_to_draw(tmp_path):
    pytest.importorskip("matplotlib")
    from agegender.reporting.plots import plot_breakdown

    empty = {"by_race": {"white": {"n": 0, "group_exact": None}}}
    assert plot_breakdown(empty, "by_race", tmp_path / "x.png") is None and not (tmp_path / "x.png").exists()


def test_a_gender_tie_favours_neither_class_and_is_reported() -> None:
    """P(female) exactly 0.5 (the int8 model's quantised outputs can land there) is half right whatever the truth."""
    decoded = Decoded(age=None, age_low=None, age_high=None, group_probs=None,
                      female_prob=np.array([0.5, 0.5, 0.9, 0.1]))
    for truth in ([0, 0, 1, 0], [1, 1, 1, 0]):
        overall = compute_metrics(None, None, np.array(truth), decoded)["overall"]
        assert overall["gender_accuracy"] == 0.75 and overall["gender_ties"] == 2
    confusion = compute_metrics(None, None, np.array([0, 1, 1, 0]), decoded)["confusion"]["gender"]["counts"]
    assert sum(map(sum, confusion)) == 2  # ties are not placed in either column


def test_the_group_of_a_distribution_is_the_group_its_age_falls_in() -> None:
    """Most mass in 25-32 but the median at 36: the face reads age 36, group 38-43 (the gap policy), never 25-32."""
    probs = np.full((1, 101), 1e-9)
    probs[0, 30:33] = 0.45 / 3  # 25-32 holds the most mass of any one group
    probs[0, 36] = 0.2  # in the gap 33-37, counted to 38-43 by the policy: the median lands here
    probs[0, 50] = 0.35
    decoded = decode({"age_dist_logits": np.log(probs)})
    assert decoded.group_probs.argmax() == AGE_GROUPS.index("25-32")
    assert AGE_GROUPS[int(decoded.age_group[0])] == AGE_GROUPS[age_to_group(float(decoded.age[0]))] == "38-43"
