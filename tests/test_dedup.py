"""Near-duplicate detection on real UTKFace chips from ../shared: planted mirrored, blurred, re-encoded and
re-cropped copies are grouped with their originals, distinct photos are not, and five copies the pHash test missed
are found. Uses the package's own entry point (``collapse_duplicates``) so that it tests what the splits use."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender.data.dedup import METHOD, file_fingerprints, near_duplicate_pairs
from agegender.data.records import FaceRecord
from agegender.data.splits import collapse_duplicates, load_or_make_splits, splits_folder

# (test-split file, its copy in the old train split): two mirrors, a re-encoding, a blurred copy, a watermarked one
KNOWN_COPIES = [
    ("85_1_0_20170110184001159", "69_1_0_20170110175803672"),
    ("24_1_4_20170117150332484", "22_1_0_20170117141131710"),
    ("1_0_2_20161219154715885", "1_0_2_20161219162852759"),
    ("41_1_3_20170109140751299", "41_1_3_20170105001059203"),
    ("9_0_0_20170110224240532", "8_0_0_20170110220124291"),
]
SUFFIX = ".jpg.chip.jpg"
N_BACKGROUND = 540


def _record(path: Path) -> FaceRecord:
    age, gender = path.name.split("-")[-1].split("_")[:2]
    return FaceRecord.from_age(str(path), float(age), int(gender))


def _groups(paths: list[Path]) -> dict[str, str]:
    """Group id of each path, through the package's own deduplication (no path here shares bytes with another)."""
    collapsed, _ = collapse_duplicates([_record(p) for p in paths], progress=False)
    assert len(collapsed) == len(paths)
    return {r.path: r.group_id for r in collapsed}


@pytest.fixture(scope="module")
def chips(utkface_dir: Path) -> list[Path]:
    """Every chip except the known copies, in name order."""
    known = {name for pair in KNOWN_COPIES for name in pair}
    return sorted(p for p in utkface_dir.glob(f"*{SUFFIX}") if p.name[: -len(SUFFIX)] not in known)


def _plant(src: Path, kind: str, out: Path) -> Path:
    img = cv2.imread(str(src))
    quality = 95
    if kind == "mirror":
        img = cv2.flip(img, 1)
    elif kind == "blur":
        img = cv2.GaussianBlur(img, (0, 0), 1.5)
    elif kind == "jpeg30":
        quality = 30
    elif kind in ("shift", "zoom"):  # re-crops: moved by 2 pixels each way, or 4% larger
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0, 1.04 if kind == "zoom" else 1.0)
        m[:, 2] += (2, 2) if kind == "shift" else (0, 0)
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    path = out / f"{kind}-{src.name}"
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


PLANTS = ["mirror", "blur", "jpeg30", "shift", "zoom"]


@pytest.fixture(scope="module")
def deduplicated(chips: list[Path], utkface_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run of ``collapse_duplicates`` over 40 chips, a copy of each kind planted for five of them, the ten
    files of the known copies, and 540 other chips (the face components are fitted on the set itself, which
    needs 500 images or more). Returns (originals, planted, known paths, group id per path, stats)."""
    background = chips[:: len(chips) // N_BACKGROUND][:N_BACKGROUND]
    originals = [p for p in chips[7::503] if p not in background][:40]
    assert len(originals) == 40
    out = tmp_path_factory.mktemp("planted")
    planted = {kind: (originals[k * 3], _plant(originals[k * 3], kind, out)) for k, kind in enumerate(PLANTS)}
    known = [utkface_dir / f"{name}{SUFFIX}" for pair in KNOWN_COPIES for name in pair]
    paths = originals + [copy for _, copy in planted.values()] + known + background
    collapsed, stats = collapse_duplicates([_record(p) for p in paths], progress=False)
    assert len(collapsed) == len(paths)  # no two of these files share bytes
    return originals, planted, known, {r.path: r.group_id for r in collapsed}, stats


def test_planted_copies_join_their_originals_and_distinct_chips_stay_apart(deduplicated) -> None:
    originals, planted, _, group, _ = deduplicated
    for kind, (original, copy) in planted.items():
        assert group[str(copy)] == group[str(original)], f"{kind} copy of {original.name} not grouped"
    by_group = Counter(group[str(p)] for p in originals)
    assert max(by_group.values()) == 1, "distinct chips were grouped together"


def test_known_utkface_copies_that_the_phash_test_missed_are_grouped(deduplicated, utkface_dir: Path) -> None:
    _, _, known, group, _ = deduplicated
    for a, b in KNOWN_COPIES:
        assert group[str(utkface_dir / f"{a}{SUFFIX}")] == group[str(utkface_dir / f"{b}{SUFFIX}")], (a, b)
    assert len({group[str(p)] for p in known}) == len(KNOWN_COPIES)  # and the five pairs are not chained


def test_stats_count_mirror_pairs_and_the_largest_group(deduplicated) -> None:
    *_, group, stats = deduplicated
    assert stats.mirror_pairs >= 3  # the planted mirror and two of the known copies
    assert stats.near_duplicate_pairs >= len(PLANTS) + len(KNOWN_COPIES)
    assert stats.largest_group == max(Counter(group.values()).values()) <= 4  # no chaining
    assert stats.near_duplicate_groups >= len(PLANTS) + len(KNOWN_COPIES)


def test_a_small_set_still_finds_a_mirrored_copy(chips: list[Path], tmp_path: Path) -> None:
    """Too few images to fit the face components: the pHash test applies, in both orientations."""
    originals = chips[100:3000:300]
    mirrored = _plant(originals[0], "mirror", tmp_path)
    group = _groups(originals + [mirrored])
    assert group[str(mirrored)] == group[str(originals[0])]
    assert len({group[str(p)] for p in originals}) == len(originals)


def test_fingerprints_of_an_undecodable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    fp = file_fingerprints([str(bad), str(bad)], progress=False)
    assert not fp.decoded.any() and fp.md5s[0] == fp.md5s[1]
    assert len(near_duplicate_pairs(fp)) == 0 and np.all(fp.thumbs == 0)


def test_splits_made_by_the_older_method_are_made_again(chips: list[Path], tmp_path: Path) -> None:
    records = [_record(p) for p in chips[50:2000:100]]
    splits, stats = load_or_make_splits(records, tmp_path, progress=False)
    stats_file = splits_folder(records, tmp_path) / "dedup.json"
    saved = json.loads(stats_file.read_text())
    assert saved["method"] == METHOD and saved["mirror_pairs"] == stats.mirror_pairs
    old = {k: v for k, v in saved.items() if k not in ("method", "near_duplicate_pairs", "mirror_pairs",
                                                         "largest_group")}
    stats_file.write_text(json.dumps(old))  # as the pHash-only version wrote it
    again, stats_again = load_or_make_splits(records, tmp_path, progress=False)
    assert stats_again == stats and json.loads(stats_file.read_text())["method"] == METHOD
