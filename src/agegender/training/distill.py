"""A frozen teacher for knowledge distillation: one model or an ensemble, each loaded from a checkpoint or a run
folder, checked to see what the student sees (:func:`input_scale`), and called without gradients on the student's
(augmented) batches, optionally averaged with the mirrored batch as the shipped model predicts. A teacher with a
smaller input (an integer fraction of the student's, same field of view) sees the batch average-pooled down to its
size, so a high-resolution student can learn from low-resolution teachers. On a CPU the teacher runs in ONNX
Runtime, where its forward pass takes about half the time it takes in eager PyTorch.

Outputs of several models or views are averaged the way test-time oversampling averages them
(``agegender.evaluation.oversample.average_outputs``): probabilities, turned back into logits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from agegender.evaluation.oversample import average_outputs
from agegender.export import INPUT_NAME, write_graph
from agegender.inference.onnx_model import ort_session
from agegender.model_config import ModelConfig
from agegender.training.checkpoint import load_model, run_checkpoint

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
    ``scales`` (one per model, default 1) average-pools the batch by that factor for that model."""

    def __init__(self, models: Sequence[nn.Module], flip: bool = False, runtime: str = "torch",
                 scales: Sequence[int] | None = None) -> None:
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

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], student: ModelConfig, device: str | torch.device = "cpu",
             flip: bool = False, runtime: str = "auto") -> Teacher:
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
            scales.append(input_scale(model.config, student, f"distill.teacher {path}"))
            models.append(model.to(device, memory_format=torch.channels_last))
        return cls(models, flip, runtime, scales)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        n = len(x)
        batch = torch.cat([x, x.flip(-1)]) if self.flip else x  # both views in one call
        views = {s: F.avg_pool2d(batch, s) if s > 1 else batch for s in set(self.scales)}
        outputs = [run(views[s]) for run, s in zip(self.runners, self.scales, strict=True)]
        if self.flip:
            outputs = [{k: v[part] for k, v in out.items()} for out in outputs
                       for part in (slice(0, n), slice(n, None))]
        if len(outputs) == 1:
            return dict(outputs[0])
        averaged = average_outputs([{k: v.cpu().numpy() for k, v in out.items()} for out in outputs])
        return {k: torch.from_numpy(v).to(x.device, torch.float32) for k, v in averaged.items()}
