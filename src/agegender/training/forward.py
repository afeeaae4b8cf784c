"""Run a torch model over cached uint8 images with optional test-time augmentation; NumPy outputs out (float32,
also from a model run under bfloat16 autocast)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agegender.model_config import ModelConfig
from agegender.oversample import TTA_MODES, average_crops, flip_average, ten_crops
from agegender.preprocess import center_crop
from agegender.training.batches import normalize
from agegender.training.precision import autocast


@torch.no_grad()
def _forward(model: nn.Module, pixels: np.ndarray, config: ModelConfig, device: str,
             precision: str = "fp32") -> dict[str, np.ndarray]:
    """The model's outputs for N x S x S x 3 RGB uint8 crops: normalised as the config says, unless the model
    declares ``takes_pixels`` (an export, which normalises inside its graph)."""
    if getattr(model, "takes_pixels", False):
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32))
    else:
        x = normalize(pixels, config).to(device).contiguous(memory_format=torch.channels_last)
    with autocast(precision, device):
        outputs = model(x)
    return {k: v.float().cpu().numpy() for k, v in outputs.items()}


def model_outputs(model: nn.Module, images: np.ndarray, config: ModelConfig, tta: str = "none",
                  batch_size: int = 256, device: str = "cpu", precision: str = "fp32") -> dict[str, np.ndarray]:
    """Outputs for N x S x S x 3 RGB uint8 images (S = config.load_size). ``tta``: ``none`` (center crop),
    ``flip`` (center crop and its mirror averaged) or ``ten_crop`` (Levi-Hassner oversampling). ``precision``:
    ``fp32``, or ``bf16-mixed`` for bfloat16 autocast as the run trained (the outputs are float32 either way)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    autocast(precision, device)  # refuses anything but fp32 and bf16-mixed before any work
    model.eval()
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size])
        if tta == "ten_crop":
            parts.append(average_crops(_forward(model, ten_crops(chunk, config.input_size), config, device,
                                                precision), 10))
            continue
        crop = center_crop(chunk, config.input_size)
        out = _forward(model, crop, config, device, precision)
        if tta == "flip":
            out = flip_average(out, _forward(model, crop[:, :, ::-1], config, device, precision))
        parts.append(out)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
