"""Learn the 5-landmark chip template from UTKFace chips and check alignment on held-out chips.

YuNet does not see a face that fills the whole input well, and its landmark estimates shift by a few
pixels with the face's size on the anchor grid. So each chip is pasted into a grey canvas at several
scales (face box ~40 to ~230 px, the sizes it meets in photos) and random sub-stride offsets; a chip's
landmarks are the per-coordinate median over those runs, and the template is the per-coordinate median
over chips.

Held-out chips (not used for learning) are then pasted at one random scale, detected and re-aligned
with ``align_face``; the script reports the landmark residual to the template, how far the composite
chip -> photo -> chip transform is from the identity, and the mean absolute pixel difference between
the re-aligned chip and the original.

    .venv/bin/python scripts/build/learn_chip_template.py            # writes the packaged chip_template.json
    .venv/bin/python scripts/build/learn_chip_template.py --dry-run  # prints the numbers only

Reads the shared folder (``../shared``, see ``agegender.paths``): ``data/UTKFace`` and
``models/yunet/yunet_s_640_640.onnx``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from agegender.inference.align import align_face, similarity_matrix
from agegender.inference.detector import FaceDetector
from agegender.paths import default_path
from agegender.preprocess import CHIP_SIZE

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "src" / "agegender" / "inference" / "chip_template.json"
SCALES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4)
GREY = (127, 127, 127)


def paste(chip: np.ndarray, scale: float, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``chip`` by ``scale`` into a grey canvas at a random offset.

    Returns the canvas and the 2x3 affine mapping chip pixel coordinates to canvas coordinates.
    """
    side = round(chip.shape[1] * scale)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(chip, (side, side), interpolation=interp)
    margin = side // 2 + 16
    ox, oy = margin + rng.randrange(32), margin + rng.randrange(32)
    canvas = cv2.copyMakeBorder(
        small, oy, 2 * margin + 32 - oy, ox, 2 * margin + 32 - ox, cv2.BORDER_CONSTANT, value=GREY
    )
    f = side / chip.shape[1]
    return canvas, np.array([[f, 0, 0.5 * f - 0.5 + ox], [0, f, 0.5 * f - 0.5 + oy]])


class Pasted(NamedTuple):
    """A chip's face found in its canvas: landmarks in chip and canvas coordinates, and the canvas."""

    chip_points: np.ndarray
    canvas_points: np.ndarray
    canvas: np.ndarray
    to_canvas: np.ndarray


def detect_pasted(
    detector: FaceDetector, chip: np.ndarray, scale: float, rng: random.Random
) -> Pasted | None:
    """Paste ``chip`` at ``scale`` and detect the face nearest its centre (None if none is close)."""
    canvas, to_canvas = paste(chip, scale, rng)
    centre = to_canvas @ np.array([chip.shape[1] / 2, chip.shape[0] / 2, 1.0])
    best = None
    for det in detector.detect(canvas):
        x, y, w, h = det.box
        dist = math.hypot(x + w / 2 - centre[0], y + h / 2 - centre[1])
        if dist < 0.25 * chip.shape[1] * scale and (best is None or dist < best[0]):
            best = (dist, det)
    if best is None:
        return None
    canvas_points = best[1].landmarks.astype(np.float64)
    to_chip = cv2.invertAffineTransform(to_canvas)
    chip_points = canvas_points @ to_chip[:, :2].T + to_chip[:, 2]
    return Pasted(chip_points, canvas_points, canvas, to_canvas)


def learn(detector: FaceDetector, files: list[Path], seed: int) -> tuple[np.ndarray, dict]:
    """Template = per-coordinate median over chips of each chip's median over scales."""
    rng = random.Random(seed)
    per_chip, spread, runs = [], [], 0
    for i, path in enumerate(files):
        chip = cv2.imread(str(path))
        found = [r.chip_points for s in SCALES if (r := detect_pasted(detector, chip, s, rng)) is not None]
        runs += len(found)
        if len(found) > len(SCALES) // 2:
            stack = np.stack(found)
            median = np.median(stack, axis=0)
            per_chip.append(median)
            spread.append(np.linalg.norm(stack - median, axis=2).mean())
        if (i + 1) % 250 == 0:
            print(f"  learned from {i + 1}/{len(files)} chips", file=sys.stderr)
    points = np.stack(per_chip)
    template = np.median(points, axis=0)
    stats = {
        "chips_used": len(per_chip),
        "detection_rate": round(runs / (len(files) * len(SCALES)), 4),
        "across_scale_spread_px": round(float(np.mean(spread)), 2),
        "across_chip_mad_px": np.round(np.median(np.abs(points - template), axis=0), 2).tolist(),
    }
    return template, stats


