"""The data layer on the real data in ../shared: readers, label policy, duplicates, splits, cache, augmentation."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender.data.adience import read_adience_fold, read_levi_hassner_list
from agegender.data.augment import AugmentConfig, augment_batch
from agegender.data.cache import cached_images
from agegender.data.manifest import read_manifest, write_manifest
from agegender.data.records import FaceRecord, ReadReport
from agegender.data.splits import (
    LeakageError,
    check_no_leakage,
    collapse_duplicates,
    kfold_records,
    load_or_make_splits,
    split_records,
)
from agegender.data.utkface import read_utkface
from agegender.labels import AGE_GROUPS, adience_age_group, age_to_group, ages_to_groups
from agegender.paths import default_cache_dir
from agegender.preprocess import resize_square
from tests.conftest import shared_path

ADIENCE_FOLD0 = ("data", "adience_folds", "original_txt_files", "fold_0_data.txt")


# -- labels --------------------------------------------------------------------------------------------------
def test_gap_policy_sends_every_gap_age_to_the_nearest_group_edge() -> None:
    expected = {3: "4-6", 7: "8-13", 14: "15-20", 21: "15-20", 22: "15-20", 23: "25-32", 24: "25-32",
                33: "25-32", 34: "25-32", 35: "38-43", 37: "38-43", 44: "38-43", 45: "38-43", 46: "48-53",
                47: "48-53", 54: "48-53", 56: "48-53", 57: "60+", 59: "60+", 0: "0-2", 60: "60+", 116: "60+"}
    assert {age: AGE_GROUPS[age_to_group(age)] for age in expected} == expected
    for group, (lo, hi) in enumerate([(0, 2), (4, 6), (8, 13), (15, 20), (25, 32), (38, 43), (48, 53)]):
        assert {age_to_group(a) for a in range(lo, hi + 1)} == {group}
    # The vectorised rule agrees with the scalar one everywhere, fractional ages and exact midpoints included.
    ages = np.round(np.arange(0, 120, 0.25), 2)
    assert ages_to_groups(ages).tolist() == [age_to_group(float(a)) for a in ages]
    assert ages_to_groups(list(expected)).tolist() == [AGE_GROUPS.index(g) for g in expected.values()]


def test_adience_cleaning_table_of_seed_001() -> None:
    table = {"2": "0-2", "3": "0-2", "(8, 23)": "8-13", "13": "8-13", "22": "15-20", "23": "25-32",
             "(27, 32)": "25-32", "29": "25-32", "32": "25-32", "34": "25-32", "(38, 42)": "38-43",
             "(38, 48)": "38-43", "35": "38-43", "36": "38-43", "42": "38-43", "45": "38-43", "46": "48-53",
             "56": "48-53", "55": "60+", "57": "60+", "58": "60+", "(60, 100)": "60+", "(25, 23)": "25-32"}
    assert {k: AGE_GROUPS[adience_age_group(k)] for k in table} == table
    assert adience_age_group("None") is None


# -- readers -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def utkface(utkface_dir: Path) -> list[FaceRecord]:
    records, report = read_utkface(utkface_dir)
    assert not report.skipped
    return records


def test_utkface_reads_every_chip_including_those_without_race(utkface: list[FaceRecord]) -> None:
    assert len(utkface) == 21430
    assert sum(r.race is None for r in utkface) == 3
    assert Counter(r.gender for r in utkface).keys() == {0, 1}
    assert min(r.age for r in utkface) == 1 and max(r.age for r in utkface) == 116


def test_malformed_names_and_truncated_images_are_skipped_not_fatal(utkface: list[FaceRecord],
                                                                    tmp_path: Path) -> None:
    sources = [Path(r.path) for r in utkface[:3]]
    for src in sources:
        shutil.copy(src, tmp_path / src.name)
    data = sources[0].read_bytes()
    (tmp_path / "30_0_1_20170101000000000.jpg.chip.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "abc_0_1_2017.jpg.chip.jpg").write_bytes(data)  # malformed: age not a number
    (tmp_path / "30_7_1_2017.jpg.chip.jpg").write_bytes(data)  # malformed: gender 7
    records, report = read_utkface(tmp_path)
    assert len(records) == 4 and report.skipped["malformed name"] == ["30_7_1_2017.jpg.chip.jpg",
                                                                      "abc_0_1_2017.jpg.chip.jpg"]
    images, ok = cached_images(records, 32, cache_dir=tmp_path / "cache", progress=False)
    truncated = [r.path.endswith("30_0_1_20170101000000000.jpg.chip.jpg") for r in records]
    assert images.shape == (4, 32, 32, 3) and ok.tolist() == [not t for t in truncated]
    linear, _ = cached_images(records, 32, resampling="linear", cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # a cache per resampling, as per size
    assert not np.array_equal(linear, images)


def test_adience_sample_reads_with_the_official_labels() -> None:
    fold0, sample = shared_path(*ADIENCE_FOLD0), shared_path("data", "adience_sample")
    report = ReadReport()
    records = read_adience_fold(fold0, sample, report)
    assert len(records) == 287  # 288 images of one user; one has a blank gender and is dropped
    assert {r.group_id for r in records} == {"37303189@N08"}
    assert all(Path(r.path).is_file() and r.age is None for r in records)
    assert Counter(r.age_group for r in records) == {0: 238, 4: 30, 7: 6, 6: 6, 2: 5, 5: 2}
    assert report.skipped["image missing"]  # other users' images are absent: reported, not fatal
    lists = shared_path("data", "adience_folds", "train_val_txt_files_per_fold", "test_fold_is_0")
    listed = read_levi_hassner_list(lists / "age_test.txt", sample, "age")
    assert len(listed) == 287 and {r.age_group for r in listed} <= set(range(8))


def test_manifest_round_trip_and_bad_rows(utkface: list[FaceRecord], tmp_path: Path) -> None:
    write_manifest(utkface[:20], tmp_path / "m.csv")
    back, report = read_manifest(tmp_path / "m.csv")
    assert [(r.age, r.gender, r.race) for r in back] == [(r.age, r.gender, r.race) for r in utkface[:20]]
    for name in "abcdef":
        (tmp_path / f"{name}.jpg").touch()
    (tmp_path / "bad.csv").write_text("path,age_group,gender,subject\na.jpg,25-32,f,s1\nb.jpg,99-100,m,s2\n"
                                      "c.jpg,,,s3\nd.jpg,0,male,s4\nmissing.jpg,0,male,s5\n")
    records, report = read_manifest(tmp_path / "bad.csv")
    assert [(r.age_group, r.gender, r.group_id) for r in records] == [(4, 1, "s1"), (0, 0, "s4")]
    assert sum(map(len, report.skipped.values())) == 3 and report.skipped["image file not found"] == ["line 6"]
    assert "1 skipped (image file not found: line 6)" in report.summary()  # the line is said, not only counted
    (tmp_path / "ages.csv").write_text("path,age,gender\ne.jpg,nan,f\nf.jpg,inf,m\na.jpg,31,m\n")
    records, report = read_manifest(tmp_path / "ages.csv")  # an age that is not a number of years: a bad row
    assert [r.age for r in records] == [31.0] and sum(map(len, report.skipped.values())) == 2
    with pytest.raises(ValueError, match="manifest not found"):
        read_manifest(tmp_path)


def test_manifests_as_spreadsheets_write_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Excel's "CSV UTF-8" (a byte order mark), the README's own "path, age, gender", capitalised names, ";" and tab
    were all "a manifest needs a 'path' column" or "no label"; a short row was a TypeError traceback; line numbers
    ran short after a blank line or a value on two lines; ages and races out of range were taken."""
    for name in "abc":
        (tmp_path / f"{name}.jpg").touch()
    expected = [(31.0, 1), (7.0, 0)]
    for name, text in (("bom.csv", "\ufeffpath,age,gender\na.jpg,31,f\nb.jpg,7,m\n"),
                       ("spaces.csv", "path, age, gender\na.jpg, 31, f\nb.jpg, 7, m\n"),
                       ("capitals.csv", "Path,Age,Gender,Camera\na.jpg,31,F\nb.jpg,7,M\n"),
                       ("semicolons.csv", "path;age;gender\na.jpg;31;female\nb.jpg;7;male\n"),
                       ("tabs.tsv", "path\tage\tgender\r\na.jpg\t31\tf\r\nb.jpg\t7\tm\r\n")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with caplog.at_level(logging.INFO, logger="agegender.data.manifest"):
            records, report = read_manifest(tmp_path / name)
        assert [(r.age, r.gender) for r in records] == expected and not report.skipped, name
    assert "columns ignored: camera" in caplog.text
    (tmp_path / "odd.csv").write_text('gender,path,age,race,subject\nf,a.jpg,31,0,"two\nlines"\n\nm\n'
                                      "m,b.jpg,150,,x\nf,c.jpg,40,7,y\nm,b.jpg,70,4,z\n")
    records, report = read_manifest(tmp_path / "odd.csv")
    assert [(r.age, r.race, r.group_id) for r in records] == [(31.0, 0, "two\nlines"), (70.0, 4, "z")]
    assert report.skipped == {"bad row: no path": ["line 5"], "bad row: age '150' is not 0 to 130 years": ["line 6"],
                              "bad row: race 7 is not one of UTKFace's codes 0..4": ["line 7"]}
    (tmp_path / "other.csv").write_text("file,years\na.jpg,3\n")
    with pytest.raises(ValueError, match="needs a 'path' column \\(its columns: 'file', 'years'; known: path"):
        read_manifest(tmp_path / "other.csv")
    (tmp_path / "latin1.csv").write_bytes("path,age,gender\ncaf\u00e9.jpg,3,f\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv: not UTF-8 text"):
        read_manifest(tmp_path / "latin1.csv")


def test_faces_that_share_a_file_name_stay_separate_groups(utkface: list[FaceRecord], tmp_path: Path) -> None:
    """40 people's img0.jpg and img1.jpg were two groups of 20 (group ids were bare file names): train 20, val 0,
    test 20."""
    records = []
    for k in range(40):
        for j in range(2):
            target = tmp_path / f"p{k}" / f"img{j}.jpg"
            target.parent.mkdir(exist_ok=True)
            shutil.copy(utkface[300 * k + j].path, target)
            records.append(FaceRecord.from_age(str(target), utkface[300 * k + j].age, utkface[300 * k + j].gender,
                                               group_id=f"person{k}"))
    collapsed, stats = collapse_duplicates(records, progress=False)
    assert stats.groups == 40 and stats.largest_group == 2
    assert {r.group_id for r in collapsed} == {f"dup:p{k}/img0.jpg" for k in range(40)}


def test_edited_labels_make_new_splits_and_undecodable_files_are_left_out(
        utkface: list[FaceRecord], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A manifest whose subjects were edited read back its old splits (the cache key held ages and genders only);
    a 0-byte file stopped the fingerprints with an OpenCV assertion, and text named .jpg went into a split."""
    faces = [Path(r.path) for r in utkface[:30]]
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "text.jpg").write_text("not an image")
    rows = [f"{p},{30 + i % 5},f,s{i}" for i, p in enumerate(faces)] + ["empty.jpg,30,f,e", "text.jpg,30,m,t"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,age,gender,subject\n" + "\n".join(rows) + "\n")
    records, _ = read_manifest(manifest)
    with caplog.at_level(logging.WARNING, logger="agegender.data.splits"):
        splits, stats = load_or_make_splits(records, tmp_path / "out", progress=False)
    assert stats.undecodable == 2 and sum(map(len, splits.values())) == 30
    assert "2 file(s) are empty or not an image" in caplog.text and "empty.jpg" in caplog.text
    manifest.write_text("path,age,gender,subject\n" + "\n".join(f"{p},30,f,one" for p in faces) + "\n")
    records, _ = read_manifest(manifest)  # the same files, now one subject: one group
    splits, stats = load_or_make_splits(records, tmp_path / "out", progress=False)
    assert stats.groups == 1 and sorted(len(v) for v in splits.values()) == [0, 0, 30]


# -- duplicates and splits -----------------------------------------------------------------------------------
def test_identical_and_reencoded_copies_group_but_different_people_do_not(utkface: list[FaceRecord],
                                                                          tmp_path: Path) -> None:
    a, b = utkface[100], utkface[5000]
    copy = tmp_path / "copy.jpg"
    shutil.copy(a.path, copy)
    reencoded = tmp_path / "reencoded.jpg"
    cv2.imwrite(str(reencoded), cv2.imread(a.path), [cv2.IMWRITE_JPEG_QUALITY, 70])
    recs = [a, FaceRecord.from_age(str(copy), 50.0, 1 - a.gender), FaceRecord.from_age(str(reencoded), a.age,
            a.gender), b]
    collapsed, stats = collapse_duplicates(recs, progress=False)
    assert stats.identical_groups == 1 and stats.label_conflicts == 1
    assert stats.dropped_gender_ties == 1  # the two byte-identical copies disagree on gender: dropped
    assert [r.path for r in collapsed] == [str(reencoded), b.path]
    assert collapsed[0].group_id != collapsed[1].group_id


def test_identical_copies_labelled_by_group_count_their_conflict_whatever_the_order(
        utkface: list[FaceRecord], tmp_path: Path) -> None:
    """Copies labelled by age group only (a manifest without ages): the first row's group won, uncounted, so the
    score depended on the manifest's order."""
    a = utkface[100]
    copy = tmp_path / "copy.jpg"
    shutil.copy(a.path, copy)
    first = FaceRecord(a.path, None, AGE_GROUPS.index("15-20"), a.gender, None, a.path)
    second = FaceRecord(str(copy), None, AGE_GROUPS.index("4-6"), a.gender, None, str(copy))
    results = [collapse_duplicates(order, progress=False) for order in ([first, second], [second, first])]
    assert results[0] == results[1]
    (kept,), stats = results[0]
    assert stats.label_conflicts == 1 and kept.age_group == AGE_GROUPS.index("4-6")  # the lower median
    assert kept.path == min(a.path, str(copy))
    aged = FaceRecord.from_age(a.path, 30.0, a.gender)  # 25-32 by its age, against a copy labelled 4-6
    assert collapse_duplicates([aged, second], progress=False)[1].label_conflicts == 1


@pytest.fixture(scope="session")
def splits_dir(isolated_cache: Path) -> Path:
    return default_cache_dir() / "splits"  # where training runs in the tests find them too


@pytest.fixture(scope="session")
def utkface_splits(utkface: list[FaceRecord], splits_dir: Path):
    return load_or_make_splits(utkface, splits_dir, progress=False)


def test_splits_are_80_10_10_with_no_group_crossing(utkface_splits) -> None:
    splits, stats = utkface_splits
    sizes = {k: len(v) for k, v in splits.items()}
    total = sum(sizes.values())
    assert total == stats.images - stats.identical_extra_copies - stats.dropped_gender_ties
    assert abs(sizes["train"] / total - 0.8) < 0.02 and abs(sizes["test"] / total - 0.1) < 0.02
    check_no_leakage(splits)
    groups = {k: {r.group_id for r in v} for k, v in splits.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert stats.identical_groups > 300 and stats.near_duplicate_groups > 300
    assert max(Counter(r.group_id for v in splits.values() for r in v).values()) < 50  # no chained mega-group


def test_splits_are_deterministic_and_reread_from_disk(utkface: list[FaceRecord], utkface_splits,
                                                       splits_dir: Path) -> None:
    splits, stats = utkface_splits
    again, stats_again = load_or_make_splits(utkface, splits_dir, progress=False)  # from the manifests
    assert stats_again == stats
    for name in splits:
        assert [(r.path, r.age, r.gender, r.group_id) for r in again[name]] == [
            (str(Path(r.path).resolve()), r.age, r.gender, r.group_id) for r in splits[name]]
    shuffled = [r for v in splits.values() for r in v][::-1]
    assert {k: len(v) for k, v in split_records(shuffled).items()} == {k: len(v) for k, v in splits.items()}


def test_kfold_is_group_exclusive_and_leakage_is_caught(utkface_splits) -> None:
    records = [r for v in utkface_splits[0].values() for r in v]
    folds = kfold_records(records, 5)
    assert sum(map(len, folds)) == len(records) and min(map(len, folds)) > len(records) / 5 * 0.9
    with pytest.raises(LeakageError):
        check_no_leakage({"train": folds[0][:1], "test": folds[0][:1]})


# -- augmentation --------------------------------------------------------------------------------------------
def test_augmentation_shapes_identity_and_mirror() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(4, 72, 72, 3), dtype=np.uint8)
    plain = augment_batch(images, 64, AugmentConfig(), rng)
    assert plain.shape == (4, 64, 64, 3) and np.array_equal(plain, images[:, 4:68, 4:68])
    flipped = augment_batch(images, 64, AugmentConfig(flip=True), np.random.default_rng(1))
    assert all(np.array_equal(f, p) or np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain, strict=True))
    full = AugmentConfig(flip=True, random_crop=True, rotation=10, zoom=0.1, translate=0.05, shear=5,
                         brightness=0.1, contrast=0.2)
    out = augment_batch(images, 64, full, rng)
    assert out.shape == (4, 64, 64, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    # the warp with all ranges at zero and no flip is the center crop, so geometry is consistent
    still = augment_batch(images, 64, AugmentConfig(rotation=1e-9), rng)
    assert np.abs(still - plain).max() < 1e-3


def test_fast_resize_stays_close_to_one_area_resize(utkface: list[FaceRecord]) -> None:
    chips = [cv2.imread(str(r.path)) for r in utkface[::500]]
    for chip in chips:
        fast = resize_square(chip, 72).astype(np.float64)
        area = cv2.resize(chip, (72, 72), interpolation=cv2.INTER_AREA).astype(np.float64)
        assert np.abs(fast - area).mean() < 2.5  # grey levels out of 255
    odd = resize_square(chips[0][:201, :201], 64)  # 201 = 3 x 64 + 9: trims 9 pixels before the 3x3 box step
    assert odd.shape == (64, 64, 3)
    assert resize_square(chips[0][:50, :50], 64).shape == (64, 64, 3)  # enlarging: linear
    for side, size in ((200, 72), (200, 64), (201, 64), (100, 72), (50, 64)):  # the float32 path: the same values
        for chip in chips:
            crop = np.ascontiguousarray(chip[:side, :side])
            for resampling in ("area", "linear"):
                as_float = resize_square(crop, size, resampling=resampling, as_float32=True)
                assert as_float.dtype == np.float32
                np.testing.assert_array_equal(as_float, resize_square(crop, size, resampling=resampling))
    boxed = cv2.resize(chips[0], (100, 100), interpolation=cv2.INTER_AREA)  # "linear": the same box step, then bilinear
    np.testing.assert_array_equal(resize_square(chips[0], 72, resampling="linear"),
                                  cv2.resize(boxed, (72, 72), interpolation=cv2.INTER_LINEAR))
