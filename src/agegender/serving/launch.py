"""Start ``agegender serve`` in a child process on a free loopback port and wait until it answers: what the load
test and the test suite share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited, or did not answer ``/healthz`` in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running_server(serve_args: list[str], log_path: Path, startup_s: float = 90.0,
                   env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``agegender serve SERVE_ARGS`` on a free loopback port, its output in ``log_path``; yields its URL and
    process once ``/healthz`` answers (raises :class:`ServerStartError` if it exits or ``startup_s`` pass first),
    and stops it afterwards."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agegender.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), *serve_args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = (f"exited with {proc.returncode}" if proc.returncode is not None
                         else f"not up after {startup_s:g} s")
                tail = log_path.read_text(errors="replace")[-4000:]
                raise ServerStartError(f"agegender serve {state}:\n{tail}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
