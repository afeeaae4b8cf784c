"""Deterministic, group-exclusive train/val/test and k-fold splits over groups of records.

Each group lands in one split by a hash of its id, and a group's id is the file name of its first member in sorted
order (``dup:NAME``; where files in different folders share a name, their paths below the records' common folder
tell them apart), so a split never depends on file order or on where the data set lies, and adding images moves no
existing group (unless a new image joins two groups into one, or takes an existing file's name). Byte-identical
copies are collapsed into one record (label rule below); near duplicates (mirrored, blurred, re-encoded or
re-cropped copies: :mod:`agegender.data.dedup`) stay separate but share a group id.

Label rule for identical copies whose names disagree: the median age (for copies labelled by age group only, the
lower median group) and the majority gender; a group whose copies split evenly on gender is dropped, since its
true gender cannot be told. The record kept is the copy whose path sorts first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agegender.data.dedup import METHOD, duplicate_groups, file_fingerprints, near_duplicate_pairs
from agegender.data.manifest import read_manifest, write_manifest
from agegender.data.records import FaceRecord
from agegender.labels import age_to_group

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

log = logging.getLogger(__name__)


class LeakageError(AssertionError):
    """A leakage group appears in more than one split."""


@dataclass(frozen=True)
class DedupStats:
    images: int
    identical_groups: int  # groups of byte-identical files with more than one member
    identical_extra_copies: int
    label_conflicts: int  # identical groups whose file names disagree on a label
    dropped_gender_ties: int
    undecodable: int  # files that are empty or no image OpenCV decodes: left out of every split
    near_duplicate_groups: int  # groups (beyond identical copies) holding several distinct images
    groups: int
    near_duplicate_pairs: int  # pairs of distinct files judged copies of one photo
    mirror_pairs: int  # of which they match as mirror images of each other
    largest_group: int  # records in the largest group

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _bucket(group_id: str, salt: str = "agegender-v1") -> float:
    digest = hashlib.sha1(f"{salt}:{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _member_names(records: Sequence[FaceRecord]) -> list[str]:
    """How group ids name each record: its file name, or, where another record's file has the same name (two
    folders' ``img0.jpg``), its path below the records' common folder: two groups must never share an id, or the
    splitter puts them on one side as one group.

    >>> [str(n) for n in _member_names([FaceRecord.from_age(p, 30, 0) for p in ("d/a/x.jpg", "d/b/x.jpg", "d/y.jpg")])]
    ['a/x.jpg', 'b/x.jpg', 'y.jpg']
    """
    names = [Path(r.path).name for r in records]
    counts = Counter(names)
    if all(counts[n] == 1 for n in names):
        return names
    root = os.path.commonpath([os.path.dirname(os.path.abspath(r.path)) for r in records])
    return [name if counts[name] == 1 else Path(os.path.relpath(os.path.abspath(r.path), root)).as_posix()
            for name, r in zip(names, records, strict=True)]


def collapse_duplicates(records: Sequence[FaceRecord], max_bits: int = 6, min_corr: float = 0.9,
                        progress: bool = True) -> tuple[list[FaceRecord], DedupStats]:
    """One record per byte-identical set (label rule in the module doc); group ids become the union of the
    records' own groups (subjects) and their duplicate groups. ``max_bits`` and ``min_corr`` only matter for sets
    too small to fit the near-duplicate test (see :mod:`agegender.data.dedup`)."""
    fp = file_fingerprints([r.path for r in records], progress=progress)
    pairs = near_duplicate_pairs(fp, max_bits=max_bits, min_corr=min_corr)
    group = duplicate_groups(fp, subjects=[r.group_id for r in records], pairs=pairs)
    md5s = fp.md5s
    first_name: dict[int, str] = {}
    for g, name in zip(group.tolist(), _member_names(records), strict=True):
        first_name[g] = min(first_name.get(g, name), name)
    by_md5: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(md5s):
        by_md5[digest].append(i)
    out, conflicts, ties, undecodable = [], 0, 0, []
    for members in by_md5.values():
        rec = min((records[i] for i in members), key=lambda r: r.path)  # whatever the order of the records
        if not fp.decoded[members[0]]:  # byte-identical copies decode alike
            undecodable += [records[i].path for i in members]
            continue
        if len(members) > 1:
            copies = [records[i] for i in members]
            ages = [c.age for c in copies if c.age is not None]
            groups = sorted(c.age_group for c in copies if c.age is None and c.age_group is not None)
            genders = Counter(c.gender for c in copies if c.gender is not None)
            by_age = {age_to_group(float(np.median(ages)))} if ages else set()
            if len(set(ages)) > 1 or len(set(groups) | by_age) > 1 or len(genders) > 1:
                conflicts += 1
            top = genders.most_common(2)
            if len(top) == 2 and top[0][1] == top[1][1]:
                ties += 1
                continue
            age = float(np.median(ages)) if ages else None
            median_group = age_to_group(age) if age is not None else groups[(len(groups) - 1) // 2] if groups else None
            rec = replace(rec, age=age, age_group=median_group, gender=top[0][0] if top else None)
        out.append(replace(rec, group_id=f"dup:{first_name[int(group[members[0]])]}"))
    sizes = Counter(r.group_id for r in out)
    multi_identical = [m for m in by_md5.values() if len(m) > 1]
    stats = DedupStats(
        images=len(records), identical_groups=len(multi_identical),
        identical_extra_copies=sum(len(m) - 1 for m in multi_identical), label_conflicts=conflicts,
        dropped_gender_ties=ties, undecodable=len(undecodable),
        near_duplicate_groups=sum(1 for s in sizes.values() if s > 1),
        groups=len(sizes), near_duplicate_pairs=len(pairs), mirror_pairs=int(pairs.mirrored.sum()),
        largest_group=max(sizes.values(), default=0))
    if undecodable:
        log.warning("%d file(s) are empty or not an image that can be decoded, left out of the splits: %s%s",
                    len(undecodable), ", ".join(undecodable[:5]), " ..." if len(undecodable) > 5 else "")
    return out, stats


def split_records(records: Sequence[FaceRecord],
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> dict[str, list[FaceRecord]]:
    """Train/val/test by group hash; every group on one side."""
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    edges = np.cumsum(fractions)
    out: dict[str, list[FaceRecord]] = {name: [] for name in SPLITS}
    for r in records:
        k = min(int(np.searchsorted(edges, _bucket(r.group_id), side="right")), len(SPLITS) - 1)
        out[SPLITS[k]].append(r)
    check_no_leakage(out)
    return out


def kfold_records(records: Sequence[FaceRecord], k: int) -> list[list[FaceRecord]]:
    """k group-exclusive folds by group hash."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    folds: list[list[FaceRecord]] = [[] for _ in range(k)]
    for r in records:
        folds[min(int(_bucket(r.group_id, salt="agegender-kfold") * k), k - 1)].append(r)
    check_no_leakage({f"fold{i}": f for i, f in enumerate(folds)})
    return folds


