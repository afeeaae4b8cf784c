"""Reduced JPEG decoding against full decoding, on real photos at their size and upscaled to 12 and 24 megapixels.

For every photo of the shared folder and its upscaled copies (written once to ``--work``), the Predictor with the
reduced decode (the default: a JPEG at the smallest DCT scale that still holds the detector's working size) and
with full decoding (``reduced=False``) predict the faces; faces are matched by box overlap (IoU >= 0.5).
Reported: faces found by each, the median and largest absolute age difference, gender agreement, and the time per
photo end to end (file in, faces out) next to a plain ``cv2.imread`` of the same file, the three timed in turn
(median of ``--rounds``), with the same reduced-decode pipeline detecting through each other installed runtime of
YuNet (OpenCV's was the detector before this project ran YuNet itself) timed in the same rounds. With
``--detect-size`` other than the default, the faces are also matched against
those found at the default size (reduced decode), whose time is measured in the same rounds.

Then faces with labels: ``--mosaics`` 12 MP photos (4000x3000, JPEG quality 92), each 300 UTKFace validation chips
tiled 20 x 15 (the faces about 64 px wide at the 1280 px detection size), predicted by the three pipelines: faces
found, age MAE and gender accuracy against the labels, and how often the reduced decode agrees with the full one.
``--tile 800`` tiles the chips enlarged to 800 px instead (5 x 3 a photo, 4000x2400): large faces, as in a photo
enlarged from a smaller one.

    python scripts/measure/photo_scale.py --markdown docs/logs/photo_scale.md
    python scripts/measure/photo_scale.py --detect-size 640 --markdown docs/logs/photo_scale_640.md
    python scripts/measure/photo_scale.py --mosaics 80 --tile 800 --rounds 1
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

from agegender.benchmark.photos import JPEG_QUALITY, resized_photo
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.inference.backends import available_backends, cpu_info
from agegender.inference.detector import DETECT_SIZE, DETECTOR_RUNTIMES, FaceDetector
from agegender.inference.predictor import Predictor
from agegender.inference.results import ImageResult
from agegender.labels import GENDERS
from agegender.paths import default_path

SIZES_MP = (12, 24)


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
    """(size label, file) of every shared photo and its copies at 12 and 24 MP (the bench's rule:
    :func:`~agegender.benchmark.photos.resized_photo`)."""
    out = []
    for source in sorted(default_path("photos").glob("*.jpg")):
        out.append(("original", source))
        out += [(f"{mp} MP", resized_photo(source, mp, work)) for mp in SIZES_MP]
    return out


MOSAIC_SIZE = (4000, 3000)  # pixels across, down
MOSAIC_TILE = 200  # a chip's side in a mosaic: 20 x 15 chips


def mosaics(work: Path, count: int, tile: int = MOSAIC_TILE
            ) -> list[tuple[Path, list[tuple[float, float, float, int]]]]:
    """``count`` 12 MP photos of UTKFace validation chips (a fixed random order, no chip twice) resized to ``tile``
    px, each with its faces' (centre x, centre y, age, gender); written once to ``work``. (The test split is
    sealed: logs made before 2026-12-07 tiled test chips.)"""
    chips = dataset_splits(DataConfig(dataset="utkface", root=str(default_path("utkface"))), progress=False)["val"]
    cols, rows = MOSAIC_SIZE[0] // tile, MOSAIC_SIZE[1] // tile
    order = np.random.default_rng(0).permutation(len(chips))
    out = []
    for m in range(min(count, len(chips) // (cols * rows))):
        chosen = [chips[i] for i in order[m * cols * rows:(m + 1) * cols * rows]]
        # not the test-chip mosaics of earlier runs
        path = work / (f"val_mosaic_{m}.jpg" if tile == MOSAIC_TILE else f"val_mosaic_{tile}px_{m}.jpg")
        if not path.is_file():
            tiles = [cv2.resize(cv2.imread(r.path), (tile, tile)) for r in chosen]
            grid = np.vstack([np.hstack(tiles[r * cols:(r + 1) * cols]) for r in range(rows)])
            work.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), grid, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        out.append((path, [(tile * (k % cols + 0.5), tile * (k // cols + 0.5), float(r.age), int(r.gender))
                           for k, r in enumerate(chosen)]))
    return out


def on_tile(result: ImageResult, x: float, y: float, tile: int) -> int | None:
    """The index of the face whose box centre lies within the ``tile`` px chip centred at (x, y), or None."""
    for i, face in enumerate(result):
        bx, by, bw, bh = face.box
        if abs(bx + bw / 2 - x) < tile / 2 and abs(by + bh / 2 - y) < tile / 2:
            return i
    return None


def mosaic_lines(predictors: dict[str, Predictor], work: Path, count: int, tile: int = MOSAIC_TILE) -> list[str]:
    """The labelled-faces table: per pipeline, faces found, MAE and gender accuracy; reduced against full."""
    photos_ = mosaics(work, count, tile)
    found = {name: [p.predict(path) for path, _ in photos_] for name, p in predictors.items()}
    total = sum(len(faces) for _, faces in photos_)
    cols, rows = MOSAIC_SIZE[0] // tile, MOSAIC_SIZE[1] // tile
    lines = ["", f"Labelled faces: {len(photos_)} photos of {cols} x {rows} UTKFace validation chips at {tile} px "
             f"({cols * tile}x{rows * tile}, {total} faces).", "",
             "| pipeline | faces found | age MAE | gender accuracy | same gender as full decode | median age diff |",
             "|---|---|---|---|---|---|"]
    for name, results in found.items():
        errors, right, same, diffs = [], [], [], []
        for (_, faces), result, full in zip(photos_, results, found["full"], strict=True):
            for x, y, age, gender in faces:
                i, j = on_tile(result, x, y, tile), on_tile(full, x, y, tile)
                if i is None:
                    continue
                errors.append(abs(result[i].age - age))
                right.append(result[i].gender == GENDERS[gender])
                if j is not None:
                    same.append(result[i].gender == full[j].gender)
                    diffs.append(abs(result[i].age - full[j].age))
        lines.append(f"| {name} | {len(errors)} / {total} | {np.mean(errors):.3f} | {100 * np.mean(right):.2f}% "
                     f"| {100 * np.mean(same):.2f}% ({len(same)}) | {np.median(diffs):.2f} |")
    return lines


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
    parser.add_argument("--mosaics", type=int, default=4,
                        help="12 MP photos of labelled faces, 300 each at the default --tile (0: none)")
    parser.add_argument("--tile", type=int, default=MOSAIC_TILE,
                        help=f"side of each chip in the mosaics (default {MOSAIC_TILE}; 800: large faces)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    default = Predictor(threads=args.threads, detect_size=args.detect_size)
    assert default.detector is not None
    others = [r for r in DETECTOR_RUNTIMES if r not in ("auto", default.detector.runtime)
              and (r != "openvino" or "openvino" in available_backends())]
    predictors = {"reduced": default,
                  "full": Predictor(threads=args.threads, reduced=False, detect_size=args.detect_size),
                  **{r: Predictor(detector=FaceDetector(runtime=r, max_side=args.detect_size, threads=args.threads),
                                  threads=args.threads) for r in others}}
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
                                           "ratio": [], "others": {}, "base": 0,
                                           "base_matched": 0, "base_ages": [], "base_ratio": []})
        stats["found"] += len(a)
        stats["full"] += len(b)
        stats["matched"] += len(pairs)
        stats["ages"] += ages
        stats["same"] += same
        stats["ratio"].append(med["reduced"] / med["imread"])
        for runtime in others:
            ratios, same_faces = stats["others"].setdefault(runtime, ([], [0]))
            ratios.append(med[runtime] / med["imread"])
            same_faces[0] += len(match(a, found[runtime])) == len(a) == len(found[runtime])
        if base is not None:
            stats["base"] += len(base)
            stats["base_matched"] += len(base_pairs)
            stats["base_ages"] += base_ages
            stats["base_ratio"].append(med["default size"] / med["imread"])
    command = "python scripts/measure/photo_scale.py" + (
        f" --detect-size {args.detect_size}" if args.detect_size != DETECT_SIZE else "")
    lines = [f"# Reduced JPEG decoding against full decoding ({datetime.now(UTC):%Y-%m-%d})", "",
             f"`{command}`; faces detected at {args.detect_size} px (YuNet on {default.detector.runtime}); "
             f"{args.threads} threads; CPU {cpu_info().describe()}, {platform.python_version()}; medians of "
             f"{args.rounds} rounds, the {len(times)} timed in turn.", "",
             "| photo | size | pixels | faces reduced / full / matched | age diff median / max | same gender "
             "| imread ms | reduced ms | full ms | " + "".join(f"reduced, YuNet on {r} ms | " for r in others)
             + "reduced / imread |", "|---" * (10 + len(others)) + "|"]
    for name, label, size, na, nb, nm, med_age, max_age, same, med in rows:
        lines.append(f"| {name} | {label} | {size[0]}x{size[1]} | {na} / {nb} / {nm} | {med_age:.2f} / {max_age:.2f} "
                     f"| {same}/{nm} | {med['imread']:.1f} | {med['reduced']:.1f} | {med['full']:.1f} "
                     + "".join(f"| {med[r]:.1f} " for r in others) + f"| {med['reduced'] / med['imread']:.2f} |")
    lines += ["", "| size | faces reduced / full / matched | median age diff | same gender | reduced / imread "
              "(median over photos) |" + "".join(f" YuNet on {r}: / imread, photos with the same faces |"
                                                for r in others),
              "|---" * (5 + len(others)) + "|"]
    for label, s in by_size.items():
        lines.append(f"| {label} | {s['found']} / {s['full']} / {s['matched']} | "
                     f"{np.median(s['ages']) if s['ages'] else 0:.2f} | {s['same']}/{s['matched']} | "
                     f"{statistics.median(s['ratio']):.2f} |"
                     + "".join(f" {statistics.median(ratios):.2f}, {same[0]}/{len(s['ratio'])} |"
                               for ratios, same in (s["others"][r] for r in others)))
    if "default size" in predictors:
        lines += ["", f"Against detection at the default {DETECT_SIZE} px (reduced decode both):", "",
                  f"| size | faces at {args.detect_size} / at {DETECT_SIZE} / matched | median age diff "
                  f"| {args.detect_size} px / imread | {DETECT_SIZE} px / imread |", "|---|---|---|---|---|"]
        for label, s in by_size.items():
            lines.append(f"| {label} | {s['found']} / {s['base']} / {s['base_matched']} | "
                         f"{np.median(s['base_ages']) if s['base_ages'] else 0:.2f} | "
                         f"{statistics.median(s['ratio']):.2f} | {statistics.median(s['base_ratio']):.2f} |")
    if args.mosaics:
        lines += mosaic_lines(predictors, args.work, args.mosaics, args.tile)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
