"""Photos at scale: the end-to-end time of a photo by its size, next to a plain ``cv2.imread`` of the same file,
and the bulk path's throughput with one and two workers.

The shared photos are resized once to each size of the sweep (about that many megapixels, their aspect kept,
JPEG quality 92) into a cache folder; the bulk sets are hard links (copies where links cannot be made) of those
files. Targets from the "Photos at scale" issue: a 12 MP JPEG end to end in at most 0.8x the time of
``cv2.imread``; at least 35 photos/s on 12 MP photos; two workers at least 1.6x one on the shared photos.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from statistics import fmean, median
from typing import Any

import cv2

from agegender.benchmark.timing import time_interleaved
from agegender.inference.bulk import run_bulk
from agegender.inference.collection import collect
from agegender.inference.predictor import Predictor
from agegender.inference.results import ROW_TYPES
from agegender.inference.sinks import open_sink
from agegender.paths import default_cache_dir

SWEEP_SIZES = (0.3, 2.0, 12.0, 24.0)  # megapixels
JPEG_QUALITY = 92
BULK_SIZE = 12.0  # the sweep size whose copies the bulk throughput is measured on, next to the shared photos
BULK_WORKERS = (1, 2)
DEFAULT_BULK_PHOTOS = 60
DEFAULT_BULK_ROUNDS = 3
#: The issue's targets.
TARGET_IMREAD_RATIO = 0.8  # end to end / cv2.imread on a 12 MP JPEG, at most
TARGET_BULK_RATE = 35.0  # photos/s on 12 MP photos, at least
TARGET_WORKER_GAIN = 1.6  # 2 workers / 1 on the shared photos, at least
SHARED_LABEL = "shared photos"


def bulk_label(megapixels: float) -> str:
    return f"{megapixels:g} MP"


def default_work_dir() -> Path:
    return default_cache_dir() / "bench-photos"


def resized_photo(source: Path, megapixels: float, folder: Path) -> Path:
    """``source`` resized to about ``megapixels`` (aspect kept; cubic up, area down), JPEG quality 92, written once
    into ``folder``."""
    target = folder / f"{source.stem}_{megapixels:g}mp.jpg"
    if target.is_file():
        return target
    image = cv2.imread(str(source))
    if image is None:
        raise ValueError(f"cannot read {source}")
    height, width = image.shape[:2]
    factor = math.sqrt(megapixels * 1e6 / (width * height))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.jpg")  # complete files only, even with two benches
    if not cv2.imwrite(str(tmp), resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"cannot write {tmp}")
    tmp.replace(target)
    return target


def _pixels(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def size_sweep(predictor: Predictor, photos: Sequence[Path], sizes: Sequence[float], folder: Path,
               timing: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size: the photos' pixels and faces, and the time of ``predictor.predict(path)`` and of
    ``cv2.imread(path)`` for each photo, all timed interleaved (each photo's share of ``min_seconds`` so that a size
    takes as long as one call of every photo would). ``ratio``: the sum of the end-to-end times over the sum of the
    ``imread`` times; ``photo_ratios``: each photo's own."""
    rows = []
    for size in sizes:  # one size at a time: a call's length differs a hundredfold between sizes
        paths = [resized_photo(p, size, folder) for p in photos]
        calls: dict[tuple[str, int], Callable[[], object]] = {}
        for i, path in enumerate(paths):
            calls["predict", i] = partial(predictor.predict, path)
            calls["imread", i] = partial(cv2.imread, str(path))
        times = time_interleaved(calls, **{**timing, "min_seconds": timing["min_seconds"] / len(paths)})
        predict = [times["predict", i] for i in range(len(paths))]
        imread = [times["imread", i] for i in range(len(paths))]
        rows.append({
            "megapixels": size, "photos": [p.name for p in paths], "pixels": [list(_pixels(p)) for p in paths],
            "faces": sum(len(predictor.predict(p)) for p in paths),
            "predict_ms": fmean(t.median_ms for t in predict), "predict_p90_ms": fmean(t.p90_ms for t in predict),
            "imread_ms": fmean(t.median_ms for t in imread), "imread_p90_ms": fmean(t.p90_ms for t in imread),
            "ratio": sum(t.median_ms for t in predict) / sum(t.median_ms for t in imread),
            "photo_ratios": [p.median_ms / i.median_ms for p, i in zip(predict, imread, strict=True)],
            "runs": min(t.runs for t in predict)})
    return rows


def photo_copies(sources: Sequence[Path], n: int, folder: Path) -> Path:
    """A folder of ``n`` photos cycled from ``sources`` (hard links, else copies), made once."""
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, source in zip(range(n), itertools.cycle(sources)):
        target = tmp / f"{i:04d}_{source.name}"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    tmp.rename(folder)
    return folder


