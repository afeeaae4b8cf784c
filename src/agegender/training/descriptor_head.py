"""The accurate mode's head: dlib's 128 face-descriptor numbers in, the age distribution and P(female) out,
fitted here and exported as the ONNX file that :mod:`agegender.inference.accurate.stacked` runs
(``weights/descriptor_head.onnx``, built by ``scripts/build/descriptor_teacher.py --export-head``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agegender.age_calibration import INTERVAL_METADATA_KEY, METADATA_KEY, AgeCalibration
from agegender.artifacts import artifact
from agegender.data.records import FaceRecord
from agegender.inference.accurate.dlib_format import DESCRIPTOR_SIZE
from agegender.inference.backends import set_metadata
from agegender.labels import MAX_AGE
from agegender.training.batches import record_targets
from agegender.training.losses import LossSpec, multitask_loss
from agegender.version import __version__

#: The head's loss: the flagship's label-distribution age loss and gender BCE.
HEAD_LOSS = LossSpec(age_group=0.0, age_dist=1.0, sigma=2.0, l1_weight=0.5, gender=1.0)


class DescriptorHead(nn.Module):
    """128 descriptor numbers (standardised) -> the age distribution over 0..100 and P(female), as our models'
    ``age_dist_logits`` and ``gender_logit``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.body = nn.Sequential(nn.Linear(DESCRIPTOR_SIZE, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, MAX_AGE + 2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.body((x - self.mean) / self.std)
        return {"age_dist_logits": out[:, :-1], "gender_logit": out[:, -1]}


def fit_head(x: np.ndarray, records: Sequence[FaceRecord], epochs: int, seed: int) -> DescriptorHead:
    """AdamW one-cycle on the label-distribution age loss and the gender BCE (the flagship's own loss)."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x)
    targets = {k: torch.from_numpy(v) for k, v in record_targets(records).items()}
    head = DescriptorHead(xt.mean(0), xt.std(0))
    batch = 256
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * -(-len(x) // batch))
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss, _ = multitask_loss(head(xt[idx]), {k: v[idx] for k, v in targets.items()}, HEAD_LOSS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def head_outputs(head: DescriptorHead, x: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in head(torch.from_numpy(x)).items()}


def export_head(head: DescriptorHead, path: Path, report: Mapping) -> Path:
    """The head as ONNX for the accurate inference mode: input ``descriptor`` N x 128 (dlib's numbers as they
    come), outputs ``age_dist_logits`` and ``gender_logit``; the stacking weights, scores, the stack's age correction
    and its interval calibration (``report["age_calibration"]["interval"]``, if fitted) as metadata."""

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.head(x)
            return out["age_dist_logits"], out["gender_logit"]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(Graph().eval(), (torch.zeros(2, DESCRIPTOR_SIZE),), str(tmp), input_names=["descriptor"],
                      output_names=["age_dist_logits", "gender_logit"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in ("descriptor", "age_dist_logits", "gender_logit")})
    calibration = report["age_calibration"]
    interval = calibration.get("interval")
    set_metadata(tmp, {METADATA_KEY: AgeCalibration(calibration["knee"], calibration["slope"]).to_json()
                       if calibration["stored"] else "",
                       INTERVAL_METADATA_KEY: json.dumps(interval) if interval else "",
                       "stack_weights": json.dumps(report["weights"]), "stacked_with": json.dumps(report["models"]),
                       "descriptor_sha256": artifact("dlib-resnet").sha256, "version": __version__,
                       "metrics": json.dumps({**report["test"]["stacked"], "protocol": (
                           "UTKFace test split; the flagship flip-averaged, the descriptor head on the unflipped "
                           "chip; probabilities averaged with weights chosen on the validation split; ages "
                           "corrected by the age calibration fitted there, if stored")}),
                       "scores": json.dumps({k: report[k] for k in ("train", "val", "test")})})
    tmp.replace(path)
    return path
