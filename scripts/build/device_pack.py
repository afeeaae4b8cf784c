"""Carry the UTKFace training data, its split and the missing Python wheels to a machine that has neither, in parts
small enough for the lent GPU machine's transfers (its working tree travels in at most 64 MiB a call; nothing can
be downloaded there), and make that machine read the very split made here (``docs/gpu.md``).

Here, once (needs the package registry for the wheels):

    python scripts/build/device_pack.py pack --out .pack

writes ``.pack/part-000.zip`` ... (the image files, stored with their bytes unchanged, in as few parts of at most
``--part-mib`` as hold them), ``.pack/splits.json.gz`` (every split's records, names relative to the folder, with
their labels and leakage groups, and the deduplication's figures) and ``.pack/wheels/`` (what the GPU image lacks,
for its Python). There, after every part is extracted into one folder (``python3 -m zipfile -e part-NNN.zip DIR``):

    python scripts/build/device_pack.py finish .pack DIR

checks that every file arrived with its size and writes the split manifests where
:func:`agegender.data.datasets.dataset_splits` finds them for ``DIR``, so that no deduplication runs there and the
train, validation and test faces are exactly this machine's.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from agegender.data.datasets import DataConfig, dataset_root, dataset_splits, read_dataset, splits_dir
from agegender.data.records import FaceRecord
from agegender.data.splits import SPLITS, DedupStats, load_or_make_splits, save_splits

log = logging.getLogger("device_pack")
#: What the GPU machines' image lacks of the package's needs (its package list: ``../.library/device/KINDS.md``):
#: pydantic with its own needs, and libjpeg-turbo's binding; pinned to the versions the tests pass with here.
WHEELS = ("pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing-extensions==4.16.0", "simplejpeg==1.9.0")
#: The GPU machines' Python (``python3`` there holds PyTorch).
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
FORMAT = 1
SPLITS_FILE = "splits.json.gz"
_ZIP_ENTRY = 30 + 46  # bytes of a stored zip entry's local and central headers, besides its name (twice)


def pack(root: Path | None, out: Path, part_mib: float, wheels: bool) -> dict[str, Any]:
    """Write the parts, the split and (``wheels``) the wheels into ``out``; returns the pack's description."""
    cfg = DataConfig(dataset="utkface", root=str(root) if root else None)
    folder = dataset_root(cfg)
    records = read_dataset(cfg)
    splits, stats = load_or_make_splits(records, splits_dir(cfg), progress=True)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("part-*.zip"), out / SPLITS_FILE]:
        old.unlink(missing_ok=True)
    files = sorted({Path(r.path).name: Path(r.path) for r in records}.items())
    parts = _write_parts(files, out, part_mib * 2**20)
    description = {
        "format": FORMAT, "source": str(folder), "dedup": stats.to_dict(),
        "files": {name: path.stat().st_size for name, path in files},  # zip's CRCs check the bytes on extracting
        "splits": {name: [_row(r, folder) for r in splits[name]] for name in SPLITS},
    }
    (out / SPLITS_FILE).write_bytes(gzip.compress(json.dumps(description).encode()))
    if wheels:
        _download_wheels(out / "wheels")
    log.info("%d files in %d parts (%s), splits %s", len(files), len(parts),
             ", ".join(f"{p.stat().st_size / 2**20:.1f} MiB" for p in parts),
             ", ".join(f"{name} {len(splits[name])}" for name in SPLITS))
    return description


def finish(pack_dir: Path, folder: Path) -> Path:
    """Check that ``folder`` holds every packed file at its size, then write the packed split for it; returns the
    manifests' folder. Raises SystemExit naming what is missing."""
    description = json.loads(gzip.decompress((pack_dir / SPLITS_FILE).read_bytes()))
    if description.get("format") != FORMAT:
        raise SystemExit(f"{pack_dir / SPLITS_FILE}: pack format {description.get('format')}, expected {FORMAT}")
    missing = [name for name, size in description["files"].items()
               if not (folder / name).is_file() or (folder / name).stat().st_size != size]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(description['files'])} packed files are missing or incomplete in "
                         f"{folder} (e.g. {missing[0]}): extract every part-NNN.zip there first")
    cfg = DataConfig(dataset="utkface", root=str(folder))
    splits = {name: [_record(row, folder) for row in description["splits"][name]] for name in SPLITS}
    written = save_splits(read_dataset(cfg), splits, DedupStats(**description["dedup"]), splits_dir(cfg))
    again = dataset_splits(cfg, progress=False)
    if any(again[name] != splits[name] for name in SPLITS):
        raise SystemExit(f"the split read back from {written} is not the packed one")
    log.info("split written to %s: %s", written, ", ".join(f"{name} {len(splits[name])}" for name in SPLITS))
    return written


def _write_parts(files: list[tuple[str, Path]], out: Path, limit: float) -> list[Path]:
    """The files stored (JPEGs do not compress) in as few zip parts of at most ``limit`` bytes as hold them, of
    about equal size, in name order."""
    sizes = [path.stat().st_size + _ZIP_ENTRY + 2 * len(name) for name, path in files]
    if max(sizes, default=0) > limit:
        raise SystemExit(f"a file is larger than a part ({max(sizes)} > {limit:.0f} bytes): raise --part-mib")
    count = max(1, math.ceil(sum(sizes) / limit))
    share = sum(sizes) / count  # the parts' target size; the last takes the rest
    parts: list[Path] = []
    archive, filled = None, 0.0
    for (name, path), size in zip(files, sizes, strict=True):
        if archive is None or (filled + size > share and len(parts) < count) or filled + size > limit:
            if archive is not None:
                archive.close()
            parts.append(out / f"part-{len(parts):03d}.zip")
            archive, filled = zipfile.ZipFile(parts[-1], "w", zipfile.ZIP_STORED), 0.0
        archive.write(path, arcname=name)
        filled += size
    if archive is not None:
        archive.close()
    return parts


def _row(record: FaceRecord, folder: Path) -> dict[str, Any]:
    row = dataclasses.asdict(record)
    row["path"] = Path(record.path).resolve().relative_to(folder).as_posix()
    return row


def _record(row: dict[str, Any], folder: Path) -> FaceRecord:
    attributes = row.get("attributes")
    return FaceRecord(**{**row, "path": str(folder / row["path"]),
                         "attributes": None if attributes is None else tuple(attributes)})


def _download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *WHEELS], check=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: parts, split and wheels into --out")
    p.add_argument("--root", type=Path, help="UTKFace folder (default: the shared one)")
    p.add_argument("--out", type=Path, default=Path(".pack"))
    p.add_argument("--part-mib", type=float, default=40.0,
                   help="largest part (default 40: with the repository's ~18 MB and the split and wheels, one "
                        "part per 64 MiB call)")
    p.add_argument("--no-wheels", action="store_true", help="skip downloading the wheels")
    f = sub.add_parser("finish", help="there: check the extracted files and write the packed split for them")
    f.add_argument("pack", type=Path, help="the folder holding splits.json.gz")
    f.add_argument("folder", type=Path, help="where every part was extracted")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.root, args.out, args.part_mib, wheels=not args.no_wheels)
    else:
        finish(args.pack, args.folder.resolve())


if __name__ == "__main__":
    main()
