"""The inference side of the server: model and detector loaded once, decoding in a thread pool, and
concurrent requests micro-batched into one ``Predictor.predict_arrays`` call, which gives each upload its
``ImageResult``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np

from agegender.images import ImageError
from agegender.inference.detector import FaceDetector
from agegender.inference.factory import load_model
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.inference.predictor import Predictor, PreparedImage, prepare_image
from agegender.inference.results import Face, ImageResult
from agegender.preprocess import CHIP_SIZE
from agegender.serving.batching import BatchStats, MicroBatcher
from agegender.serving.settings import ServeSettings

_Result = TypeVar("_Result")
_Item = tuple[PreparedImage, bool]  # a decoded photo's aligned faces, and its flip setting


@dataclass(frozen=True)
class Prediction:
    """The result for one upload (its faces, and its size after EXIF rotation), and where the time went."""

    result: ImageResult
    timing_ms: dict[str, float]
    batch_size: int

    @property
    def faces(self) -> Sequence[Face]:
        return self.result

    @property
    def width(self) -> int:
        return self.result.width

    @property
    def height(self) -> int:
        return self.result.height


class InferenceService:
    """Everything one server process needs to answer predictions. Use as ``async with``."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        threads = settings.thread_count
        self._model = model = load_model(settings.model, accurate=settings.accurate, threads=threads,
                                         descriptor_weights=settings.descriptor_weights, backend=settings.backend,
                                         device=settings.device, gender_model=settings.gender_model)
        # One thread per detection: the decode pool runs as many at once as the server has threads.
        self._detector = detector = FaceDetector(settings.detector, max_side=settings.detect_size, threads=1)
        # One predictor per flip setting, sharing the model and the detector.
        self._predictors = {flip: Predictor(model, detector, flip=flip, max_pixels=settings.max_pixels)
                            for flip in (True, False)}
        self.model_name = model.config.name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agegender-decode")
        self._batcher: MicroBatcher[_Item, ImageResult] | None = None
        if settings.batch_max > 1:
            self._batcher = MicroBatcher(
                self._predict_items, max_batch=settings.batch_max, max_wait_s=settings.batch_wait_ms / 1000,
                max_queue=settings.max_queue)
        self._warm_up(model, detector)

    async def __aenter__(self) -> InferenceService:
        if self._batcher is not None:
            await self._batcher.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._batcher is not None:
            await self._batcher.__aexit__(*exc_info)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        """Requests decoded and waiting for the model."""
        return self._batcher.pending if self._batcher is not None else 0

    def describe(self) -> dict[str, Any]:
        """Model metadata and metrics, with file names instead of server paths, and the detector file and what
        runs it."""
        info = {k: v for k, v in self._model.describe().items() if k != "path"}
        return {"name": self.model_name, "file": self._model.path.name, **info,
                "detector": self._detector.model_path.name, "detector_runtime": self._detector.runtime}

    async def predict(self, data: bytes, flip: bool | None = None) -> Prediction:
        """Decode ``data`` (raises ``ImageError``), find and align its faces in the decoding pool, then run the
        model on them, batched with other requests; ``flip=None``: the server default."""
        start = time.perf_counter()
        prepared = await self._in_pool(partial(self._prepare, data))
        decoded = time.perf_counter()
        item = (prepared, self.settings.flip if flip is None else flip)
        if self._batcher is not None:
            result, stats = await self._batcher.submit(item)
        else:
            result, stats = await self._in_pool(partial(self._predict_timed, item, decoded))
        timing = {"decode": (decoded - start) * 1000, "queue": stats.queue_ms, "inference": stats.run_ms,
                  "total": (time.perf_counter() - start) * 1000}
        return Prediction(result, {k: round(v, 1) for k, v in timing.items()}, stats.batch_size)

    def _prepare(self, data: bytes) -> PreparedImage:
        """``prepare_image``: a JPEG decoded at the reduced scale that holds the detector's working size, its faces
        found and aligned; decoder failures become ``ImageError`` (the upload caused them)."""
        predictor = self._predictors[True]
        try:
            return prepare_image(data, self._detector, predictor.input_side, self.settings.max_pixels)
        except ImageError:
            raise
        except Exception as err:  # Pillow raises more than load_image maps: ValueError for bad PPM headers
            raise ImageError(f"image data: cannot decode the image ({type(err).__name__}: {err})") from err

    async def _in_pool(self, fn: Callable[[], _Result]) -> _Result:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _predict_items(self, items: list[_Item]) -> list[ImageResult]:
        """The result of each (prepared photo, flip) item: one forward pass per flip setting present."""
        results: dict[int, ImageResult] = {}
        for flip, predictor in self._predictors.items():
            chosen = [i for i, (_, f) in enumerate(items) if f == flip]
            if chosen:
                found = predictor.finish([items[i][0] for i in chosen])
                results.update(zip(chosen, found, strict=True))  # type: ignore[arg-type]
        return [results[i] for i in range(len(items))]

    def _predict_timed(self, item: _Item, queued_at: float) -> tuple[ImageResult, BatchStats]:
        """Unbatched path: one item, with the same statistics the batcher reports."""
        start = time.perf_counter()
        result = self._predict_items([item])[0]
        return result, BatchStats((start - queued_at) * 1000, (time.perf_counter() - start) * 1000, 1)

    @staticmethod
    def _warm_up(model: OnnxAgeGender, detector: FaceDetector) -> None:
        """Run both networks once so that the first request does not pay for their initialisation."""
        detector.detect(np.zeros((64, 64, 3), np.uint8))
        model.predict([np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8)])
