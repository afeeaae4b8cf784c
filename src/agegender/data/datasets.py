"""From a data config to cached train/val/test arrays with their records."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agegender.data.augment import AugmentConfig
from agegender.data.cache import cached_images
from agegender.data.celeba import read_celeba
from agegender.data.manifest import read_manifest
from agegender.data.records import FaceRecord
from agegender.data.splits import SPLITS, load_or_make_splits
from agegender.data.utkface import read_utkface
from agegender.labels import AGE_GROUPS, gender_code, group_of_label
from agegender.model_config import ModelConfig
from agegender.paths import default_cache_dir, default_path

log = logging.getLogger(__name__)
FILTER_KEYS = ("gender", "age_group")
#: Explicit records per split name (train, val, test), as cross-validation hands them to the engine.
SplitRecords = Mapping[str, Sequence[FaceRecord]]


class DataConfig(BaseModel):
    """The ``data`` section of a training config: which faces, and how their batches are augmented."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["utkface", "manifest", "celeba"] = "utkface"
    # folder (utkface, celeba) or CSV (manifest); None: the shared UTKFace folder (agegender.paths)
    root: str | None = None
    splits_dir: str | None = None  # where split manifests are written (default: the cache folder)
    # train on a fixed sample of N faces (validate and test on N/8)
    train_limit: int | None = Field(default=None, ge=1, strict=True)
    # with train_limit: "sample" trains on those N faces, "rest" on every other train face (disjoint from them:
    # a pre-training set for a run that fine-tunes on the sample); validation and test as for the sample
    train_part: Literal["sample", "rest"] = "sample"
    filter: dict[str, str] = Field(default_factory=dict)  # keep only e.g. {gender: male} or {age_group: 0-2}
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("root", "splits_dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("filter", mode="before")
    @classmethod
    def _known_filter(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # every label as text (YAML may give a number), checked as filtering checks
            value = {str(key): str(label) for key, label in value.items()}
            filter_records([], value)
        return value

    @model_validator(mode="after")
    def _rest_of_a_sample(self) -> DataConfig:
        if self.train_part == "rest" and self.train_limit is None:
            raise ValueError("data.train_part: rest means the train faces outside the train_limit sample; "
                             "set data.train_limit too")
        return self


@dataclass
class SplitData:
    records: list[FaceRecord]
    images: np.ndarray  # N x S x S x 3 RGB uint8 (memory-mapped)


def dataset_root(cfg: DataConfig) -> Path:
    """The configured data set's folder or manifest, resolved: one spelling of a data set gives one cache."""
    if cfg.root is None and cfg.dataset != "utkface":
        raise ValueError(f"data.root is needed for the {cfg.dataset} data set")
    return Path(cfg.root if cfg.root is not None else default_path("utkface")).expanduser().resolve()


def splits_dir(cfg: DataConfig) -> Path:
    """Where the data set's split manifests are kept: ``data.splits_dir``, else the cache folder's ``splits``."""
    return Path(cfg.splits_dir) if cfg.splits_dir else default_cache_dir() / "splits"


def read_dataset(cfg: DataConfig) -> list[FaceRecord]:
    root = dataset_root(cfg)
    if cfg.dataset == "utkface":
        records, report = read_utkface(root)
    elif cfg.dataset == "manifest":
        records, report = read_manifest(root)
    elif cfg.dataset == "celeba":
        splits, report = read_celeba(root)
        records = [r for name in SPLITS for r in splits[name]]
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}: use utkface, manifest or celeba")
    log.info("%s: %s", root, report.summary())
    return records


def filter_records(records: Sequence[FaceRecord], spec: Mapping[str, str]) -> list[FaceRecord]:
    """The records having every label ``spec`` names: ``gender`` (male or female) and/or ``age_group`` (a
    label such as ``25-32``). Seed 000 trains age nets on one gender and gender nets on one age group."""
    unknown = sorted(set(spec) - set(FILTER_KEYS))
    if unknown:
        raise ValueError(f"data.filter: unknown key(s) {', '.join(unknown)}; use gender (male or female) "
                         f"and/or age_group (one of {', '.join(AGE_GROUPS)})")
    wanted: dict[str, int] = {}
    if "gender" in spec:
        gender = gender_code(spec["gender"])
        if gender is None:
            raise ValueError(f"data.filter.gender must be male or female (or m, f, 0, 1, as in a manifest), got "
                             f"{spec['gender']!r}")
        wanted["gender"] = gender
    if "age_group" in spec:
        wanted["age_group"] = group_of_label(str(spec["age_group"]))
    return [r for r in records if all(getattr(r, key) == value for key, value in wanted.items())]


def dataset_splits(cfg: DataConfig | None = None, progress: bool = True) -> dict[str, list[FaceRecord]]:
    """The configured data set's train/val/test records (near-duplicate groups kept on one side; made once, then
    reused); default: the shared UTKFace folder. Every command and script gets its splits here. CelebA's are its
    official partition, as published (no deduplication; :mod:`agegender.data.celeba`)."""
    if cfg is not None and not isinstance(cfg, DataConfig):
        raise TypeError(f"dataset_splits takes a DataConfig, e.g. DataConfig(dataset='manifest', root='faces.csv'), "
                        f"got {cfg!r}")
    cfg = cfg or DataConfig()
    if cfg.dataset == "celeba":
        splits, report = read_celeba(dataset_root(cfg))
        log.info("%s: %s (%s)", dataset_root(cfg), report.summary(),
                 ", ".join(f"{name} {len(splits[name])}" for name in SPLITS))
        return splits
    records = read_dataset(cfg)
    splits, stats = load_or_make_splits(records, splits_dir(cfg), progress=progress)
    log.info("dedup: %s", stats.to_dict())
    return splits


def limit_records(records: Sequence[FaceRecord], n: int, rest: bool = False) -> list[FaceRecord]:
    """A fixed random sample of ``n`` records, in their original order (``rest``: every record outside that
    sample). Not the first ``n``: split manifests list faces by file name, which for UTKFace sorts them by age.

    >>> faces = [FaceRecord.from_age(f"{age}.jpg", age, 0) for age in range(1, 101)]
    >>> sample, others = limit_records(faces, 20), limit_records(faces, 20, rest=True)
    >>> len(sample), sample == limit_records(faces, 20), sum(r.age for r in sample) / 20 > 30
    (20, True, True)
    >>> len(others), set(map(id, sample)).isdisjoint(map(id, others))
    (80, True)
    """
    if n >= len(records):
        return [] if rest else list(records)
    chosen = np.zeros(len(records), dtype=bool)
    chosen[np.random.default_rng(0).choice(len(records), n, replace=False)] = True
    return [record for record, taken in zip(records, chosen, strict=True) if taken != rest]


def select_records(splits: SplitRecords, cfg: DataConfig) -> dict[str, list[FaceRecord]]:
    """``train_limit`` (a fixed sample of N train and N/8 val and test records; with ``train_part: rest``, the
    train faces outside the sample), then ``filter``, on each split. Limiting first makes a filtered run's faces
    a subset of the unfiltered run's."""
    out = {}
    for name in SPLITS:
        records = list(splits[name])
        if cfg.train_limit and name == "train":
            records = limit_records(records, cfg.train_limit, rest=cfg.train_part == "rest")
        elif cfg.train_limit:
            records = limit_records(records, max(cfg.train_limit // 8, 16))
        if cfg.filter:
            records = filter_records(records, cfg.filter)
        if not records:
            raise ValueError(f"the {name} split has no faces left (train_limit {cfg.train_limit}, "
                             f"filter {cfg.filter or 'none'})")
        out[name] = records
    return out


def decode_split(records: Sequence[FaceRecord], config: ModelConfig, progress: bool = True) -> SplitData:
    """Records' images decoded (and cached) at the model's load size; undecodable ones are left out."""
    images, ok = cached_images(records, config.load_size, config.face_crop, config.resampling, progress=progress)
    if ok.all():
        return SplitData(list(records), images)
    log.warning("%d of %d images could not be decoded and are left out", int((~ok).sum()), len(records))
    keep = np.flatnonzero(ok)
    return SplitData([records[i] for i in keep.tolist()], images[keep])


def load_splits(cfg: DataConfig, config: ModelConfig, progress: bool = True,
                records: SplitRecords | None = None) -> dict[str, SplitData]:
    """Leakage-safe splits of the configured dataset, or the explicit train/val/test ``records``
    (cross-validation folds), after ``train_limit`` and ``filter``, decoded once at the model's load size."""
    splits = select_records(records if records is not None else dataset_splits(cfg, progress), cfg)
    return {name: decode_split(splits[name], config, progress) for name in SPLITS}
