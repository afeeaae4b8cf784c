"""Wall-clock timing: warm-up calls first, then timed calls summarised by their median and p90.

Several systems are timed *interleaved* (:func:`time_interleaved`): each round times every system in turn, and
rounds repeat until every system has its samples. A fast call repeats within its turn, so that all systems
finish in about ``runs`` rounds, each having had about as much time as it would have alone. Load that comes and
goes on a shared machine then lands on all systems alike, instead of on whichever was being timed while it
lasted.

>>> stats = Timing.from_seconds([0.001, 0.002, 0.003, 0.004])
>>> stats.median_ms, stats.runs
(2.5, 4)
>>> stats.scaled(0.5).median_ms
1.25
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

DEFAULT_WARMUP = 2
DEFAULT_RUNS = 10
DEFAULT_MIN_SECONDS = 1.0
#: At most this many calls of one system in one turn.
MAX_REPEATS = 10_000

K = TypeVar("K", bound=Hashable)


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


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(calls: Mapping[K, Callable[[], object]], *, warmup: int = DEFAULT_WARMUP,
                     runs: int = DEFAULT_RUNS, min_seconds: float = DEFAULT_MIN_SECONDS) -> dict[K, Timing]:
    """Time every call of ``calls`` interleaved: ``warmup`` untimed calls of each (in turn), then rounds that
    time each system in turn, the order rotated by one every round, until every system has at least ``runs``
    timed calls and ``min_seconds`` of timed calls.

    A system's turn in a round is the calls it still needs spread over the rounds left of ``runs`` (its needs
    estimated from its median so far), so that a fast call repeats within its turn and every system is done
    after about ``runs`` rounds; a system that is done sits out the rounds that others still need. The garbage
    collector is paused while timing, so a collection triggered by one call does not land in another call's
    sample."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    names = list(calls)
    estimate: dict[K, float | None] = dict.fromkeys(names)
    for _ in range(warmup):
        for name in names:
            estimate[name] = _timed(calls[name])
    samples: dict[K, list[float]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        rounds = 0
        while turns := _turns(samples, spent, estimate, runs - rounds, runs, min_seconds):
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:
                for _ in range(turns.get(name, 0)):
                    seconds = _timed(calls[name])
                    samples[name].append(seconds)
                    spent[name] += seconds
            estimate = {n: float(np.median(samples[n])) for n in names}
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing.from_seconds(samples[name]) for name in names}


def _turns(samples: Mapping[K, list[float]], spent: Mapping[K, float], estimate: Mapping[K, float | None],
           rounds_left: int, runs: int, min_seconds: float) -> dict[K, int]:
    """Calls of each system that is not done yet in the next round: what it still needs over the rounds left
    (all of it when none are left; one call while its time per call is not known)."""
    turns = {}
    for name, taken in samples.items():
        if len(taken) >= runs and spent[name] >= min_seconds:
            continue
        seconds = estimate[name]
        if seconds is None:
            turns[name] = 1
            continue
        needed = max(runs - len(taken), math.ceil((min_seconds - spent[name]) / max(seconds, 1e-7)), 1)
        turns[name] = min(MAX_REPEATS, math.ceil(needed / max(rounds_left, 1)))
    return turns


def time_call(fn: Callable[[], object], *, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS,
              min_seconds: float = DEFAULT_MIN_SECONDS) -> Timing:
    """Time ``fn()`` alone: ``warmup`` untimed calls, then timed calls until there are at least ``runs`` of them
    and ``min_seconds`` have passed (:func:`time_interleaved` with one system)."""
    return time_interleaved({0: fn}, warmup=warmup, runs=runs, min_seconds=min_seconds)[0]


def batch_call(predict: Callable[[list[np.ndarray]], object], chips: Sequence[np.ndarray], batch: int
               ) -> Callable[[], object]:
    """A call of ``predict`` on a batch of ``batch`` chips cycled from ``chips`` (divide its time by ``batch``
    for a per-face figure)."""
    if not chips:
        raise ValueError("no chips to time")
    batch_chips = [chips[i % len(chips)] for i in range(batch)]
    return lambda: predict(batch_chips)


def per_face_latency(predict: Callable[[list[np.ndarray]], object], chips: Sequence[np.ndarray], batch: int,
                     **timing: Any) -> Timing:
    """Per-face time of ``predict`` on batches of ``batch`` chips (cycled from ``chips``): the time of one
    call divided by ``batch``. ``timing`` goes to :func:`time_call`."""
    return time_call(batch_call(predict, chips, batch), **timing).scaled(1.0 / batch)