def evaluate(detector: FaceDetector, files: list[Path], template: np.ndarray, seed: int) -> dict:
    """Detect each held-out chip pasted at one random scale, re-align it, compare with the original."""
    rng = random.Random(seed + 1)
    rows, missed = [], 0
    inner = slice(20, CHIP_SIZE - 20)  # away from the border that canvas padding can reach
    grid = np.stack(np.meshgrid(np.arange(20, 180), np.arange(20, 180)), axis=-1).reshape(-1, 2) + 0.0
    for path in files:
        chip = cv2.imread(str(path))
        scale = rng.choice(SCALES)
        found = detect_pasted(detector, chip, scale, rng)
        if found is None:
            missed += 1
            continue
        matrix = similarity_matrix(found.canvas_points, template=template)
        mapped = found.canvas_points @ matrix[:, :2].T + matrix[:, 2]
        aligned = align_face(found.canvas, found.canvas_points, template=template)
        shifted = np.roll(chip, (2, 2), axis=(0, 1))
        # chip -> canvas -> aligned chip: the identity if the chip's landmarks sat exactly on the template
        linear = matrix[:, :2] @ found.to_canvas[:, :2]
        offset = matrix[:, :2] @ found.to_canvas[:, 2] + matrix[:, 2]
        moved = grid @ linear.T + offset
        rows.append(
            {
                "scale": scale,
                "residual": np.linalg.norm(mapped - template, axis=1).mean(),
                "mad": np.abs(aligned[inner, inner].astype(int) - chip[inner, inner]).mean(),
                "shift_mad": np.abs(shifted[inner, inner].astype(int) - chip[inner, inner]).mean(),
                "scale_err": abs(math.sqrt(abs(np.linalg.det(linear))) - 1),
                "rotation": abs(math.degrees(math.atan2(linear[1, 0], linear[0, 0]))),
                "displacement": np.linalg.norm(moved - grid, axis=1).mean(),
            }
        )

    def mean(key: str, subset: list[dict] = rows) -> float:
        return round(float(np.mean([r[key] for r in subset])), 2)

    residual = np.array([r["residual"] for r in rows])
    return {
        "held_out_chips": len(files),
        "missed": missed,
        "landmark_residual_px": {
            "mean": round(float(residual.mean()), 2),
            "median": round(float(np.median(residual)), 2),
            "p95": round(float(np.percentile(residual, 95)), 2),
        },
        "chip_to_chip_transform": {
            "scale_mean_abs_error_pct": round(100 * mean("scale_err"), 2),
            "rotation_mean_abs_deg": mean("rotation"),
            "mean_pixel_displacement_px": mean("displacement"),
        },
        "pixel_mad_inner160": {
            "realigned_vs_original": mean("mad"),
            "reference_original_shifted_2px": mean("shift_mad"),
        },
        "by_scale": {
            str(s): {"n": len(sub), "displacement_px": mean("displacement", sub), "mad": mean("mad", sub)}
            for s in SCALES
            if (sub := [r for r in rows if r["scale"] == s])
        },
    }


def to_json(data: dict) -> str:
    """Indented JSON with lists of numbers kept on one line."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[\s+([-0-9., \n]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=default_path("utkface"))
    parser.add_argument("--model", type=Path, default=default_path("yunet"))
    parser.add_argument("--n-learn", type=int, default=2000, help="chips to learn the template from")
    parser.add_argument("--n-eval", type=int, default=500, help="held-out chips to evaluate on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--dry-run", action="store_true", help="print the result, do not write --out")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"UTKFace chips not found at {args.data}")

    files = sorted(args.data.glob("*.jpg"))
    random.Random(args.seed).shuffle(files)
    learn_files, eval_files = files[: args.n_learn], files[args.n_learn : args.n_learn + args.n_eval]
    detector = FaceDetector(args.model, score_threshold=0.5, max_side=None, min_face=0)

    start = time.perf_counter()
    template, stats = learn(detector, learn_files, args.seed)
    validation = evaluate(detector, eval_files, template, args.seed)
    result = {
        "frame": [CHIP_SIZE, CHIP_SIZE],
        "landmarks": ["right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth"],
        "points": np.round(template, 2).tolist(),
        "made_by": {
            "script": "scripts/build/learn_chip_template.py",
            "detector": f"YuNet {args.model.name} (= OpenCV Zoo face_detection_yunet_2023mar.onnx), "
            f"cv2 {cv2.__version__}",
            "data": "UTKFace aligned & cropped 200x200 chips",
            "chips": len(learn_files),
            "seed": args.seed,
            "scales": list(SCALES),
            "method": "chip pasted in a grey canvas at each scale with random offset; per-chip median "
            "over scales, then per-coordinate median over chips",
            "date": dt.date.today().isoformat(),
            **stats,
        },
        "validation": validation,
    }
    print(to_json(result))
    print(f"took {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if not args.dry_run:
        args.out.write_text(to_json(result) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
