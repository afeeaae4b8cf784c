"""CSV manifests: bring your own data, and the format splits are written in.

Columns: ``path`` (absolute, or relative to the manifest), ``age`` (years) or ``age_group`` (label such as
``25-32`` or index 0..7), ``gender`` (``male``/``female``/``m``/``f``/``0``/``1``), optional ``race`` and
``subject`` (the leakage group; defaults to the path).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from agegender.data.records import FaceRecord, ReadReport
from agegender.labels import AGE_GROUPS, age_to_group, group_of_label

FIELDS = ("path", "age", "age_group", "gender", "race", "subject")
_GENDER = {"male": 0, "m": 0, "0": 0, "female": 1, "f": 1, "1": 1}


def _parse_group(value: str) -> int:
    return int(value) if value.isdigit() and int(value) < len(AGE_GROUPS) else group_of_label(value)


def _parse_row(row: dict[str, str], base: Path) -> FaceRecord:
    path = Path(row["path"])
    path = path if path.is_absolute() else base / path
    age = float(row["age"]) if row.get("age") else None
    group = age_to_group(age) if age is not None else (_parse_group(row["age_group"]) if row.get("age_group")
                                                       else None)
    gender_text = (row.get("gender") or "").strip().lower()
    if gender_text and gender_text not in _GENDER:
        raise ValueError(f"unknown gender {row['gender']!r}")
    race = int(row["race"]) if row.get("race") else None
    return FaceRecord(str(path), age, group, _GENDER.get(gender_text), race, row.get("subject") or str(path))


def read_manifest(csv_path: str | Path) -> tuple[list[FaceRecord], ReadReport]:
    """Records of a CSV manifest; bad rows (a label that does not parse, no label, no such image file) are skipped
    with their line number and reason."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"manifest not found (or not a file): {csv_path}")
    report = ReadReport()
    records = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: a manifest needs a 'path' column (columns: {', '.join(FIELDS)})")
        for line, row in enumerate(reader, start=2):
            try:
                record = _parse_row(row, csv_path.parent)
            except (ValueError, KeyError) as err:
                report.skip(f"bad row: {err}", f"line {line}")
                continue
            if record.age_group is None and record.gender is None:
                report.skip("no label", f"line {line}")
                continue
            if not os.path.isfile(record.path):
                report.skip("image file not found", f"line {line}")
                continue
            records.append(record)
    report.read = len(records)
    return records, report


def write_manifest(records: list[FaceRecord], csv_path: str | Path) -> None:
    """Write records so that :func:`read_manifest` gives them back (group ids become ``subject``)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({
                "path": str(Path(r.path).resolve()), "age": "" if r.age is None else f"{r.age:g}",
                "age_group": "" if r.age_group is None else AGE_GROUPS[r.age_group],
                "gender": "" if r.gender is None else ("male", "female")[r.gender],
                "race": "" if r.race is None else r.race, "subject": r.group_id,
            })
    tmp.replace(csv_path)
