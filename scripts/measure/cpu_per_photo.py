"""CPU time per photo of the default pipeline on one core: what a Ray actor or a bulk worker of one CPU costs.

One process, one thread for everything (OpenCV, the detector, the network): each photo of each set is predicted
``--rounds`` times after one warm-up call, and the process's CPU time (user + system, ``time.process_time``) is
divided by the photos. Unlike wall time, that figure hardly moves when other jobs share the machine. Sets: the
shared photos, and their copies upscaled to 12 MP (aspect kept, cubic, JPEG quality 92: the bench's
:func:`~agegender.benchmark.photos.resized_photo`, as ``photo_scale.py`` makes them).

    python scripts/measure/cpu_per_photo.py --markdown docs/logs/cpu_per_photo.md
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2

from agegender.benchmark.photos import resized_photo
from agegender.inference.backends import cpu_info
from agegender.inference.predictor import Predictor
from agegender.paths import default_path


def photo_sets(work: Path) -> dict[str, list[Path]]:
    """The shared photos, and their 12 MP copies (written once to ``work``)."""
    shared = sorted(default_path("photos").glob("*.jpg"))
    return {"shared photos": shared, "12 MP copies": [resized_photo(source, 12, work) for source in shared]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/agegender_cpu_per_photo"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    predictor = Predictor(threads=1)
    assert predictor.detector is not None
    rows = []
    for label, paths in photo_sets(args.work).items():
        faces = sum(len(predictor.predict(p)) for p in paths)  # the warm-up, and the face count
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.rounds):
            for path in paths:
                predictor.predict(path)
        n = args.rounds * len(paths)
        cpu_ms, wall_ms = 1000 * (time.process_time() - cpu) / n, 1000 * (time.perf_counter() - wall) / n
        rows.append(f"| {label} | {len(paths)} | {faces} | {cpu_ms:.1f} | {1000 / cpu_ms:.1f} | {wall_ms:.1f} |")
    lines = [f"# CPU time per photo, one core ({datetime.now(UTC):%Y-%m-%d})", "",
             f"`python scripts/measure/cpu_per_photo.py`; CPU {cpu_info().describe()}, Python "
             f"{platform.python_version()}; YuNet on {predictor.detector.runtime}, the network on "
             f"{predictor.model.session.backend}; {args.rounds} rounds after a warm-up.", "",
             "| photos | files | faces | CPU ms per photo | photos/s per core | wall ms per photo |",
             "|---|---|---|---|---|---|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
