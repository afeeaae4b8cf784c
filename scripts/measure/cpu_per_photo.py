"""CPU time per photo of the default pipeline on one core: what a Ray actor or a bulk worker of one CPU costs.

One process, one thread for everything (OpenCV, the detector, the network): each photo of each set is predicted
``--rounds`` times after one warm-up call, and the process's CPU time (user + system, ``time.process_time``) is
divided by the photos. Unlike wall time, that figure hardly moves when other jobs share the machine. Sets: the
shared photos, and their copies upscaled to 12 MP (aspect kept, cubic, JPEG quality 92: the bench's
:func:`~agegender.benchmark.photos.resized_photo`, as ``photo_scale.py`` makes them).

    python scripts/measure/cpu_per_photo.py --markdown docs/logs/cpu_per_photo.md

``--processes N`` runs the same in N processes at once (one row each): where N processes of one thread are each as
fast as one alone, the machine gives them N cores (OpenVINO once pinned them all to one core: docs/photos.md, "The bulk
path").
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2

from agegender.benchmark.photos import resized_photo
from agegender.inference.backends import cpu_info
from agegender.inference.predictor import Predictor
from agegender.paths import default_path


def photo_sets(work: Path) -> dict[str, list[Path]]:
    """The shared photos, and their 12 MP copies (written once to ``work``)."""
    shared = sorted(default_path("photos").glob("*.jpg"))
    return {"shared photos": shared, "12 MP copies": [resized_photo(source, 12, work) for source in shared]}


def measure(work: Path, rounds: int, barrier: Any = None) -> tuple[str, list[tuple[str, int, int, float, float]]]:
    """In this process, one thread: (what ran, [(set, files, faces, CPU ms per photo, wall ms per photo)]);
    ``barrier`` (processes measured at once) is waited on before each set is timed."""
    cv2.setNumThreads(1)
    predictor = Predictor(threads=1)
    assert predictor.detector is not None
    rows = []
    for label, paths in photo_sets(work).items():
        faces = sum(len(predictor.predict(p)) for p in paths)  # the warm-up, and the face count
        if barrier is not None:
            barrier.wait()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            for path in paths:
                predictor.predict(path)
        n = rounds * len(paths)
        rows.append((label, len(paths), faces, 1000 * (time.process_time() - cpu) / n,
                     1000 * (time.perf_counter() - wall) / n))
    return f"YuNet on {predictor.detector.runtime}, the network on {predictor.model.session.backend}", rows


def _in_process(work: Path, rounds: int, barrier: Any, results: Any) -> None:
    results.put(measure(work, rounds, barrier))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/agegender_cpu_per_photo"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1,
                        help="measure in N processes at once, one row each (does the machine give N processes N "
                             "cores?)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    photo_sets(args.work)  # written once, before any process reads them
    if args.processes == 1:
        runs = [measure(args.work, args.rounds)]
    else:
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(args.processes), context.Queue()
        processes = [context.Process(target=_in_process, args=(args.work, args.rounds, barrier, results))
                     for _ in range(args.processes)]
        for process in processes:
            process.start()
        runs = [results.get() for _ in processes]
        for process in processes:
            process.join()
    rows = [f"| {label} | {k + 1} | {files} | {faces} | {cpu_ms:.1f} | {1000 / cpu_ms:.1f} | {wall_ms:.1f} |"
            for k, (_, measured) in enumerate(runs) for label, files, faces, cpu_ms, wall_ms in measured]
    lines = [f"# CPU time per photo, one core per process ({datetime.now(UTC):%Y-%m-%d})", "",
             f"`python scripts/measure/cpu_per_photo.py --processes {args.processes}`; CPU {cpu_info().describe()}, "
             f"Python {platform.python_version()}; {runs[0][0]}; {args.processes} process(es) at once, one thread "
             f"each; {args.rounds} rounds after a warm-up.", "",
             "| photos | process | files | faces | CPU ms per photo | photos/s per core | wall ms per photo |",
             "|---|---|---|---|---|---|---|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
