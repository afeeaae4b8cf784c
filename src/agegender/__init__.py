"""agegender: age and gender for every face in a photo.

``from agegender import Predictor`` loads lazily, so importing the package costs nothing until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agegender.version import __version__

__all__ = ["Face", "ImageResult", "Predictor", "__version__"]

if TYPE_CHECKING:
    from agegender.inference.predictor import Predictor
    from agegender.inference.results import Face, ImageResult


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from agegender.inference.predictor import Predictor

        return Predictor
    if name == "Face":
        from agegender.inference.results import Face

        return Face
    if name == "ImageResult":
        from agegender.inference.results import ImageResult

        return ImageResult
    raise AttributeError(f"module 'agegender' has no attribute {name!r}")
