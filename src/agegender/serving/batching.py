"""Micro-batching: requests that arrive together share one call of a batch function, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """More requests are waiting than the batcher accepts."""


@dataclass(frozen=True)
class BatchStats:
    """How one item was served: time queued, time in the batch function, and the batch size."""

    queue_ms: float
    run_ms: float
    batch_size: int


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[tuple[R, BatchStats]]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T, R]):
    """Collects items submitted concurrently and passes them to ``fn`` together, in one worker thread.

    ``fn`` maps a list of items to a list of results of the same length. A batch starts when ``max_batch``
    items are waiting, or ``max_wait_s`` after the first one arrived; items that arrive while a batch runs
    form the next one. If a batch raises, its items are retried one by one, so a bad item fails only its
    own request. Items whose caller gave up (cancelled) are skipped. Use as ``async with``.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int, max_wait_s: float,
                 max_queue: int) -> None:
        self.fn, self.max_batch, self.max_wait_s, self.max_queue = fn, max_batch, max_wait_s, max_queue
        self._pending: deque[_Job[T, R]] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agegender-batch")
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    async def __aenter__(self) -> MicroBatcher[T, R]:
        self._task = asyncio.create_task(self._loop(), name="agegender-batcher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: T) -> tuple[R, BatchStats]:
        """Queue ``item`` and wait for its result; ``QueueFullError`` if ``max_queue`` items wait already."""
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(f"{len(self._pending)} requests are already waiting")
        job: _Job[T, R] = _Job(item, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _loop(self) -> None:
        while True:
            await self._arrived.wait()
            if self.max_wait_s > 0 and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.max_wait_s)
            jobs: list[_Job[T, R]] = []
            while self._pending and len(jobs) < self.max_batch:
                job = self._pending.popleft()
                if not job.future.done():
                    jobs.append(job)
            if not self._pending:
                self._arrived.clear()
            if jobs:
                await self._run(jobs)

    async def _run(self, jobs: list[_Job[T, R]]) -> None:
        start = time.perf_counter()
        outcomes = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._call, [job.item for job in jobs])
        end = time.perf_counter()
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                stats = BatchStats((start - job.enqueued) * 1000, (end - start) * 1000, len(jobs))
                job.future.set_result((outcome, stats))

    def _call(self, items: list[T]) -> list[R | Exception]:
        """``fn(items)``; if that raises, each item alone, so that one bad item fails only itself."""
        try:
            results: list[R | Exception] = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            return results
        except Exception as err:
            if len(items) == 1:
                return [err]
            log.warning("a batch of %d failed (%s); retrying its items one by one", len(items), err)
            return [self._call([item])[0] for item in items]
