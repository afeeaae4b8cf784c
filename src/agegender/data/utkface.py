"""UTKFace: labels live in the file names, ``age_gender_race_datetime.jpg.chip.jpg``."""

from __future__ import annotations

from pathlib import Path

from agegender.data.records import FaceRecord, ReadReport
from agegender.images import IMAGE_SUFFIXES
from agegender.labels import MAX_LABEL_AGE, RACES


def parse_utkface_name(name: str) -> tuple[int, int, int | None] | None:
    """(age, gender, race or None) from a UTKFace file name, or None when the name is malformed.

    >>> parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg")
    (26, 1, 2)
    >>> parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg")  # three files lack the race field
    (39, 1, None)
    >>> parse_utkface_name("61_3_0_x.jpg") is None
    True
    """
    fields = name.split(".")[0].split("_")
    if len(fields) < 3 or not all(f.isdigit() for f in fields[:2]):
        return None
    age, gender = int(fields[0]), int(fields[1])
    race = int(fields[2]) if len(fields) >= 4 and fields[2].isdigit() else None
    if not 0 <= age <= MAX_LABEL_AGE or gender not in (0, 1) or (race is not None and not 0 <= race < len(RACES)):
        return None
    return age, gender, race


def read_utkface(root: str | Path) -> tuple[list[FaceRecord], ReadReport]:
    """Every labelled chip in a UTKFace folder; malformed names are skipped and counted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"UTKFace folder not found: {root}")
    report = ReadReport()
    records = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        labels = parse_utkface_name(path.name)
        if labels is None:
            report.skip("malformed name", path.name)
            continue
        age, gender, race = labels
        records.append(FaceRecord.from_age(str(path), float(age), gender, race))
    report.read = len(records)
    return records, report
