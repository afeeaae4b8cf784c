"""A frozen teacher for knowledge distillation: one model or an ensemble, each loaded from a checkpoint or a run
folder, checked to see what the student sees (:func:`input_scale`), and called without gradients on the student's
(augmented) batches, optionally averaged with the mirrored batch as the shipped model predicts. A teacher with a
smaller input (an integer fraction of the student's, same field of view) sees the batch average-pooled down to its
size, so a high-resolution student can learn from low-resolution teachers. On a CPU the teacher runs in ONNX
Runtime, where its forward pass takes about half the time it takes in eager PyTorch.

A teacher that runs in PyTorch runs under the student's precision (``precision: bf16-mixed``: bfloat16 autocast),
its outputs upcast to float32; in ONNX Runtime it runs in float32.

Outputs of several models or views are averaged the way test-time oversampling averages them
(``agegender.oversample.average_outputs``): probabilities, turned back into logits.

A teacher too slow to run on every batch (or one that is not a network of ours, such as a head on face
descriptors) can be given as its outputs stored beforehand, one row per training image (:class:`StoredOutputs`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from agegender.data.records import FaceRecord
from agegender.export import write_graph
from agegender.inference.backends import INPUT_NAME, ort_session
from agegender.model_config import ModelConfig
from agegender.models import config_of
from agegender.outputs import AUXILIARY_KEYS, OUTPUT_KEYS
from agegender.oversample import average_outputs
from agegender.training.checkpoint import load_model, run_checkpoint
from agegender.training.precision import autocast, upcast

RUNTIMES = ("auto", "torch", "onnx")


class OnnxRunner:
    """A frozen model compiled into an ONNX Runtime session, called like the model: a normalised batch in, its
    output dict out, on the batch's device."""

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:  # the session holds the graph once built
            self.session = ort_session(write_graph(model, Path(tmp) / "teacher.onnx", normalise=False),
                                       threads or torch.get_num_threads())
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        values = self.session.run(self.names, {INPUT_NAME: x.detach().cpu().contiguous().numpy()})
        return {name: torch.from_numpy(v).to(x.device) for name, v in zip(self.names, values, strict=True)}


def input_scale(teacher: ModelConfig, student: ModelConfig, name: str = "distill.teacher") -> int:
    """By how much the student's input is average-pooled for the teacher: 1 for the same input, k when the
    teacher's side is the student's divided by k and both see the same part of the face.

    >>> from agegender.models import get_config
    >>> small = get_config("flagship")
    >>> input_scale(small, small.replace(input_size=128, resize=144))
    2
    """
    for key in ("mean", "std", "face_crop"):
        if getattr(teacher, key) != getattr(student, key):
            raise ValueError(f"{name} expects {key}={getattr(teacher, key)}, the student {student.name} "
                             f"{getattr(student, key)}: a teacher must see the student's batches")
    scale, rest = divmod(student.input_size, teacher.input_size)
    if rest or student.load_size * teacher.input_size != teacher.load_size * student.input_size:
        raise ValueError(f"{name} expects input_size={teacher.input_size} (resize {teacher.load_size}), the "
                         f"student {student.name} {student.input_size} (resize {student.load_size}): a teacher must "
                         "see the student's batches, at the same size or an integer fraction of it with the same "
                         "field of view")
    return scale


