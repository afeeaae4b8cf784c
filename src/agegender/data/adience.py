"""Adience: ``fold_k_data.txt`` metadata, the official subject-exclusive folds and Levi-Hassner's per-fold lists.

Images may be in either release layout; both are looked up for every row:
``aligned/<user>/landmark_aligned_face.<id>.<name>`` or ``faces/<user>/coarse_tilt_aligned_face.<id>.<name>``
(the image root may also be the ``aligned``/``faces`` folder itself).
"""

from __future__ import annotations

import csv
from pathlib import Path

from agegender.data.records import FaceRecord, ReadReport
from agegender.labels import adience_age_group, gender_code

LAYOUTS = (("aligned", "landmark_aligned_face"), ("faces", "coarse_tilt_aligned_face"))
NUM_FOLDS = 5


def find_image(image_root: Path, user: str, face_id: str, name: str) -> Path | None:
    """Path of one Adience face in whichever layout exists under ``image_root``."""
    for folder, prefix in LAYOUTS:
        file_name = f"{prefix}.{face_id}.{name}"
        for base in (image_root / folder, image_root):
            candidate = base / user / file_name
            if candidate.is_file():
                return candidate
    return None


def read_adience_fold(fold_file: str | Path, image_root: str | Path,
                      report: ReadReport | None = None) -> list[FaceRecord]:
    """Records of one ``fold_k_data.txt`` whose image exists; the subject (Flickr user) is the group id.

    Rows with unknown gender or no usable age are dropped (seed 001's cleaning); missing images are reported.
    """
    report = report if report is not None else ReadReport()
    image_root = Path(image_root)
    records = []
    with open(fold_file, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            key = f"{row['user_id']}/{row['face_id']}.{row['original_image']}"
            gender = gender_code(row.get("gender") or "")  # "u" and blank: None, dropped
            group = adience_age_group(row.get("age") or "")
            if gender is None:
                report.skip("unknown gender", key)
                continue
            if group is None:
                report.skip("no age", key)
                continue
            path = find_image(image_root, row["user_id"], row["face_id"], row["original_image"])
            if path is None:
                report.skip("image missing", key)
                continue
            records.append(FaceRecord(str(path), None, group, gender, None, row["user_id"]))
    report.read += len(records)
    return records


def read_adience(folds_dir: str | Path, image_root: str | Path) -> tuple[dict[int, list[FaceRecord]], ReadReport]:
    """All five official folds: ``{k: records}``. ``folds_dir`` holds ``original_txt_files/fold_k_data.txt``
    (or the fold files directly)."""
    folds_dir = Path(folds_dir)
    base = folds_dir / "original_txt_files" if (folds_dir / "original_txt_files").is_dir() else folds_dir
    report = ReadReport()
    folds = {}
    for k in range(NUM_FOLDS):
        fold_file = base / f"fold_{k}_data.txt"
        if not fold_file.is_file():
            raise FileNotFoundError(f"Adience fold file not found: {fold_file}")
        folds[k] = read_adience_fold(fold_file, image_root, report)
    return folds, report


def read_levi_hassner_list(list_file: str | Path, image_root: str | Path, task: str,
                           report: ReadReport | None = None) -> list[FaceRecord]:
    """Records of one Levi-Hassner per-fold list (``<user>/landmark_aligned_face.<id>.<name> <label>``).

    ``task`` is ``"age"`` (label is the group 0..7) or ``"gender"`` (0 male, 1 female).
    """
    if task not in ("age", "gender"):
        raise ValueError(f"task must be 'age' or 'gender', got {task!r}")
    report = report if report is not None else ReadReport()
    image_root = Path(image_root)
    records = []
    for line in Path(list_file).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rel, label = line.rsplit(maxsplit=1)
        user, file_name = rel.split("/", 1)
        _, face_id, name = file_name.split(".", 2)
        path = find_image(image_root, user, face_id, name)
        if path is None:
            report.skip("image missing", rel)
            continue
        value = int(label)
        age_group, gender = (value, None) if task == "age" else (None, value)
        records.append(FaceRecord(str(path), None, age_group, gender, None, user))
    report.read += len(records)
    return records
