"""Server settings: one frozen dataclass, passed to worker processes as JSON in an environment variable."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from agegender.images import DEFAULT_MAX_PIXELS
from agegender.inference.detector import DETECT_SIZE, MIN_DETECT_SIZE

ENV_VAR = "AGEGENDER_SERVE_SETTINGS"
MIB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``agegender serve`` can configure.

    ``model``/``detector``: ONNX paths (``None``: the shipped model / YuNet located as ``FaceDetector`` does);
    ``gender_model``: a gender-only export served beside ``model``, an age-only one (``load_model`` pairs them).
    ``detect_size``: the longer side photos are detected at (``FaceDetector``'s ``max_side``).
    ``max_upload_bytes``: largest accepted request body (413 above it). ``max_pixels``: largest accepted
    width * height, checked from the image header before decoding (422 above it). ``timeout_s``: per-request
    limit (504 past it). ``workers``: server processes, each with its own model. ``threads``: ONNX Runtime
    threads and image-decoding threads per process (``None``: up to 4, one per CPU). ``batch_max``,
    ``batch_wait_ms``: concurrent requests are grouped into one forward pass of at most ``batch_max``
    images, waiting up to ``batch_wait_ms`` for companions; ``batch_max=1`` turns batching off.
    ``max_queue``: requests waiting beyond this many get 503. ``flip``: default of the ``flip`` parameter.
    ``accurate``: serve the accurate mode (``StackedAgeGender``: ``model``, by default the float32 flagship,
    stacked with the dlib descriptor head), dlib's weights found at ``descriptor_weights`` or located as
    ``predict --accurate`` does. ``backend``, ``device``: the runtime (``agegender.inference.backends``).
    """

    model: str | None = None
    gender_model: str | None = None
    detector: str | None = None
    detect_size: int = DETECT_SIZE
    max_upload_bytes: int = 10 * MIB
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = 30.0
    workers: int = 1
    threads: int | None = None
    batch_max: int = 16
    batch_wait_ms: float = 2.0
    max_queue: int = 256
    flip: bool = True
    accurate: bool = False
    descriptor_weights: str | None = None
    backend: str = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "workers", "batch_max", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.detect_size < MIN_DETECT_SIZE:
            raise ValueError(f"detect_size must be at least {MIN_DETECT_SIZE}, got {self.detect_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.descriptor_weights and not self.accurate:
            raise ValueError("descriptor_weights is for the accurate mode (accurate=True)")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise ValueError(f"batch_wait_ms must be a number of milliseconds, 0 or more, got {self.batch_wait_ms}")

    @property
    def thread_count(self) -> int:
        """``threads``, or its default: one per CPU, at most 4."""
        return self.threads or min(4, os.cpu_count() or 1)

    def to_env(self) -> None:
        """Store these settings in the environment, for worker processes to read with :meth:`from_env`."""
        os.environ[ENV_VAR] = json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeSettings:
        """Settings stored by :meth:`to_env`; defaults when there are none."""
        raw = json.loads(os.environ.get(ENV_VAR) or "{}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"${ENV_VAR} has unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)
