"""Reduced JPEG decoding against full decoding, on real photos at their size and upscaled to 12 and 24 megapixels.

For every photo of the shared folder and its upscaled copies (written once to ``--work``), the Predictor with the
reduced decode (the default: a JPEG at the smallest DCT scale that still holds the detector's working size) and
with full decoding (``reduced=False``) predict the faces; faces are matched by box overlap (IoU >= 0.5).
Reported: faces found by each, the median and largest absolute age difference, gender agreement, and the time per
photo end to end (file in, faces out) next to a plain ``cv2.imread`` of the same file, the three timed in turn
(median of ``--rounds``), with the same reduced-decode pipeline detecting through OpenCV's YuNet
(``FaceDetector(runtime="opencv")``, the detector before ONNX Runtime ran it) timed in the same rounds. With
``--detect-size`` other than the default, the faces are also matched against
those found at the default size (reduced decode), whose time is measured in the same rounds.

    python scripts/measure/photo_scale.py --markdown docs/logs/photo_scale.md
    python scripts/measure/photo_scale.py --detect-size 640 --markdown docs/logs/photo_scale_640.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from agegender.inference.backends import cpu_info
from agegender.inference.detector import DETECT_SIZE, FaceDetector
from agegender.inference.predictor import Predictor
from agegender.inference.results import ImageResult
from agegender.paths import default_path

SIZES = {"12 MP": (4032, 3024), "24 MP": (5664, 4248)}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def match(reduced: ImageResult, full: ImageResult) -> list[tuple[int, int]]:
    """Pairs (i in reduced, j in full) by greatest overlap, IoU >= 0.5."""
    pairs, used = [], set()
    for i, face in enumerate(reduced):
        best = max(((iou(face.box, other.box), j) for j, other in enumerate(full) if j not in used), default=None)
        if best and best[0] >= 0.5:
            pairs.append((i, best[1]))
            used.add(best[1])
    return pairs


def photos(work: Path) -> list[tuple[str, Path]]:
    """(size label, file) of every shared photo and its upscaled copies (JPEG quality 92)."""
    out = []
    for source in sorted(default_path("photos").glob("*.jpg")):
        out.append(("original", source))
        image = cv2.imread(str(source))
        for label, size in SIZES.items():
            target = work / f"{source.stem}_{label.replace(' ', '')}.jpg"
            if not target.is_file():
                work.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC),
                            [cv2.IMWRITE_JPEG_QUALITY, 92])
            out.append((label, target))
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/agegender_photo_scale"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--detect-size", type=int, default=DETECT_SIZE,
                        help=f"the longer side faces are detected at (default {DETECT_SIZE})")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    predictors = {"reduced": Predictor(threads=args.threads, detect_size=args.detect_size),
                  "full": Predictor(threads=args.threads, reduced=False, detect_size=args.detect_size),
                  "opencv": Predictor(detector=FaceDetector(runtime="opencv", max_side=args.detect_size),
                                      threads=args.threads)}
    if args.detect_size != DETECT_SIZE:
        predictors["default size"] = Predictor(threads=args.threads)
    rows, by_size = [], {}
    for label, path in photos(args.work):
        found = {name: predictor.predict(path) for name, predictor in predictors.items()}
        a, b = found["reduced"], found["full"]
        pairs = match(a, b)
        ages = [abs(a[i].age - b[j].age) for i, j in pairs]
        same = sum(a[i].gender == b[j].gender for i, j in pairs)
        base = found.get("default size")
        base_pairs = match(a, base) if base is not None else []
        base_ages = [abs(a[i].age - base[j].age) for i, j in base_pairs] if base is not None else []
        times: dict[str, list[float]] = {"imread": [], **{name: [] for name in predictors}}
        for _ in range(args.rounds):
            times["imread"].append(timed(lambda p=path: cv2.imread(str(p))))
            for name, predictor in predictors.items():
                times[name].append(timed(lambda p=path, q=predictor: q.predict(p)))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((path.name, label, a.size, len(a), len(b), len(pairs), np.median(ages) if ages else 0.0,
                     max(ages, default=0.0), same, med))
        stats = by_size.setdefault(label, {"found": 0, "full": 0, "matched": 0, "ages": [], "same": 0,
                                           "ratio": [], "opencv_ratio": [], "opencv_same_faces": 0, "base": 0,
                                           "base_matched": 0, "base_ages": [], "base_ratio": []})
        stats["found"] += len(a)
        stats["full"] += len(b)
        stats["matched"] += len(pairs)
        stats["ages"] += ages
        stats["same"] += same
        stats["ratio"].append(med["reduced"] / med["imread"])
        stats["opencv_ratio"].append(med["opencv"] / med["imread"])
        stats["opencv_same_faces"] += len(match(a, found["opencv"])) == len(a) == len(found["opencv"])
        if base is not None:
            stats["base"] += len(base)
            stats["base_matched"] += len(base_pairs)
            stats["base_ages"] += base_ages
            stats["base_ratio"].append(med["default size"] / med["imread"])
    command = "python scripts/measure/photo_scale.py" + (
        f" --detect-size {args.detect_size}" if args.detect_size != DETECT_SIZE else "")
    lines = [f"# Reduced JPEG decoding against full decoding ({datetime.now(UTC):%Y-%m-%d})", "",
             f"`{command}`; faces detected at {args.detect_size} px; "
             f"{args.threads} threads; CPU {cpu_info().describe()}, {platform.python_version()}; medians of "
             f"{args.rounds} rounds, the {len(times)} timed in turn.", "",
             "| photo | size | pixels | faces reduced / full / matched | age diff median / max | same gender "
             "| imread ms | reduced ms | full ms | reduced, OpenCV YuNet ms | reduced / imread |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label, size, na, nb, nm, med_age, max_age, same, med in rows:
        lines.append(f"| {name} | {label} | {size[0]}x{size[1]} | {na} / {nb} / {nm} | {med_age:.2f} / {max_age:.2f} "
                     f"| {same}/{nm} | {med['imread']:.1f} | {med['reduced']:.1f} | {med['full']:.1f} "
                     f"| {med['opencv']:.1f} | {med['reduced'] / med['imread']:.2f} |")
    lines += ["", "| size | faces reduced / full / matched | median age diff | same gender | reduced / imread "
              "(median over photos) | with OpenCV's YuNet / imread | photos with the same faces either way |",
              "|---|---|---|---|---|---|---|"]
    for label, s in by_size.items():
        lines.append(f"| {label} | {s['found']} / {s['full']} / {s['matched']} | "
                     f"{np.median(s['ages']) if s['ages'] else 0:.2f} | {s['same']}/{s['matched']} | "
                     f"{statistics.median(s['ratio']):.2f} | {statistics.median(s['opencv_ratio']):.2f} | "
                     f"{s['opencv_same_faces']}/{len(s['ratio'])} |")
    if "default size" in predictors:
        lines += ["", f"Against detection at the default {DETECT_SIZE} px (reduced decode both):", "",
                  f"| size | faces at {args.detect_size} / at {DETECT_SIZE} / matched | median age diff "
                  f"| {args.detect_size} px / imread | {DETECT_SIZE} px / imread |", "|---|---|---|---|---|"]
        for label, s in by_size.items():
            lines.append(f"| {label} | {s['found']} / {s['base']} / {s['base_matched']} | "
                         f"{np.median(s['base_ages']) if s['base_ages'] else 0:.2f} | "
                         f"{statistics.median(s['ratio']):.2f} | {statistics.median(s['base_ratio']):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
