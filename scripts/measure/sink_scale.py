"""Time and peak memory of the bulk path's output at millions of rows: writing them as the bulk path does (whole
photos; Parquet as part files every 512 rows), a resume after a crash (reading back which photos are done), closing
(Parquet: the parts merged into one file) and a resume of the finished output. Each phase runs in its own process,
so each peak is its own.

    python scripts/measure/sink_scale.py --rows 2000000
    python scripts/measure/sink_scale.py --rows 2000000 --format jsonl

The rows are the bulk path's columns (``agegender.inference.results.ROW_TYPES``) with values shaped like real ones
(a distinct path per photo, one or two faces per photo, floats at the output's precision), made before the clock
starts.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agegender.inference.results import ROW_TYPES
from agegender.inference.sinks import open_sink

GROUPS = ("0-2", "4-6", "8-13", "15-20", "25-32", "38-43", "48-53", "60-100")


def rows_of(photo: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The rows of one photo: one or two faces."""
    path = f"/archive/{photo // 10_000:04d}/{photo // 100 % 100:02d}/IMG_{photo:08d}.jpg"
    faces = 1 + (photo % 3 == 0)
    rows = []
    for face in range(faces):
        values = np.round(rng.uniform(0, 1000, 19), 1)
        row: dict[str, Any] = {c: float(v) for c, v in zip([c for c, t in ROW_TYPES.items() if t == "float"], values,
                                                           strict=False)}
        row.update(file=path, face=face, age_group=GROUPS[photo % 8], gender=("female", "male")[photo % 2],
                   image_width=4032, image_height=3024, model="flagship",
                   model_version="flagship_int8.onnx (agegender 0.14.0)")
        rows.append(row)
    return rows


def phase(name: str, out: Path, rows: int) -> dict[str, float]:
    """One phase in this process: its seconds and this process's peak resident memory (MB)."""
    if name == "write":
        rng = np.random.default_rng(0)
        photos, made = [], 0
        while made < rows:
            photos.append(rows_of(len(photos), rng))
            made += len(photos[-1])
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        sink = open_sink(out, ROW_TYPES)
        for photo in photos:
            sink.write(photo)
        sink.abandon()  # as a crash leaves it: the parts, not yet merged
        return {"seconds": time.perf_counter() - start, "rows_held_mb": base,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    start = time.perf_counter()
    sink = open_sink(out, ROW_TYPES, resume=True)
    done = len(sink.done)
    if name == "close":
        sink.close()
    else:
        sink.abandon()
    return {"seconds": time.perf_counter() - start, "photos_done": done,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--format", choices=("parquet", "jsonl", "csv"), default="parquet")
    parser.add_argument("--phase", choices=("write", "close", "resume"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.out, args.rows)))
        return
    work = Path(tempfile.mkdtemp(prefix="agegender_sink_scale_"))
    try:
        out = work / f"rows.{args.format}"
        parquet = args.format == "parquet"
        results = {}
        for name, label in (("write", "write (parts)" if parquet else "write"),
                            ("resume", "resume from the parts" if parquet else "resume after a crash"),
                            ("close", "close (merge)" if parquet else "close"),
                            ("resume", "resume from the merged file" if parquet else "resume of the finished file")):
            run = subprocess.run([sys.executable, __file__, "--phase", name, "--out", str(out), "--rows",
                                  str(args.rows)], check=True, capture_output=True, text=True)
            results[label] = json.loads(run.stdout.strip().splitlines()[-1])
        size = out.stat().st_size / 2**20
        if parquet:
            import pyarrow.parquet as pq

            layout = f"merged file {size:.0f} MiB in {pq.ParquetFile(out).metadata.num_row_groups} row groups"
        else:
            layout = f"{args.format} file {size:.0f} MiB"
        print(f"{args.rows:,} rows of the bulk path's {len(ROW_TYPES)} columns; {layout}\n")
        print("| phase | seconds | peak resident memory (MB) | notes |\n|---|---|---|---|")
        for label, result in results.items():
            note = (f"{result['rows_held_mb']:.0f} MB of it the rows made beforehand" if "rows_held_mb" in result
                    else f"{result['photos_done']:,} photos done")
            print(f"| {label} | {result['seconds']:.1f} | {result['peak_mb']:.0f} | {note} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
