"""Run one measuring command and keep its output as a committed log: the command, the date, the machine (CPU
model and features, cores, load average before and after) and everything it printed.

    python scripts/measure/logged.py docs/logs/loader_speed.md -- python scripts/measure/loader_speed.py

``make logs`` runs every measurement that the README and the model card quote this way.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from agegender.inference.backends import cpu_info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="the Markdown log to write")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text("\n".join([
        f"# `{shlex.join(command)}`", "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {seconds:.0f} s; exit code {result.returncode}",
        f"- machine: {cpu_info().describe()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}"
        + (" (the machine was busy with other work: timings are slower than on an idle machine)"
           if min(load_before[0], load_after[0]) > 1.5 else ""),
        f"- repeat: `python scripts/measure/logged.py {args.log} -- {shlex.join(command)}`", "",
        "```", result.stdout.rstrip(), *(["", "stderr:", result.stderr.rstrip()[-4000:]] if result.returncode else []),
        "```", ""]))
    print(f"wrote {args.log} (exit code {result.returncode}, {seconds:.0f} s)", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
