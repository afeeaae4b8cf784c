"""Photos/s through Ray Data on a local Ray, the actors reading their files against Ray's read tasks, and the local
bulk path with two workers, alternated: what docs/ray.md's rerun table quotes.

Each run is a fresh process (a new local Ray on this machine's CPUs, its actors loading the model once) over a
folder of copies of the shared photos, or of their 12 MP copies (``agegender bench``'s, made once under
``--work``). Ray's figure is the dataset's execution from the first row asked for to the last received (the actors'
start included, Ray's own start not); the bulk path's is ``run_bulk`` from start to end (its workers' start
included).

    python scripts/measure/ray_throughput.py --photos 300 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from agegender.benchmark.photos import (
    BULK_SIZE,
    SHARED_LABEL,
    bulk_label,
    default_work_dir,
    photo_copies,
    resized_photo,
)
from agegender.inference.backends import cpu_info
from agegender.paths import default_path

#: What is timed: Ray, the actors reading the files (the default); Ray, read tasks passing the bytes; the bulk path.
WAYS = ("ray, actors read", "ray, read tasks", "bulk --workers 2")


def _one(way: str, folder: Path) -> float:
    """Photos/s of one run of ``way`` over ``folder``, in this process."""
    files = sorted(str(p) for p in folder.iterdir())
    if way.startswith("ray"):
        import ray

        from agegender.inference.ray_pipeline import files_dataset, predict_dataset

        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        ds = predict_dataset(files_dataset(files, with_bytes=way == WAYS[1]))
        start = time.perf_counter()
        rows = sum(batch.num_rows for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        seconds = time.perf_counter() - start
        ray.shutdown()
        if rows < len(files):
            raise RuntimeError(f"{rows} rows for {len(files)} photos")
        return len(files) / seconds
    from agegender.inference.bulk import run_bulk
    from agegender.inference.collection import collect
    from agegender.inference.predictor import Predictor
    from agegender.inference.results import ROW_TYPES
    from agegender.inference.sinks import open_sink

    with tempfile.TemporaryDirectory() as tmp:
        summary = run_bulk(Predictor(), collect([folder]), open_sink(Path(tmp) / "rows.parquet", ROW_TYPES),
                           workers=2, progress=False)
    return summary.photos / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=default_work_dir(), help="where the photos are made, once")
    parser.add_argument("--photos", type=int, default=300, help="photos per folder")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("WAY", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], Path(args.one[1]))))
        return
    shared = sorted(default_path("photos").glob("*.jpg"))
    sets = {SHARED_LABEL: shared, bulk_label(BULK_SIZE): [resized_photo(p, BULK_SIZE, args.work) for p in shared]}
    folders = {label: photo_copies(files, args.photos, args.work / "bulk" / f"{label}-{args.photos}")
               for label, files in sets.items()}
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for label, folder in folders.items():
            for way in WAYS:
                out = subprocess.run([sys.executable, __file__, "--one", way, str(folder)], capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
                rates.setdefault((label, way), []).append(float(out))
    lines = [f"# Ray Data against the bulk path ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"`python scripts/measure/ray_throughput.py --photos {args.photos} --rounds {args.rounds}`; CPU "
             f"{cpu_info().describe()}; {args.photos} photos per folder; runs alternated, photos/s of each run.", "",
             "| photos | " + " | ".join(WAYS) + " |", "|---|" + "---|" * len(WAYS)]
    for label in folders:
        cells = [", ".join(f"{r:.1f}" for r in rates[(label, way)])
                 + f" (median {statistics.median(rates[(label, way)]):.1f})" for way in WAYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
