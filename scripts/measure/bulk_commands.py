"""Whole ``agegender predict FOLDER --output out.parquet`` commands, start included, alternated between code trees.

The folder holds ``--photos`` copies (hard links) of the shared photos resized to ``--megapixels`` (the bench's
``photo_copies`` of its ``resized_photo``: aspect kept, cubic, JPEG quality 92). Each round runs the command once
per tree, in turn, so that the load of this shared machine falls on all alike; reported per run: photos/s as the
command prints it (its start included), wall seconds, and the CPU seconds of the command and its workers. A tree
is ``NAME=SRC``, SRC a ``src`` folder put first on ``PYTHONPATH`` (e.g. an older commit's, from ``git worktree add
/tmp/old REV``); ``NAME=`` is the installed package.

    git worktree add /tmp/old e635c2b
    python scripts/measure/bulk_commands.py --tree before=/tmp/old/src --tree now= --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from agegender.benchmark.photos import default_work_dir, photo_copies, resized_photo
from agegender.inference.backends import cpu_info
from agegender.paths import default_path

RATE = re.compile(r"photo\(s\) read \(([\d.]+)/s\)")


def run(src: str, folder: Path, workers: int) -> tuple[float, float, float]:
    """One command: (photos/s as printed, wall seconds, CPU seconds of it and its children)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="agegender-bulk-commands-") as tmp:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "agegender", "predict", str(folder), "--output",
                               str(Path(tmp) / "out.parquet"), "--workers", str(workers)],
                              env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = RATE.search(done.stderr)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"predict failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(rate.group(1)), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=SRC (SRC empty: the installed code)")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=default_work_dir())
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    sources = [resized_photo(p, args.megapixels, args.work) for p in sorted(default_path("photos").glob("*.jpg"))]
    label = f"{args.megapixels:g} MP"
    folder = photo_copies(sources, args.photos, args.work / "bulk" / f"{label}-{args.photos}")
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            runs[name].append(run(src, folder, args.workers))
    lines = [f"# Whole `agegender predict --output` commands ({datetime.now(UTC):%Y-%m-%d})", "",
             f"`python {' '.join(sys.argv)}`; CPU {cpu_info().describe()}, Python {platform.python_version()}; "
             f"{args.photos} photos of {label} ({len(sources)} shared photos resized, linked), "
             f"`--workers {args.workers}`, {args.rounds} rounds, the trees alternated.", "",
             "| tree | photos/s (each run) | median | wall s | CPU s (command and workers) |",
             "|---|---|---|---|---|"]
    for name, values in runs.items():
        rates = [r for r, _, _ in values]
        lines.append(f"| {name} | {', '.join(f'{r:.1f}' for r in rates)} | {statistics.median(rates):.1f} | "
                     f"{', '.join(f'{w:.1f}' for _, w, _ in values)} | {', '.join(f'{c:.1f}' for _, _, c in values)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