def check_no_leakage(splits: Mapping[str, Sequence[FaceRecord]]) -> None:
    """Raise LeakageError if any group id appears in two splits."""
    seen: dict[str, str] = {}
    for name, recs in splits.items():
        for r in recs:
            other = seen.setdefault(r.group_id, name)
            if other != name:
                raise LeakageError(f"group {r.group_id!r} ({r.path}) is in both {other!r} and {name!r}")


def split_fingerprint(splits: Mapping[str, Sequence[FaceRecord]]) -> str:
    """A digest of which faces (by path) are in which of the :data:`SPLITS`: a run on other faces differs in it."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(f"{split}\n".encode())
        for path in sorted(r.path for r in splits[split]):
            digest.update(f"{path}\n".encode())
    return digest.hexdigest()[:16]


def dataset_key(records: Sequence[FaceRecord]) -> str:
    """Fingerprint of a record list, every label and group of it, and its files' sizes and mtimes: changes whenever
    the data does (a manifest whose subjects or groups were edited must not read back the splits of the old ones)."""
    h = hashlib.sha1()
    for r in records:
        st = Path(r.path).stat()
        h.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}|{r.age}|{r.age_group}|{r.gender}|{r.race}|{r.group_id}|"
                 f"{r.attributes}\n".encode())
    return h.hexdigest()[:16]


def splits_folder(records: Sequence[FaceRecord], out_dir: str | Path) -> Path:
    """Where the split manifests of these records live: ``out_dir/<dataset key>/``."""
    return Path(out_dir) / dataset_key(records)


def load_or_make_splits(records: Sequence[FaceRecord], out_dir: str | Path, max_bits: int = 6,
                        progress: bool = True) -> tuple[dict[str, list[FaceRecord]], DedupStats]:
    """Split manifests under :func:`splits_folder` (made once, re-read after), with dedup statistics. Manifests
    made by another deduplication method (``method`` in ``dedup.json``) are made again."""
    folder = splits_folder(records, out_dir)
    stats_file = folder / "dedup.json"
    if stats_file.is_file() and all((folder / f"{s}.csv").is_file() for s in SPLITS):
        saved = json.loads(stats_file.read_text())
        if saved.pop("method", None) == METHOD and saved.keys() == DedupStats.__dataclass_fields__.keys():
            splits = {s: read_manifest(folder / f"{s}.csv")[0] for s in SPLITS}
            check_no_leakage(splits)
            return splits, DedupStats(**saved)
    collapsed, stats = collapse_duplicates(records, max_bits=max_bits, progress=progress)
    splits = split_records(collapsed)
    save_splits(records, splits, stats, out_dir)
    return splits, stats


def save_splits(records: Sequence[FaceRecord], splits: Mapping[str, Sequence[FaceRecord]], stats: DedupStats,
                out_dir: str | Path) -> Path:
    """Write ``splits`` of ``records`` where :func:`load_or_make_splits` finds them (their folder, returned):
    the splits made once here, or the same splits carried to another machine's copy of the files."""
    folder = splits_folder(records, out_dir)
    for name in SPLITS:
        write_manifest(list(splits[name]), folder / f"{name}.csv")
    (folder / "dedup.json").write_text(json.dumps({"method": METHOD, **stats.to_dict()}, indent=2))
    return folder
