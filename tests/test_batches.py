"""Device-resident batches (``data_on_device``) give what the CPU batches give: the same draws, the same pixels for
crops and mirrors, the same warp up to its border rule, and a run that trains with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.data.augment import AugmentConfig
from agegender.data.records import FaceRecord
from agegender.models import get_config
from agegender.training.batches import Batches, DeviceBatches
from agegender.training.config import load_config
from agegender.training.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_config("flagship")  # 64 px input cut from 72 px images


def faces(n: int = 24) -> tuple[np.ndarray, list[FaceRecord]]:
    """Smooth random images (a warp of noise would hide nothing) and their labels."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (n, 9, 9, 3)).astype(np.float32)
    images = np.clip(torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=72,
                                                     mode="bilinear").permute(0, 2, 3, 1).numpy(), 0, 255)
    records = [FaceRecord(f"{i}.jpg", float(i), i % 8, i % 2) for i in range(n)]
    return images.astype(np.uint8), records


def both(augment: AugmentConfig | None) -> tuple[Batches, DeviceBatches]:
    images, records = faces()
    return (Batches(images, records, CONFIG, 8, augment, shuffle=True, seed=3),
            DeviceBatches(images, records, CONFIG, 8, augment, shuffle=True, seed=3, device="cpu"))


@pytest.mark.parametrize("augment", [None, AugmentConfig(flip=True, random_crop=True),
                                     AugmentConfig(flip=True, random_crop=True, brightness=0.1, contrast=0.2)])
def test_crops_mirrors_and_jitter_give_the_cpu_batches_pixels(augment: AugmentConfig | None) -> None:
    cpu, device = both(augment)
    for (x_cpu, t_cpu), (x_dev, t_dev) in zip(cpu, device, strict=True):
        assert x_dev.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x_dev, x_cpu, atol=1e-4, rtol=0)
        assert t_dev.keys() == t_cpu.keys()
        for key in t_cpu:
            torch.testing.assert_close(t_dev[key], t_cpu[key], equal_nan=True)
    assert device.state() == cpu.state()  # the same random streams, so a run resumes the same way


def test_the_warp_matches_opencvs_inside_the_border() -> None:
    cpu, device = both(AugmentConfig(flip=True, random_crop=True, rotation=10, zoom=0.08, translate=0.04, shear=4))
    std = float(np.asarray(CONFIG.std).mean())
    for (x_cpu, _), (x_dev, _) in zip(cpu, device, strict=True):
        inside = (slice(None), slice(None), slice(12, 52), slice(12, 52))  # away from the reflected border
        diff = (x_dev - x_cpu)[inside].abs() * std  # in 0..255 pixel levels
        assert float(diff.mean()) < 0.5 and float(diff.max()) < 4.0
    identity = both(AugmentConfig(rotation=1e-9))  # a warp that moves nothing is the centre crop
    for (x_cpu, _), (x_dev, _) in zip(*identity, strict=True):
        torch.testing.assert_close(x_dev, x_cpu, atol=1e-3, rtol=0)


def test_a_run_trains_with_its_data_on_the_device(utkface_dir: Path, tmp_path: Path) -> None:
    overrides = [f"data.root={utkface_dir}", "data.train_limit=64", "epochs=1", "batch_size=32", "threads=1"]
    config = ROOT / "configs" / "flagship" / "v02.yaml"
    on_cpu = Trainer(*_config_and_dir(config, overrides, tmp_path / "a"), progress=False)
    on_device = Trainer(*_config_and_dir(config, [*overrides, "data_on_device=true"], tmp_path / "b"),
                        progress=False)
    assert isinstance(on_device.batches, DeviceBatches) and not isinstance(on_cpu.batches, DeviceBatches)
    assert len(on_device.batches) == len(on_cpu.batches) == 2
    loss = on_device.train_epoch()
    assert np.isfinite(loss) and loss > 0


def _config_and_dir(path: Path, overrides: list[str], run_dir: Path) -> tuple:
    cfg, raw = load_config(path, overrides)
    return cfg, run_dir, raw
