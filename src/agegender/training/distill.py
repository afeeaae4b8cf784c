"""A frozen teacher for knowledge distillation: loaded from a checkpoint or a run folder, checked to see the
same input as the student, and called without gradients on the student's (augmented) batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from agegender.model_config import ModelConfig
from agegender.training.checkpoint import load_model


def teacher_checkpoint(path: str | Path) -> Path:
    """A checkpoint path from a checkpoint or a run folder (whose ``best.pt`` is the teacher)."""
    path = Path(path)
    checkpoint = path / "best.pt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise FileNotFoundError(f"distill.teacher: no checkpoint at {checkpoint} (give a .pt file or a run folder "
                                "holding best.pt)")
    return checkpoint


class Teacher:
    """Calls a frozen model in eval mode; its outputs are targets, never trained."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def load(cls, path: str | Path, student: ModelConfig, device: str = "cpu") -> Teacher:
        model = load_model(teacher_checkpoint(path), device)
        seen = model.config
        for key in ("input_size", "mean", "std"):
            if getattr(seen, key) != getattr(student, key):
                raise ValueError(f"distill.teacher {path} expects {key}={getattr(seen, key)}, the student "
                                 f"{student.name} {getattr(student, key)}: a teacher must see the student's batches")
        return cls(model.to(device, memory_format=torch.channels_last))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)
