"""What one of N machines reads of a list of files (``agegender predict --files-from LIST --shard I/N``): the whole
list listed and then shared out, as before, against the list's lines shared out before any is read
(``agegender.inference.collection.collect_listed``). Counts the ``stat`` calls (what a network file system charges
for, per machine) and times each way on this machine's local disk, alternated.

    python scripts/measure/list_shard.py --files 1000000 --shards 10

The files are empty, 1,000 to a folder, made in a temporary folder before the clock starts and removed after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from agegender.inference.collection import Collection, collect, collect_listed


def make_tree(root: Path, files: int) -> list[str]:
    """``files`` empty JPEG-named files under ``root``, 1,000 per folder; their paths, as a list names them."""
    paths = []
    for start in range(0, files, 1000):
        folder = root / f"{start // 1000:05d}"
        folder.mkdir()
        for i in range(start, min(start + 1000, files)):
            path = folder / f"IMG_{i:08d}.jpg"
            path.touch()
            paths.append(str(path))
    return paths


def counting_stats(run: Callable[[], Collection]) -> tuple[Collection, int]:
    """``run()``'s result and how many ``stat`` calls it made through :class:`pathlib.Path`."""
    real = Path.stat
    calls = 0

    def counted(self: Path, **kwargs: bool) -> os.stat_result:
        nonlocal calls
        calls += 1
        return real(self, **kwargs)

    with mock.patch.object(Path, "stat", counted):
        return run(), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000, help="files in the list")
    parser.add_argument("--shards", type=int, default=10, help="N of --shard I/N (shard 0 is timed)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each way, alternated")
    args = parser.parse_args()
    shard = (0, args.shards)
    ways: dict[str, Callable[[list[str]], Collection]] = {
        "whole list listed, then shared out": lambda lines: collect(lines).part(shard),
        "lines shared out, then listed": lambda lines: collect_listed(lines, shard),
    }
    with tempfile.TemporaryDirectory() as tmp:
        lines = make_tree(Path(tmp), args.files)
        results = {name: counting_stats(lambda way=way: way(lines)) for name, way in ways.items()}
        first = next(iter(results.values()))[0]
        assert all(part.files == first.files for part, _ in results.values()), "the two ways differ"
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                start = time.perf_counter()
                way(lines)
                seconds[name].append(time.perf_counter() - start)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.files:,} files listed one per line; shard 0/{args.shards} keeps {len(first.files):,}; "
          f"median of {args.rounds} rounds, alternated, local disk\n")
    print("| way | stat calls | seconds |")
    print("|---|---|---|")
    for name in ways:
        print(f"| {name} | {results[name][1]:,} | {statistics.median(seconds[name]):.2f} |")


if __name__ == "__main__":
    main()
