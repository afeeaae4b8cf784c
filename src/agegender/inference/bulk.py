"""The bulk path: a photo collection through the Predictor into a crash-safe table, one row per face.

Decoding, detection and alignment (:func:`~agegender.inference.predictor.prepare_image`) run in ``workers``
processes, each with its own detector; the model runs in this process, batched across photos
(:meth:`~agegender.inference.predictor.Predictor.finish`). Every input gets rows: one per face, one with empty face
columns for a photo without a face, one with the reason in ``error`` for an input that cannot be read; rows go to a
:class:`~agegender.inference.sinks.RowSink` whole photos at a time, so a crash loses at most the photos in flight
and a resumed run skips exactly the inputs already written.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import cv2
from tqdm import tqdm

from agegender.images import VIDEO_SUFFIXES, ImageError, unreadable_error
from agegender.inference.collection import Collection
from agegender.inference.detector import FaceDetector
from agegender.inference.predictor import Predictor, PreparedImage, prepare_image
from agegender.inference.results import ImageFailure, ImageResult
from agegender.inference.sinks import RowSink

log = logging.getLogger(__name__)

__all__ = ["AUTO_WORKERS_BYTES", "NAMED_ERRORS", "BulkSummary", "WorkerDied", "auto_workers", "run_bulk",
           "unsupported_format"]

#: Faces per forward pass: the model's time per face flattens out from about 64 (docs/bench.md).
BATCH_FACES = 64
#: ``workers="auto"`` starts one worker per core once the photos to do hold this many bytes, else works in this
#: process. On a 2-core EPYC two workers' start (0.5 s) was paid back from about 37 12 MP JPEGs (42 MB; 31.2 against
#: 22.5 photos/s past the start) and 260 photos under 1 MP (23 MB; 86.5 against 73.3): docs/logs/bench_epyc_bulk300.md.
AUTO_WORKERS_BYTES = 32 * 2**20
#: Photos submitted to the worker processes ahead of the one the model waits for, per worker.
AHEAD_PER_WORKER = 4
#: Failed inputs of one kind named in the log; those after are counted in the summary (the output's ``error``
#: column names every one): a million broken files should not print a million lines.
NAMED_ERRORS = 20


@dataclass
class BulkSummary:
    """What a bulk run did: inputs listed, already in the output, photos read, faces, photos without a face,
    errors by kind, files skipped by type, seconds."""

    inputs: int = 0
    resumed: int = 0
    photos: int = 0
    faces: int = 0
    no_face: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    workers: int = 1

    def add(self, result: ImageResult | ImageFailure) -> None:
        if isinstance(result, ImageFailure):
            self.failed(result.kind, result.message)
            return
        self.photos += 1
        self.faces += len(result)
        self.no_face += not len(result)

    def failed(self, kind: str, message: str) -> None:
        """Count an input that failed, and name it in the log (a warning): as without ``--output``, a bad file
        gets one line, up to :data:`NAMED_ERRORS` of each kind."""
        self.errors[kind] += 1
        if self.errors[kind] <= NAMED_ERRORS:
            log.warning("%s", message)
        elif self.errors[kind] == NAMED_ERRORS + 1:
            log.warning("more inputs failed (%s): counted in the summary, not named here; the output's error "
                        "column names each", kind)

    def lines(self) -> list[str]:
        rate = self.photos / self.seconds if self.seconds else 0.0
        out = [f"{self.inputs} input(s): {self.photos} photo(s) read ({rate:.1f}/s), {self.faces} face(s), "
               f"{self.no_face} without a face, {sum(self.errors.values())} error(s)"
               + (f", {self.resumed} already in the output (resumed)" if self.resumed else "")
               + (f"; {self.workers} worker processes" if self.workers > 1 else "")]
        out += [f"  errors, {kind}: {n}" for kind, n in sorted(self.errors.items())]
        out += [f"  skipped, {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        return out


_WORKER: dict[str, object] = {}


def _start_worker(detector_path: str | None, max_side: int | None, input_side: int, max_pixels: int,
                  reduced: bool) -> None:
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only contend
    detector = None if detector_path is None else FaceDetector(detector_path, max_side=max_side, threads=1)
    _WORKER.update(detector=detector, input_side=input_side, max_pixels=max_pixels, reduced=reduced)


def unsupported_format(path: str) -> ImageFailure | None:
    """The failure of a file whose ending is a format this package cannot decode (``.heic`` ...) or a video (its own
    path, not the bulk one's), else None."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return ImageFailure(path, "unsupported format", f"{path}: a video; --output takes photos (predict a video "
                                                        "on its own: agegender predict VIDEO --json)")
    unreadable = unreadable_error(path)
    return None if unreadable is None else ImageFailure(path, unreadable.kind, str(unreadable))


def _prepare(path: str) -> PreparedImage | ImageFailure:
    """One input, in a worker: decoded, detected and aligned, or the reason it could not be."""
    unsupported = unsupported_format(path)
    if unsupported is not None:
        return unsupported
    try:
        return prepare_image(path, _WORKER["detector"], _WORKER["input_side"], _WORKER["max_pixels"],  # type: ignore[arg-type]
                             _WORKER["reduced"], keep_pixels=False)  # type: ignore[arg-type]
    except ImageError as err:
        return ImageFailure(path, err.kind, str(err))
    except (OSError, ValueError, MemoryError) as err:  # a photo must never stop the run
        return ImageFailure(path, "cannot read", f"{path}: {err}")


class WorkerDied(RuntimeError):
    """A worker process ended abruptly (killed, out of memory); the rows written before are kept."""


