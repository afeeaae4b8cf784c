"""From a data config to cached train/val/test arrays with their records."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agegender.data.cache import cached_images, default_cache_dir
from agegender.data.manifest import read_manifest
from agegender.data.records import FaceRecord
from agegender.data.splits import SPLITS, load_or_make_splits
from agegender.data.utkface import read_utkface
from agegender.model_config import ModelConfig
from agegender.training.config import DataConfig

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    records: list[FaceRecord]
    images: np.ndarray  # N x S x S x 3 RGB uint8 (memory-mapped)


def read_dataset(cfg: DataConfig) -> list[FaceRecord]:
    if cfg.dataset == "utkface":
        records, report = read_utkface(cfg.root)
    elif cfg.dataset == "manifest":
        records, report = read_manifest(cfg.root)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}: use utkface or manifest")
    log.info("%s: %s", cfg.root, report.summary())
    return records


def load_splits(cfg: DataConfig, config: ModelConfig, progress: bool = True) -> dict[str, SplitData]:
    """Leakage-safe splits of the configured dataset, decoded once at the model's load size."""
    records = read_dataset(cfg)
    splits_dir = Path(cfg.splits_dir) if cfg.splits_dir else default_cache_dir() / "splits"
    splits, stats = load_or_make_splits(records, splits_dir, progress=progress)
    log.info("dedup: %s", stats.to_dict())
    if cfg.train_limit:
        limits = {"train": cfg.train_limit, "val": max(cfg.train_limit // 8, 16), "test": max(cfg.train_limit // 8, 16)}
        splits = {k: v[: limits[k]] for k, v in splits.items()}
    out = {}
    for name in SPLITS:
        recs = splits[name]
        images, ok = cached_images(recs, config.load_size, config.face_crop, progress=progress)
        if not ok.all():
            log.warning("%s: %d images could not be decoded and are left out", name, int((~ok).sum()))
        keep = np.flatnonzero(ok)
        out[name] = SplitData([recs[i] for i in keep], images if ok.all() else images[keep])
    return out