def bulk_throughput(predictor: Predictor, sets: dict[str, list[Path]], n_photos: int, rounds: int, folder: Path
                    ) -> list[dict[str, Any]]:
    """``run_bulk`` with 1 and 2 workers over ``n_photos`` photos of each set, and over one photo (what starting
    costs), alternated over ``rounds`` rounds (median time). ``photos_per_s``: run_bulk's own rate, start included;
    ``steady_photos_per_s``: past the start, ``(n - 1) / (time(n) - time(1))``."""
    if n_photos < 2:
        raise ValueError(f"the bulk throughput needs at least 2 photos, got {n_photos}")
    folders = {(label, n): photo_copies(files, n, folder / "bulk" / f"{label}-{n}")
               for label, files in sets.items() for n in (1, n_photos)}
    with tempfile.TemporaryDirectory(prefix="agegender-bench-bulk-") as tmp:
        outputs = itertools.count()

        def run(photos: Path, workers: int) -> None:
            sink = open_sink(Path(tmp) / f"{next(outputs)}.jsonl", ROW_TYPES)
            summary = run_bulk(predictor, collect([photos]), sink, workers=workers, progress=False)
            if summary.photos != len(list(photos.iterdir())):
                raise RuntimeError(f"run_bulk read {summary.photos} photos of {photos}")

        calls = {(label, workers, n): (lambda f=f, w=workers: run(f, w))
                 for (label, n), f in folders.items() for workers in BULK_WORKERS}
        times = time_interleaved(calls, warmup=0, runs=rounds, min_seconds=0)
    rows = []
    for label in sets:
        for workers in BULK_WORKERS:
            whole, one = times[label, workers, n_photos].median_ms / 1000, times[label, workers, 1].median_ms / 1000
            rows.append({"set": label, "workers": workers, "photos": n_photos, "seconds": whole,
                         "start_seconds": one, "photos_per_s": n_photos / whole,
                         "steady_photos_per_s": (n_photos - 1) / (whole - one) if whole > one else None,
                         "rounds": rounds})
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pixels_range(pixels: Sequence[Sequence[int]]) -> str:
    sizes = sorted({f"{w}x{h}" for w, h in pixels}, key=lambda s: math.prod(map(int, s.split("x"))))
    return sizes[0] if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"


def targets(sweep: Sequence[dict[str, Any]], bulk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets that these figures check: what, target, measured, met."""
    out = []
    twelve = [r for r in sweep if r["megapixels"] == BULK_SIZE]
    if twelve:  # a 12 MP JPEG against an imread of that file: each photo on its own, every one of them held to it
        ratios = twelve[0]["photo_ratios"]
        within = sum(r <= TARGET_IMREAD_RATIO for r in ratios)
        out.append({"what": f"12 MP JPEG end to end / cv2.imread of that file, the median of {len(ratios)} photos "
                            f"({within} of {len(ratios)} within the target; all of them summed: "
                            f"{twelve[0]['ratio']:.2f})",
                    "target": f"<= {TARGET_IMREAD_RATIO} for each", "measured": median(ratios),
                    "met": within == len(ratios)})

    def rate(row: dict[str, Any]) -> float:
        return row["steady_photos_per_s"] or row["photos_per_s"]

    by_set = {(r["set"], r["workers"]): r for r in bulk}
    big = [r for r in bulk if r["set"] == bulk_label(BULK_SIZE)]
    if big:
        top = max(big, key=rate)
        out.append({"what": f"{bulk_label(BULK_SIZE)} photos/s past the start ({top['workers']} worker(s))",
                    "target": f">= {TARGET_BULK_RATE:g}", "measured": rate(top), "met": rate(top) >= TARGET_BULK_RATE})
    if (SHARED_LABEL, 1) in by_set and (SHARED_LABEL, 2) in by_set:
        gain = rate(by_set[SHARED_LABEL, 2]) / rate(by_set[SHARED_LABEL, 1])
        out.append({"what": f"{SHARED_LABEL}: 2 workers / 1, photos/s past the start",
                    "target": f">= {TARGET_WORKER_GAIN}", "measured": gain, "met": gain >= TARGET_WORKER_GAIN})
    return out


def photos_markdown(result: dict[str, Any]) -> list[str]:
    """The sweep, the bulk throughput and the targets as Markdown."""
    sweep, bulk, checks = result["sweep"], result["bulk"], result["targets"]
    lines = ["### Photos at scale", ""]
    if sweep:
        lines += ["End to end per photo (file in, faces out: `Predictor().predict(path)`, reduced JPEG decode) next "
                  "to a plain `cv2.imread` of the same file, each photo timed on its own, all interleaved (median). "
                  f"The shared photos resized to each size, JPEG quality {JPEG_QUALITY}; faces detected at "
                  f"{result.get('detect_size')} px (`--detect-size`). End to end / imread: the photos' times summed, "
                  "and each photo's own ratio (their median, lowest and highest).", "",
                  "| Size | Pixels | Photos | Faces | End to end (ms/photo) | cv2.imread (ms/photo) "
                  "| End to end / imread, summed | per photo: median (range) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['megapixels']:g} MP | {_pixels_range(r['pixels'])} | {len(r['photos'])} | {r['faces']} | "
                  f"{_fmt(r['predict_ms'])} | {_fmt(r['imread_ms'])} | {r['ratio']:.2f} | "
                  f"{median(r['photo_ratios']):.2f} ({min(r['photo_ratios']):.2f}-{max(r['photo_ratios']):.2f}) |"
                  for r in sweep]
        lines.append("")
    if bulk:
        lines += [f"Bulk (`run_bulk`, one process running the model, `--workers` processes decoding, detecting and "
                  f"aligning): {bulk[0]['photos']} photos per run, median of {bulk[0]['rounds']} rounds, the runs "
                  "alternated. Photos/s as run_bulk reports it (its start included), and past the start: "
                  "(n - 1) / (time of n photos - time of 1).", "",
                  "| Photos | Workers | Seconds | 1-photo run (s) | Photos/s | Photos/s past the start |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['set']} | {r['workers']} | {r['seconds']:.2f} | {r['start_seconds']:.2f} | "
                  f"{r['photos_per_s']:.1f} | {_fmt(r['steady_photos_per_s'])} |" for r in bulk]
        lines.append("")
    if checks:
        lines += ["Targets (issue \"Photos at scale\"):", ""]
        lines += [f"- {c['what']}: {c['measured']:.2f} (target {c['target']}): {'met' if c['met'] else 'NOT met'}."
                  for c in checks]
        lines.append("")
    return lines