def _start_pool_worker(*init: object) -> None:
    """:func:`_start_worker` in a worker process, which leaves Ctrl-C to the main process: a terminal sends SIGINT
    to every process of the group, and a worker it stopped halfway through sending a result would leave the pool
    waiting for the rest."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _start_worker(*init)  # type: ignore[arg-type]


def _prepared(paths: Sequence[str], predictor: Predictor, workers: int
              ) -> Generator[PreparedImage | ImageFailure, None, None]:
    """Each path prepared, in order, by ``workers`` processes (1: in this process), at most
    :data:`AHEAD_PER_WORKER` per worker submitted ahead. Stopped early (an interrupt, an error, the consumer gone),
    it cancels what has not started and waits for the photos in the workers (one each) before it returns."""
    detector, max_pixels = predictor.detector, predictor.max_pixels
    init = (None if detector is None else str(detector.model_path), None if detector is None else detector.max_side,
            predictor.input_side, max_pixels, predictor.reduced)
    if workers <= 1:
        if detector is not None:
            _WORKER.update(detector=detector, input_side=predictor.input_side, max_pixels=max_pixels,
                           reduced=predictor.reduced)
        else:
            _start_worker(*init)
        yield from map(_prepare, paths)
        return
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), initializer=_start_pool_worker,
                             initargs=init) as pool:
        ahead: deque[Future[PreparedImage | ImageFailure]] = deque()
        try:
            for path in paths:
                ahead.append(pool.submit(_prepare, path))
                if len(ahead) >= AHEAD_PER_WORKER * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        except BrokenProcessPool as err:
            raise WorkerDied(f"a worker process died (killed, or out of memory?): {err} The rows written so far "
                             "are kept: run the same command with --resume to go on") from err
        finally:
            for future in ahead:
                future.cancel()


def _batches(items: Iterable[PreparedImage | ImageFailure], faces: int
             ) -> Iterator[list[PreparedImage | ImageFailure]]:
    """Consecutive items holding about ``faces`` faces (or 32 photos) each."""
    batch: list[PreparedImage | ImageFailure] = []
    count = 0
    for item in items:
        batch.append(item)
        count += len(item.chips) if isinstance(item, PreparedImage) else 0
        if count >= faces or len(batch) >= 32:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(paths: Iterable[str], limit: int | None = None) -> int:
    """One worker per core (:func:`cores`) when the files at ``paths`` hold at least ``limit`` bytes
    (:data:`AUTO_WORKERS_BYTES`; their sizes read until they do), else 1: below it, starting the workers costs more
    than they gain."""
    limit = AUTO_WORKERS_BYTES if limit is None else limit
    n = cores()
    total = 0
    for path in paths if n > 1 else ():
        try:
            total += os.stat(path).st_size
        except OSError:  # an error row later
            continue
        if total >= limit:
            return n
    return 1


def run_bulk(predictor: Predictor, collection: Collection, sink: RowSink, workers: int | Literal["auto"] = 1,
             progress: bool = True) -> BulkSummary:
    """Predict every file of ``collection`` not yet in ``sink`` and write its rows; the collection's listing
    errors become error rows too. ``workers``: processes that decode and detect (1: this one; ``"auto"``:
    :func:`auto_workers` of the files to do). Returns the summary."""
    start = time.perf_counter()
    summary = BulkSummary(inputs=len(collection.files) + len(collection.errors), skipped=collection.skipped_counts())
    new_errors = set(sink.done.missing([path for path, _ in collection.errors]))
    for path, reason in collection.errors:
        if path in new_errors:
            failure = ImageFailure(path, "cannot read", f"{path}: {reason}")
            sink.write(failure.rows())
            summary.add(failure)
    todo = sink.done.missing(collection.files)
    summary.resumed = len(collection.files) - len(todo) + sum(1 for p, _ in collection.errors if p not in new_errors)
    summary.workers = workers = auto_workers(todo) if workers == "auto" else workers
    # closing: stopped by an exception, the workers are stopped now, not when the traceback is freed
    with (_CtrlC() as ctrl_c,
          tqdm(total=len(todo), desc="predict", unit="photo", disable=not progress, smoothing=0.1) as bar,
          closing(_prepared(todo, predictor, workers)) as prepared):
        try:
            for batch in _batches(_until_pressed(prepared, ctrl_c), BATCH_FACES):
                for result in predictor.finish(batch):
                    sink.write(result.rows())
                    summary.add(result)
                    bar.update()
        except WorkerDied:
            sink.close()  # what was written is final (a Parquet output's parts merged)
            raise
        except BaseException:  # a second Ctrl-C, or an error: the rows accepted stay for --resume
            sink.abandon()
            raise
    sink.close()
    if ctrl_c.pressed:
        raise KeyboardInterrupt
    summary.seconds = time.perf_counter() - start
    return summary


def _until_pressed(items: Iterable[PreparedImage | ImageFailure], ctrl_c: _CtrlC
                   ) -> Iterator[PreparedImage | ImageFailure]:
    """``items`` up to and with the one that came after Ctrl-C was pressed."""
    for item in items:
        yield item
        if ctrl_c.pressed:
            return


class _CtrlC:
    """Ctrl-C during a bulk run (in the main thread): the first stops it after the photo the model waits for,
    whose rows, and those of the photos before it, are written; a second interrupts at once. A KeyboardInterrupt
    raised anywhere instead could stop the pool of workers halfway through its own bookkeeping, and it then
    waited for ever."""

    def __init__(self) -> None:
        self.pressed = False
        self._before: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._before = signal.getsignal(signal.SIGINT) or signal.default_int_handler  # None: set outside Python
            signal.signal(signal.SIGINT, self._press)
        return self

    def _press(self, signum: int, frame: object) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, self._before)

    def __exit__(self, *exc_info: object) -> None:
        if self._before is not None:
            signal.signal(signal.SIGINT, self._before)
