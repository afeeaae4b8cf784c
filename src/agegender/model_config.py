"""What a model needs from its input and what it returns: travels with the model, into checkpoints and ONNX files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: How a chip is brought to the network's load size after the exact k x k box average
#: (:func:`agegender.preprocess.resize_square`): ``"area"`` averages the rest of the way (what every model was
#: trained on until 2026-12-07); ``"linear"`` interpolates it, in about half the preprocessing time (44 against
#: 83 us a face at batch 64), the shipped int8 model's validation figures within noise when it reads so
#: (``scripts/measure/resampling.py``, ``docs/logs/resampling.md``). A model is trained and served with its own.
RESAMPLINGS = ("area", "linear")


@dataclass(frozen=True)
class ModelConfig:
    """Preprocessing and head layout of a registered model.

    Images are RGB, scaled 0..255. A face chip is center-cropped to ``face_crop`` of its side, resized to
    ``resize`` pixels (by ``resampling``, one of :data:`RESAMPLINGS`), then center-cropped (random crop in
    training) to ``input_size``; the network sees ``(pixel - mean) / std``.
    """

    name: str
    input_size: int
    outputs: tuple[str, ...]
    resize: int | None = None  # None: resize straight to input_size
    face_crop: float = 1.0
    resampling: str = "area"  # a file exported before the field existed was trained on "area"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    paper_params: float | None = None  # parameter count the source document gives, if any
    source: str = ""  # which seed document and section it follows
    extra: dict[str, Any] = field(default_factory=dict)  # architecture options recorded for reproducibility

    def __post_init__(self) -> None:
        """ValueError for a config no model can be fed by: sizes that are not whole numbers of pixels, a resize
        smaller than the crop taken from it, a face crop outside (0, 1], an unknown resampling, ``mean``/``std`` not
        three numbers (``std`` above 0), outputs not a tuple of names."""
        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        problems = []
        if not (whole(self.input_size) and self.input_size >= 8):
            problems.append(f"input_size must be a whole number of pixels >= 8, got {self.input_size!r}")
        elif self.resize is not None and not (whole(self.resize) and self.resize >= self.input_size):
            problems.append(f"resize must be a whole number of pixels >= input_size ({self.input_size}), or None, "
                            f"got {self.resize!r}")
        if not (isinstance(self.face_crop, int | float) and 0 < self.face_crop <= 1):
            problems.append(f"face_crop must be in (0, 1], got {self.face_crop!r}")
        if self.resampling not in RESAMPLINGS:
            problems.append(f"resampling must be one of {', '.join(RESAMPLINGS)}, got {self.resampling!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, int | float) for v in value)):
                problems.append(f"{name} must be three numbers (R, G, B), got {value!r}")
            elif name == "std" and min(value) <= 0:
                problems.append(f"std must be above 0, got {value!r}")
        if not (isinstance(self.outputs, tuple) and self.outputs and all(isinstance(o, str) for o in self.outputs)):
            problems.append(f"outputs must be a tuple of output names, got {self.outputs!r}")
        if problems:
            raise ValueError(f"model config {self.name!r}: " + "; ".join(problems))

    @property
    def load_size(self) -> int:
        return self.resize or self.input_size

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("outputs", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
