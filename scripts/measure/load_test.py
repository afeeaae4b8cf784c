"""Bounded load test of ``agegender serve`` on this machine.

N concurrent clients (default 50) share a fixed number of requests (default 400) and stop when they are done.
Each request uploads one of the sample photos to ``POST /v1/predict``. Prints the counts of successes and
errors, latency percentiles, throughput and the mean batch size the server reported; exits 1 on any error.

When the server's process is known (``--start-server`` runs ``agegender serve`` on a free loopback port for the
test and stops it at the end; ``--server-pid`` names one started elsewhere), it also reports the server's CPU
time per request (user + system, the process and its children, from ``/proc`` over the timed requests) next
to the CPU time ``Predictor.predict`` spends in this process on the same photos in the same proportions, and
their ratio: what serving costs on top of the pipeline itself.

    python scripts/measure/load_test.py --start-server --detector YUNET.onnx --clients 50 --requests 400

    agegender serve --model MODEL.onnx --detector YUNET.onnx --port 8000 &
    python scripts/measure/load_test.py --url http://127.0.0.1:8000 --server-pid $! \
        --model MODEL.onnx --detector YUNET.onnx

Only loopback addresses are accepted: this is not a tool for loading other people's servers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from agegender.paths import default_path
from agegender.serving.launch import running_server

DEFAULT_PHOTOS = default_path("photos")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WARM_UP_REQUESTS = 3
SERVER_STARTUP_S = 120.0


@dataclass
class Tally:
    """What the clients saw."""

    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def _client(http: httpx.AsyncClient, photos: list[bytes], next_index: Iterator[int],
                  tally: Tally) -> None:
    for i in next_index:
        start = time.perf_counter()
        try:
            response = await http.post("/v1/predict", files={"image": ("photo.jpg", photos[i % len(photos)])})
        except httpx.HTTPError as err:
            tally.errors[type(err).__name__] += 1
            continue
        if response.status_code != 200:
            tally.errors[f"HTTP {response.status_code}"] += 1
            continue
        tally.latencies_s.append(time.perf_counter() - start)
        tally.batch_sizes.append(int(response.headers.get("x-batch-size", "1")))


async def run(url: str, photos: list[bytes], clients: int, requests: int, timeout_s: float,
              cpu_seconds: Callable[[], float] | None = None) -> dict[str, object]:
    """Send ``requests`` uploads from ``clients`` concurrent connections; the summary as a dict.
    ``cpu_seconds``: the server's CPU time so far, read before and after the timed requests."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
        for i in range(WARM_UP_REQUESTS):
            response = await http.post("/v1/predict", files={"image": ("photo.jpg", photos[i % len(photos)])})
            response.raise_for_status()
        tally = Tally()
        shared = iter(range(requests))  # one iterator: each request index is taken by exactly one client
        cpu_start = cpu_seconds() if cpu_seconds else None
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, photos, shared, tally) for _ in range(clients)))
        wall = time.perf_counter() - start
        cpu_end = cpu_seconds() if cpu_seconds else None
    ms = sorted(1000 * s for s in tally.latencies_s) or [float("nan")]
    summary: dict[str, object] = {
        "clients": clients, "requests": requests, "ok": len(tally.latencies_s),
        "errors": sum(tally.errors.values()), "error_kinds": dict(tally.errors),
        "p50_ms": round(_percentile(ms, 50), 1), "p95_ms": round(_percentile(ms, 95), 1),
        "p99_ms": round(_percentile(ms, 99), 1), "max_ms": round(ms[-1], 1),
        "throughput_rps": round(len(tally.latencies_s) / wall, 2), "wall_s": round(wall, 2),
        "mean_batch_size": round(statistics.fmean(tally.batch_sizes), 2) if tally.batch_sizes else None,
    }
    if cpu_start is not None and cpu_end is not None:
        summary["server_cpu_s"] = round(cpu_end - cpu_start, 3)
        summary["server_cpu_ms_per_request"] = round(1000 * (cpu_end - cpu_start) / requests, 2)
        summary["server_cpu_cores_busy"] = round((cpu_end - cpu_start) / wall, 2)
    return summary


# --- CPU time: the server's, from /proc, and the pipeline's in this process ---------------------------------