class Teacher:
    """Frozen models in eval mode whose (averaged) outputs are targets, never trained. ``flip`` also runs each
    model on the mirrored batch and averages the two views; ``runtime`` "onnx" runs the models in ONNX Runtime;
    ``scales`` (one per model, default 1) average-pools the batch by that factor for that model. ``precision``
    (``fp32`` or ``bf16-mixed``, which the engine sets to the run's) is the autocast the PyTorch models run under;
    the outputs are float32 either way."""

    def __init__(self, models: Sequence[nn.Module], flip: bool = False, runtime: str = "torch",
                 scales: Sequence[int] | None = None, precision: str = "fp32") -> None:
        if not models:
            raise ValueError("a teacher needs at least one model")
        if runtime not in ("torch", "onnx"):
            raise ValueError(f"a teacher runs in torch or onnx, not {runtime!r}")
        self.models = [m.eval().requires_grad_(False) for m in models]
        self.runners: list[Callable[[Tensor], Mapping[str, Tensor]]] = (
            [OnnxRunner(m) for m in self.models] if runtime == "onnx" else list(self.models))
        self.scales = list(scales or [1] * len(self.models))
        if len(self.scales) != len(self.models):
            raise ValueError(f"{len(self.models)} teacher models but {len(self.scales)} input scales")
        self.flip = flip
        self.runtime = runtime
        self.precision = precision

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], student: ModelConfig, device: str | torch.device = "cpu",
             flip: bool = False, runtime: str = "auto", precision: str = "fp32") -> Teacher:
        """Load one teacher or an ensemble; each must see what the student sees (input size, mean, std).
        ``runtime`` "auto" is ONNX Runtime on a CPU and PyTorch elsewhere."""
        if runtime not in RUNTIMES:
            raise ValueError(f"distill.runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if runtime == "auto":
            runtime = "onnx" if torch.device(device).type == "cpu" else "torch"
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        models, scales = [], []
        for path in paths:
            model = load_model(run_checkpoint(path, "distill.teacher"), device)
            scales.append(input_scale(config_of(model), student, f"distill.teacher {path}"))
            models.append(model.to(device).to(memory_format=torch.channels_last))
        return cls(models, flip, runtime, scales, precision)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        n = len(x)
        batch = torch.cat([x, x.flip(-1)]) if self.flip else x  # both views in one call
        views = {s: F.avg_pool2d(batch, s) if s > 1 else batch for s in set(self.scales)}
        with autocast(self.precision if self.runtime == "torch" else "fp32", x.device):
            outputs = [run(views[s]) for run, s in zip(self.runners, self.scales, strict=True)]
        outputs = [upcast(out) for out in outputs]
        if self.flip:
            outputs = [{k: v[part] for k, v in out.items()} for out in outputs
                       for part in (slice(0, n), slice(n, None))]
        if len(outputs) == 1:
            return dict(outputs[0])
        averaged = average_outputs([{k: v.cpu().numpy() for k, v in out.items()} for out in outputs])
        return {k: torch.from_numpy(v).to(x.device, torch.float32) for k, v in averaged.items()}


def save_stored_outputs(path: str | Path, names: Sequence[str], outputs: Mapping[str, np.ndarray]) -> Path:
    """Write a teacher's outputs for the images named ``names`` (file names, one row each) for ``distill.stored``."""
    known = (*OUTPUT_KEYS, *AUXILIARY_KEYS)
    unknown = sorted(set(outputs) - set(known))
    if unknown:
        raise ValueError(f"not model outputs: {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError("stored outputs need one row per image file name; the names repeat")
    for key, value in outputs.items():
        if len(value) != len(names):
            raise ValueError(f"{key} has {len(value)} rows for {len(names)} names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()}
    np.savez_compressed(path, names=np.asarray(names, dtype=str), **arrays)
    return path


class StoredOutputs:
    """A teacher's outputs computed beforehand, looked up by the position of a training record: the same
    targets for every augmented view of an image. Rows are matched to records by image file name.

    >>> import tempfile
    >>> recs = [FaceRecord.from_age(f"/data/{n}.jpg", 30, 0) for n in ("a", "b")]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     f = save_stored_outputs(f"{tmp}/t.npz", ["b.jpg", "a.jpg", "c.jpg"], {"gender_logit": [2.0, 1.0, 0.0]})
    ...     StoredOutputs.load(f, recs)(torch.tensor([1, 0]))["gender_logit"].tolist()  # records b, a
    [2.0, 1.0]
    """

    def __init__(self, outputs: Mapping[str, np.ndarray]) -> None:
        self.outputs = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in outputs.items()}

    @classmethod
    def load(cls, path: str | Path, records: Sequence[FaceRecord]) -> StoredOutputs:
        """The rows of ``path`` for ``records``, in their order; every record must have one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"distill.stored: no such file {path}")
        with np.load(path) as data:
            if "names" not in data:
                raise ValueError(f"distill.stored: {path} has no `names` array; write it with save_stored_outputs")
            row = {str(name): i for i, name in enumerate(data["names"])}
            names = [Path(r.path).name for r in records]
            missing = [n for n in names if n not in row]
            if missing:
                raise ValueError(f"distill.stored: {path} has no outputs for {len(missing)} of the {len(names)} "
                                 f"training images (e.g. {missing[0]}): build it for this dataset and split")
            order = np.array([row[n] for n in names])
            return cls({k: data[k][order] for k in data.files if k != "names"})

    def __call__(self, index: Tensor) -> dict[str, Tensor]:
        idx = index.cpu()
        return {k: v[idx].to(index.device) for k, v in self.outputs.items()}
