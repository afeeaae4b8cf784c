"""One factory for the age-and-gender model that the CLI, the service and the bench run."""

from __future__ import annotations

import os
from pathlib import Path

from agegender.inference.accurate.stacked import StackedAgeGender
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.inference.paired import PairedAgeGender


def load_model(model: str | Path | None = None, *, accurate: bool = False, threads: int | None = None,
               descriptor_weights: str | os.PathLike | None = None, backend: str = "auto",
               device: str | None = None, gender_model: str | Path | None = None) -> OnnxAgeGender:
    """A shipped model's name (``flagship-int8``, ``flagship``), an ``agegender export`` file, or ``None`` for the
    default; with ``accurate``, that model (default: the float32 flagship) stacked with the head on dlib's face
    descriptors (``descriptor_weights``: dlib's ``.dat``, else found as :mod:`~agegender.inference.accurate.stacked`
    says); with ``gender_model``, ``model`` is an age-only export and ``gender_model`` a gender-only one, run as a
    pair (:class:`~agegender.inference.paired.PairedAgeGender`). ``threads`` caps each runtime session's threads;
    ``backend`` and ``device`` choose the runtime (:func:`~agegender.inference.backends.open_session`).

    >>> load_model().config.name, load_model("flagship").metadata.get("quantization") is None
    ('flagship', True)
    """
    if gender_model is not None:
        if accurate or model is None:
            raise ValueError("gender_model pairs an age-only export (model=...) with a gender-only one; the accurate "
                             "mode and the default model predict both already")
        return PairedAgeGender(model, gender_model, threads, backend, device)
    if accurate:
        return StackedAgeGender(model, threads, descriptor_weights, backend=backend, device=device)
    if descriptor_weights is not None:
        raise ValueError("descriptor_weights is for the accurate mode (accurate=True)")
    return OnnxAgeGender(model, threads, backend, device)
