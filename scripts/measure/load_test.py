"""Bounded load test of a running ``agegender serve`` on this machine.

N concurrent clients (default 50) share a fixed number of requests (default 400) and stop when they are done.
Each request uploads one of the sample photos to ``POST /v1/predict``. Prints the counts of successes and
errors, latency percentiles, throughput and the mean batch size the server reported; exits 1 on any error.

    agegender serve --model MODEL.onnx --detector YUNET.onnx --port 8000 &
    python scripts/measure/load_test.py --url http://127.0.0.1:8000 --clients 50 --requests 400

Only loopback addresses are accepted: this is not a tool for loading other people's servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from agegender.paths import default_path

DEFAULT_PHOTOS = default_path("photos")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WARM_UP_REQUESTS = 3


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


async def run(url: str, photos: list[bytes], clients: int, requests: int,
              timeout_s: float) -> dict[str, object]:
    """Send ``requests`` uploads from ``clients`` concurrent connections; the summary as a dict."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
        for i in range(WARM_UP_REQUESTS):
            response = await http.post("/v1/predict", files={"image": ("photo.jpg", photos[i % len(photos)])})
            response.raise_for_status()
        tally = Tally()
        shared = iter(range(requests))  # one iterator: each request index is taken by exactly one client
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, photos, shared, tally) for _ in range(clients)))
        wall = time.perf_counter() - start
    ms = sorted(1000 * s for s in tally.latencies_s) or [float("nan")]
    return {
        "clients": clients, "requests": requests, "ok": len(tally.latencies_s),
        "errors": sum(tally.errors.values()), "error_kinds": dict(tally.errors),
        "p50_ms": round(_percentile(ms, 50), 1), "p95_ms": round(_percentile(ms, 95), 1),
        "p99_ms": round(_percentile(ms, 99), 1), "max_ms": round(ms[-1], 1),
        "throughput_rps": round(len(tally.latencies_s) / wall, 2), "wall_s": round(wall, 2),
        "mean_batch_size": round(statistics.fmean(tally.batch_sizes), 2) if tally.batch_sizes else None,
    }


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
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK:
        parser.error(f"--url must point at this machine ({', '.join(sorted(LOOPBACK))}), not {host!r}")
    photos = [p.read_bytes() for p in sorted(args.photos.glob("*.jpg"))]
    if not photos:
        parser.error(f"no .jpg photos in {args.photos}")
    summary = asyncio.run(run(args.url, photos, args.clients, args.requests, args.timeout))
    if args.json:
        print(json.dumps(summary))
    else:
        kinds = summary["error_kinds"] or ""
        print(f"{summary['ok']}/{args.requests} ok, {summary['errors']} errors {kinds}")
        print(f"latency p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms, p99 {summary['p99_ms']} ms, "
              f"max {summary['max_ms']} ms")
        print(f"throughput {summary['throughput_rps']} requests/s over {summary['wall_s']} s with "
              f"{args.clients} clients; mean batch size {summary['mean_batch_size']}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
