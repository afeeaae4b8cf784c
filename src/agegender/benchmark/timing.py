"""Wall-clock timing: warm-up calls first, then repeated timed calls, summarised by their median and p90.

>>> stats = Timing.from_seconds([0.001, 0.002, 0.003, 0.004])
>>> stats.median_ms, stats.runs
(2.5, 4)
>>> stats.scaled(0.5).median_ms
1.25
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_WARMUP = 2
DEFAULT_RUNS = 10
DEFAULT_MIN_SECONDS = 1.0


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timed calls, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> Timing:
        if not samples:
            raise ValueError("no timing samples")
        ms = np.asarray(samples, dtype=np.float64) * 1000.0
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()), len(ms))

    def scaled(self, factor: float) -> Timing:
        """The same statistics multiplied by ``factor`` (e.g. 1 / batch size for a per-face figure)."""
        return Timing(self.median_ms * factor, self.p90_ms * factor, self.min_ms * factor, self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms, "runs": self.runs}


def time_call(fn: Callable[[], object], *, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS,
              min_seconds: float = DEFAULT_MIN_SECONDS) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then timed calls until there are at least ``runs`` of them and
    ``min_seconds`` have passed. The garbage collector is paused while timing, so a collection triggered by
    one call does not land in another call's sample."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(samples) < runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing.from_seconds(samples)


def per_face_latency(predict: Callable[[list[np.ndarray]], object], chips: Sequence[np.ndarray], batch: int,
                     **timing: Any) -> Timing:
    """Per-face time of ``predict`` on batches of ``batch`` chips (cycled from ``chips``): the time of one
    call divided by ``batch``. ``timing`` goes to :func:`time_call`."""
    if not chips:
        raise ValueError("no chips to time")
    batch_chips = [chips[i % len(chips)] for i in range(batch)]
    return time_call(lambda: predict(batch_chips), **timing).scaled(1.0 / batch)