def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` from field 3 (state) on; the command name before it may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it (uvicorn's workers, with ``--workers`` above 1)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its descendants, their threads included, and of the
    children they have already waited for (cutime, cstime), so that a worker that exits is not lost."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime: fields 14-17 of stat(5)
    return total / ticks


def check_pid(pid: int) -> None:
    """Raise ``ValueError`` unless ``/proc`` knows process ``pid``."""
    try:
        _stat_fields(pid)
    except OSError as err:
        raise ValueError(f"cannot read /proc/{pid}/stat ({err}); the server CPU is measured on Linux only, "
                         "for a process of this machine") from err


def inprocess_cpu(photos: list[bytes], requests: int, rounds: int, model: str | None, detector: str | None,
                  threads: int) -> dict[str, object]:
    """CPU time ``Predictor.predict`` spends in this process on each photo (mean over ``rounds``, after one
    warm-up pass), and its mean over the load test's requests (request i sends photo i mod len(photos))."""
    from agegender.inference.detector import FaceDetector
    from agegender.inference.factory import load_model
    from agegender.inference.predictor import Predictor

    # The model and the detector as the server loads them (InferenceService), flip on as its default is.
    predictor = Predictor(load_model(model, threads=threads), FaceDetector(detector), flip=True)
    for data in photos:  # warm-up: runtime initialisation, first allocations
        predictor.predict(data)
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    for data in photos:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            predictor.predict(data)
        cpu_ms.append(1000 * (time.process_time() - cpu) / rounds)
        wall_ms.append(1000 * (time.perf_counter() - wall) / rounds)
    del predictor
    gc.collect()
    sent = Counter(i % len(photos) for i in range(requests))
    per_request = sum(sent[k] * cpu_ms[k] for k in range(len(photos))) / requests
    wall_per_request = sum(sent[k] * wall_ms[k] for k in range(len(photos))) / requests
    return {"inprocess_cpu_ms_per_photo": round(per_request, 2),
            "inprocess_wall_ms_per_photo": round(wall_per_request, 2),
            "inprocess_cpu_ms_by_photo": [round(v, 2) for v in cpu_ms], "inprocess_rounds": rounds,
            "inprocess_threads": threads}


# --- a server for the test ------------------------------------------------------------------------------------

def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL, loopback only")
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections (default 50)")
    parser.add_argument("--requests", type=int, default=400, help="requests in all (default %(default)d)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of .jpg photos to send")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    server = parser.add_argument_group("server CPU per request against the pipeline in-process")
    server.add_argument("--start-server", action="store_true",
                        help="run `agegender serve` on a free loopback port for the test (instead of --url) and "
                             "stop it at the end; with --model, --detector, --threads and --serve-args")
    server.add_argument("--server-pid", type=int, help="PID of the server at --url, to measure its CPU time")
    server.add_argument("--serve-args", default="", help="more `agegender serve` options for --start-server, "
                                                         "as one string (e.g. \"--batch-max 8\")")
    server.add_argument("--model", help="the server's model: passed to the started server, and loaded for "
                                        "the in-process measurement (default: the shipped one)")
    server.add_argument("--detector", help="YuNet ONNX file, used the same way (default: as FaceDetector finds it)")
    server.add_argument("--threads", type=int,
                        help="runtime threads, used the same way (default: the server's, one per CPU, at most 4)")
    server.add_argument("--inprocess-rounds", type=int, default=5,
                        help="timed passes over the photos in this process (default %(default)d; 0: skip)")
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK:
        parser.error(f"--url must point at this machine ({', '.join(sorted(LOOPBACK))}), not {host!r}")
    if args.start_server and args.server_pid is not None:
        parser.error("--start-server and --server-pid exclude each other")
    if args.server_pid is not None:
        try:
            check_pid(args.server_pid)
        except ValueError as err:
            parser.error(str(err))
    if args.inprocess_rounds < 0 or args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be at least 1, --inprocess-rounds at least 0")
    photos = [p.read_bytes() for p in sorted(args.photos.glob("*.jpg"))]
    if not photos:
        parser.error(f"no .jpg photos in {args.photos}")

    measure_cpu = args.start_server or args.server_pid is not None
    inprocess: dict[str, object] = {}
    if measure_cpu and args.inprocess_rounds:  # first, while the machine runs nothing else of ours
        from agegender.serving.settings import ServeSettings

        threads = args.threads or ServeSettings().thread_count
        inprocess = inprocess_cpu(photos, args.requests, args.inprocess_rounds, args.model, args.detector, threads)
    if args.start_server:
        serve_args = shlex.split(args.serve_args)
        for option, value in (("--model", args.model), ("--detector", args.detector), ("--threads", args.threads)):
            if value is not None:
                serve_args += [option, str(value)]
        with tempfile.TemporaryDirectory() as tmp, \
                running_server(serve_args, Path(tmp) / "server.log", SERVER_STARTUP_S) as (url, proc):
            summary = asyncio.run(run(url, photos, args.clients, args.requests, args.timeout,
                                      partial(process_tree_cpu_seconds, proc.pid)))
    else:
        cpu = None if args.server_pid is None else partial(process_tree_cpu_seconds, args.server_pid)
        summary = asyncio.run(run(args.url, photos, args.clients, args.requests, args.timeout, cpu))
    summary.update(inprocess)
    server_ms, inprocess_ms = summary.get("server_cpu_ms_per_request"), summary.get("inprocess_cpu_ms_per_photo")
    if isinstance(server_ms, float) and isinstance(inprocess_ms, float) and inprocess_ms > 0:
        summary["cpu_ratio"] = round(server_ms / inprocess_ms, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        kinds = summary["error_kinds"] or ""
        print(f"{summary['ok']}/{args.requests} ok, {summary['errors']} errors {kinds}")
        print(f"latency p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms, p99 {summary['p99_ms']} ms, "
              f"max {summary['max_ms']} ms")
        print(f"throughput {summary['throughput_rps']} requests/s over {summary['wall_s']} s with "
              f"{args.clients} clients; mean batch size {summary['mean_batch_size']}")
        if "server_cpu_ms_per_request" in summary:
            print(f"server CPU {summary['server_cpu_ms_per_request']} ms per request "
                  f"({summary['server_cpu_s']} s in all, {summary['server_cpu_cores_busy']} cores busy on average)")
        if "inprocess_cpu_ms_per_photo" in summary:
            print(f"in-process CPU {summary['inprocess_cpu_ms_per_photo']} ms per photo "
                  f"(Predictor.predict, {summary['inprocess_threads']} threads, mean of "
                  f"{summary['inprocess_rounds']} passes; wall {summary['inprocess_wall_ms_per_photo']} ms; "
                  f"by photo {summary['inprocess_cpu_ms_by_photo']})")
        if "cpu_ratio" in summary:
            print(f"server CPU per request / in-process CPU per photo = {summary['cpu_ratio']}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
