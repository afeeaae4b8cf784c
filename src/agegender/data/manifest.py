"""CSV manifests: bring your own data, and the format splits are written in.

Columns: ``path`` (absolute, or relative to the manifest), ``age`` (years) or ``age_group`` (label such as
``25-32`` or index 0..7), ``gender`` (``male``/``female``/``m``/``f``/``0``/``1``), optional ``race`` (UTKFace's
codes 0..4) and ``subject`` (the leakage group; defaults to the path). Read as spreadsheets write CSV: a UTF-8 byte
order mark, ``;`` or tab instead of ``,``, spaces around values and column names in any case are all taken; other
columns are ignored (and named in the log).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from agegender.data.records import FaceRecord, ReadReport
from agegender.labels import AGE_GROUPS, MAX_LABEL_AGE, RACES, age_to_group, gender_code, group_of_label

log = logging.getLogger(__name__)

FIELDS = ("path", "age", "age_group", "gender", "race", "subject")


def _parse_group(value: str) -> int:
    return int(value) if value.isdigit() and int(value) < len(AGE_GROUPS) else group_of_label(value)


def _parse_row(row: dict[str, str], base: Path) -> FaceRecord:
    if not row.get("path"):
        raise ValueError("no path")
    path = Path(row["path"])
    path = path if path.is_absolute() else base / path
    age = float(row["age"]) if row.get("age") else None
    if age is not None and not (math.isfinite(age) and 0 <= age <= MAX_LABEL_AGE):
        raise ValueError(f"age {row['age']!r} is not 0 to {MAX_LABEL_AGE} years")
    group = age_to_group(age) if age is not None else (_parse_group(row["age_group"]) if row.get("age_group")
                                                       else None)
    gender = gender_code(row.get("gender") or "")
    if row.get("gender") and gender is None:
        raise ValueError(f"unknown gender {row['gender']!r} (male, female, m, f, 0 or 1)")
    race = int(row["race"]) if row.get("race") else None
    if race is not None and not 0 <= race < len(RACES):
        raise ValueError(f"race {race} is not one of UTKFace's codes 0..{len(RACES) - 1}")
    return FaceRecord(str(path), age, group, gender, race, row.get("subject") or str(path))


def _rows(handle: TextIO, csv_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a manifest, its columns' names stripped and lower-cased and its values stripped
    (empty for a short row), the delimiter ``,``, ``;`` or tab as its header line uses."""
    header = handle.readline()
    delimiter = max(",;\t", key=header.count)
    names = [name.strip().lower() for name in next(csv.reader([header], delimiter=delimiter), [])]
    if "path" not in names:
        raise ValueError(f"{csv_path}: a manifest needs a 'path' column (its columns: "
                         f"{', '.join(repr(n) for n in names) or 'none'}; known: {', '.join(FIELDS)})")
    ignored = [n for n in names if n not in FIELDS]
    if ignored:
        log.info("%s: columns ignored: %s", csv_path, ", ".join(ignored))
    reader = csv.reader(handle, delimiter=delimiter)
    consumed = 1  # the header line, read before the reader
    for values in reader:
        start, consumed = consumed + 1, reader.line_num + 1  # a quoted value may span lines: where the row began
        if not any(v.strip() for v in values):
            continue
        yield start, {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(names)}


def read_manifest(csv_path: str | Path) -> tuple[list[FaceRecord], ReadReport]:
    """Records of a CSV manifest; bad rows (a label that does not parse, no label, no such image file) are skipped
    with their line number and reason."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"manifest not found (or not a file): {csv_path}")
    report = ReadReport()
    records = []
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")  # noqa: SIM115  # closed below
    except OSError as err:
        raise ValueError(f"{csv_path}: cannot read the manifest ({err})") from err
    with handle:
        try:
            rows = list(_rows(handle, csv_path))
        except UnicodeDecodeError as err:
            raise ValueError(f"{csv_path}: not UTF-8 text ({err}); save the manifest as UTF-8") from err
        for line, row in rows:
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
