"""CelebA (Liu et al., ICCV 2015): aligned celebrity faces with 40 binary attributes, identities and an official
train/val/test partition, in the layout its authors publish (mmlab.ie.cuhk.edu.hk/projects/CelebA.html;
non-commercial research only):

- ``img_align_celeba/000001.jpg`` ... (178 x 218 aligned faces; the ``img_align_celeba_png/`` release also reads);
- ``list_attr_celeba.txt``: the number of images, a line of the 40 attribute names, then one line per image,
  ``000001.jpg -1  1  1 -1 ...`` (1 present, -1 absent);
- ``list_eval_partition.txt``: ``000001.jpg 0`` (0 train, 1 val, 2 test);
- ``identity_CelebA.txt`` (optional): ``000001.jpg 2880``, the person, which becomes the record's group id.

Each may sit directly in the root or in the release's ``Img/``, ``Anno/`` and ``Eval/`` folders. Gender comes from
the ``Male`` attribute; CelebA has no ages. The official partition is the split; without the partition file, the
records are split 80/10/10 by a hash of their identity (:func:`agegender.data.splits.split_records`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from agegender.data.records import FaceRecord, ReadReport
from agegender.data.splits import SPLITS, split_records
from agegender.labels import FEMALE, MALE
from agegender.outputs import ATTRIBUTES, MALE_ATTRIBUTE

log = logging.getLogger(__name__)
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
IMAGE_FOLDERS = ("img_align_celeba", "img_align_celeba_png")
#: Where the release keeps each file, besides the root itself.
SUBFOLDERS = {ATTRIBUTE_FILE: "Anno", IDENTITY_FILE: "Anno", PARTITION_FILE: "Eval"}
_VALUES = {"1": 1, "-1": 0, "0": 0}


def find_file(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/<its release folder>/name``, whichever exists."""
    for base in (root, root / SUBFOLDERS.get(name, "")):
        if (base / name).is_file():
            return base / name
    return None


def image_folder(root: Path) -> Path | None:
    """The aligned images' folder: ``img_align_celeba`` (or ``_png``) in the root or in ``Img/``; a copy unpacked
    into a folder of the same name is found too."""
    for base in (root, root / "Img"):
        for name in IMAGE_FOLDERS:
            folder = base / name
            if folder.is_dir():
                return folder / name if (folder / name).is_dir() else folder
    return None


def parse_attributes(text: str, report: ReadReport) -> dict[str, tuple[int, ...]]:
    """``list_attr_celeba.txt`` as ``{file: 40 values 1/0 in ATTRIBUTES order}``; the header's names may come in
    any order but must be CelebA's 40. Malformed rows are skipped and reported.

    >>> header = " ".join(reversed(ATTRIBUTES))
    >>> rows = parse_attributes(f"1\\n{header}\\n000001.jpg " + " ".join(["-1"] * 39 + ["1"]), ReadReport())
    >>> rows["000001.jpg"][0], sum(rows["000001.jpg"])  # the last column named 5_o_Clock_Shadow
    (1, 1)
    """
    lines = text.splitlines()
    if len(lines) < 2:
        raise ValueError(f"{ATTRIBUTE_FILE}: expected a count line and a line of attribute names")
    names = lines[1].split()
    if sorted(names) != sorted(ATTRIBUTES):
        extra, missing = sorted(set(names) - set(ATTRIBUTES)), sorted(set(ATTRIBUTES) - set(names))
        raise ValueError(f"{ATTRIBUTE_FILE}: the header does not name CelebA's 40 attributes (unknown: "
                         f"{', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})")
    order = [names.index(name) for name in ATTRIBUTES]
    out: dict[str, tuple[int, ...]] = {}
    rows = [fields for fields in map(str.split, lines[2:]) if fields]
    for fields in rows:
        values = [_VALUES.get(v) for v in fields[1:]]
        if len(values) != len(names) or None in values:
            report.skip("bad attribute row", fields[0])
            continue
        out[fields[0]] = tuple(values[i] for i in order)  # type: ignore[misc]
    announced = lines[0].strip()
    if announced.isdigit() and int(announced) != len(rows):
        log.warning("%s announces %s images and lists %d", ATTRIBUTE_FILE, announced, len(rows))
    return out


def parse_pairs(path: Path) -> dict[str, str]:
    """A ``file value`` per line (the partition and identity files)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2:
            out[fields[0]] = fields[1]
    return out


def read_celeba(root: str | Path) -> tuple[dict[str, list[FaceRecord]], ReadReport]:
    """CelebA's records by split (``train``, ``val``, ``test``): the official partition, or an identity-exclusive
    hash split without it. Images missing from the image folder are skipped and reported."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CelebA folder not found: {root}")
    attribute_file, images = find_file(root, ATTRIBUTE_FILE), image_folder(root)
    if attribute_file is None or images is None:
        lacking = [what for what, found in ((ATTRIBUTE_FILE, attribute_file), ("img_align_celeba/", images))
                   if found is None]
        raise FileNotFoundError(f"{root} is not a CelebA folder: no {' and no '.join(lacking)} in it or in its "
                                "Anno/ and Img/ folders (docs/celeba.md says how to get the data set)")
    report = ReadReport()
    attributes = parse_attributes(attribute_file.read_text(encoding="utf-8"), report)
    partition_file, identity_file = find_file(root, PARTITION_FILE), find_file(root, IDENTITY_FILE)
    partition = parse_pairs(partition_file) if partition_file else None
    identities = parse_pairs(identity_file) if identity_file else {}
    on_disk = {entry.name: entry.path for entry in os.scandir(images)}
    splits: dict[str, list[FaceRecord]] = {name: [] for name in SPLITS}
    records = []
    for name, values in attributes.items():
        path = on_disk.get(name) or on_disk.get(f"{Path(name).stem}.png")
        if path is None:
            report.skip("image missing", name)
            continue
        identity = identities.get(name)
        record = FaceRecord(path, None, None, MALE if values[MALE_ATTRIBUTE] else FEMALE, None,
                            f"celeba:{identity}" if identity else path, values)
        if partition is None:
            records.append(record)
            continue
        part = partition.get(name)
        if part not in ("0", "1", "2"):
            report.skip("not in the partition", name)
            continue
        splits[SPLITS[int(part)]].append(record)
    if partition is None:
        log.info("%s: no %s: an 80/10/10 split by %s", root, PARTITION_FILE,
                 "identity" if identities else "image")
        splits = split_records(records)
    elif identities:
        _warn_shared_identities(splits)
    report.read = sum(map(len, splits.values()))
    return splits, report


def _warn_shared_identities(splits: dict[str, list[FaceRecord]]) -> None:
    """Log identities the official partition puts in more than one split (it is published identity-exclusive)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for name, records in splits.items():
        for r in records:
            seen[r.group_id].add(name)
    shared = sorted(group for group, names in seen.items() if len(names) > 1)
    if shared:
        log.warning("CelebA's partition puts %d identities in more than one split (e.g. %s): kept as published",
                    len(shared), ", ".join(shared[:3]))
