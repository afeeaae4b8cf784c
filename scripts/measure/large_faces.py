"""Large faces: the default pipeline on UTKFace validation chips shown as faces far larger than the chip.

Each of ``--faces`` validation chips (a fixed random choice) is upscaled to ``--side`` pixels (cubic) and pasted on
a grey 1600 x 1200 canvas (JPEG quality 92, written once to ``--work``), so that the face is shrunk by about 4x
onto its chip and alignment's anti-aliasing prefilter (``agegender.inference.align``) is what is measured. The
default Predictor (flip averaging) predicts each file; the largest face found is scored against the chip's
labels: faces found, age MAE, gender accuracy, time per photo. ``--save`` keeps the per-face predictions, and
``--compare`` another run's file gives how far two versions' predictions are apart (median and largest age
difference, genders that differ), e.g. the code of two commits (``PYTHONPATH=<worktree>/src``).

    python scripts/measure/large_faces.py --save /tmp/new.npz --compare /tmp/old.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from agegender.benchmark.photos import JPEG_QUALITY
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.data.records import FaceRecord
from agegender.inference.predictor import Predictor
from agegender.paths import default_path

CANVAS = (1200, 1600)  # height, width


def photos(work: Path, faces: int, side: int) -> tuple[list[FaceRecord], list[Path]]:
    """The chosen validation records and their large-face photos."""
    val = dataset_splits(DataConfig(dataset="utkface", root=str(default_path("utkface"))), progress=False)["val"]
    chosen = [val[i] for i in np.random.default_rng(0).permutation(len(val))[:faces]]
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, record in enumerate(chosen):
        path = work / f"{i:04d}_{side}.jpg"
        if not path.is_file():
            canvas = np.full((*CANVAS, 3), 128, np.uint8)
            top, left = (CANVAS[0] - side) // 2, (CANVAS[1] - side) // 2
            canvas[top:top + side, left:left + side] = cv2.resize(cv2.imread(record.path), (side, side),
                                                                 interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        paths.append(path)
    return chosen, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/agegender_large_faces"))
    parser.add_argument("--faces", type=int, default=300)
    parser.add_argument("--side", type=int, default=800, help="the face chip's side in the photo, pixels")
    parser.add_argument("--save", type=Path, help="write the per-face predictions here (.npz)")
    parser.add_argument("--compare", type=Path, help="another run's --save file to compare with")
    args = parser.parse_args()
    if not 0 < args.side <= min(CANVAS):
        parser.error(f"--side must lie in 1..{min(CANVAS)}")
    records, paths = photos(args.work, args.faces, args.side)
    predictor = Predictor()
    ages, female, seconds = np.full(len(paths), np.nan), np.full(len(paths), np.nan), 0.0
    for i, path in enumerate(paths):
        start = time.perf_counter()
        result = predictor.predict(path)
        seconds += time.perf_counter() - start
        if len(result):
            face = max(result, key=lambda f: f.box[2])
            ages[i], female[i] = face.age, float(face.gender == "female")
    true_age = np.array([r.age for r in records], float)
    true_female = np.array([r.gender == 1 for r in records], float)
    found = ~np.isnan(ages)
    mae, gender = np.abs(ages - true_age)[found].mean(), 100 * (female == true_female)[found].mean()
    print(f"{args.faces} validation chips as {args.side} px faces: found {found.sum()}, MAE {mae:.3f}, "
          f"gender {gender:.1f}%, {1000 * seconds / len(paths):.1f} ms per photo")
    if args.save:
        np.savez(args.save, ages=ages, female=female)
    if args.compare:
        other = np.load(args.compare)
        if len(other["ages"]) != len(ages):
            raise SystemExit(f"{args.compare} holds {len(other['ages'])} faces, this run {len(ages)}: run both with "
                             "the same --faces")
        both = found & ~np.isnan(other["ages"])
        diff = np.abs(ages - other["ages"])[both]
        print(f"against {args.compare}: {both.sum()} faces found by both, ages a median {np.median(diff):.3f} years "
              f"apart (largest {diff.max():.3f}), {int((female != other['female'])[both].sum())} genders differ")


if __name__ == "__main__":
    main()
