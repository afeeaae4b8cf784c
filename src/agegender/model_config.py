"""What a model needs from its input and what it returns: travels with the model, into checkpoints and ONNX files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelConfig:
    """Preprocessing and head layout of a registered model.

    Images are RGB, scaled 0..255. A face chip is center-cropped to ``face_crop`` of its side, resized to
    ``resize`` pixels, then center-cropped (random crop in training) to ``input_size``; the network sees
    ``(pixel - mean) / std``.
    """

    name: str
    input_size: int
    outputs: tuple[str, ...]
    resize: int | None = None  # None: resize straight to input_size
    face_crop: float = 1.0
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    paper_params: float | None = None  # parameter count the source document gives, if any
    source: str = ""  # which seed document and section it follows
    extra: dict[str, Any] = field(default_factory=dict)  # architecture options recorded for reproducibility

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
