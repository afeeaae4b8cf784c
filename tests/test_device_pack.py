"""scripts/build/device_pack.py and device_teacher.sh: the UTKFace data and its split travel in parts to a machine
without them, which then trains on exactly this machine's split (no deduplication there); a second call resumes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agegender.data import splits as splits_module
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.data.splits import SPLITS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "build"))
import device_pack  # noqa: E402


@pytest.fixture()
def source(utkface_dir: Path, tmp_path: Path) -> Path:
    """80 real chips, one of them twice under another name (an identical copy: collapsed) and one mirrored."""
    import cv2

    folder = tmp_path / "here" / "UTKFace"
    folder.mkdir(parents=True)
    chips = sorted(utkface_dir.glob("*.jpg"))[::250][:80]
    for chip in chips:
        shutil.copy(chip, folder / chip.name)
    age, gender, race, stamp = chips[0].name.split("_")[:4]
    shutil.copy(chips[0], folder / f"{age}_{gender}_{race}_9{stamp[1:]}")
    cv2.imwrite(str(folder / chips[1].name.replace(".jpg", "_m.jpg")), cv2.imread(str(chips[1]))[:, ::-1])
    return folder


def extract(pack: Path, folder: Path, skip: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(sorted(pack.glob("part-*.zip"))):
        if k != skip:
            with zipfile.ZipFile(part) as archive:
                archive.extractall(folder)


def names(splits: dict) -> dict[str, list[tuple]]:
    return {s: [(Path(r.path).name, r.age, r.gender, r.race, r.group_id) for r in splits[s]] for s in SPLITS}


def test_the_split_travels_in_parts_and_is_read_there_without_deduplicating(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = tmp_path / "pack"
    description = device_pack.pack(source, pack, part_mib=0.15, wheels=False)
    here = dataset_splits(DataConfig(root=str(source)), progress=False)
    assert len(list(pack.glob("part-*.zip"))) >= 3 and len(description["files"]) == 82
    assert description["dedup"]["identical_extra_copies"] == 1 and description["dedup"]["mirror_pairs"] >= 1

    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "there-cache"))  # another machine: nothing cached

    def no_dedup(*args: object, **kwargs: object) -> None:
        raise AssertionError("the split was made again instead of read from the pack")

    monkeypatch.setattr(splits_module, "collapse_duplicates", no_dedup)
    there = tmp_path / "there" / "UTKFace"
    extract(pack, there, skip=1)
    with pytest.raises(SystemExit, match="packed files are missing"):
        device_pack.finish(pack, there)
    extract(pack, there)
    device_pack.finish(pack, there)
    carried = dataset_splits(DataConfig(root=str(there)), progress=False)
    assert names(carried) == names(here)
    assert all(Path(r.path).parent == there for s in SPLITS for r in carried[s])


def test_the_device_script_trains_on_the_carried_split_and_resumes(source: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pack = tmp_path / "pack"
    device_pack.pack(source, pack, part_mib=1.0, wheels=False)
    run, out = tmp_path / "run", tmp_path / "out"
    env = {**os.environ, "PACK": str(pack), "DATA": str(tmp_path / "there"), "RUN": str(run), "OUT": str(out),
           "PYTHON": sys.executable, "AGEGENDER_CACHE": str(tmp_path / "there-cache"), "LIMIT": "300"}
    command = ["bash", str(REPO / "scripts" / "build" / "device_teacher.sh"), "configs/flagship/teacher_gpu.yaml",
               "-s", "epochs=1", "-s", "batch_size=8", "-s", "threads=1", "-s", "precision=fp32"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "split written to" in first.stderr and "resumed" not in first.stderr
    assert {p.name for p in out.iterdir()} >= {"best.pt", "history.csv", "summary.yaml", "config.yaml"}
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stderr  # the second call on the same machine goes on with the run, not over it
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 1
