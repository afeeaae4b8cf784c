"""Batches for CPU training: cached uint8 images in, normalised channels-last tensors and label tensors out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from agegender.data.augment import AugmentConfig, augment_batch
from agegender.data.records import FaceRecord
from agegender.model_config import ModelConfig
from agegender.preprocess import center_crop, normalization

Targets = dict[str, torch.Tensor]


def record_targets(records: Sequence[FaceRecord]) -> dict[str, np.ndarray]:
    """Label arrays; a missing label is NaN (age) or -1 (group, gender, attribute) and is masked by the losses.
    ``attributes`` (N x 40, CelebA's) is there only when some record has attributes."""
    targets = {
        "age": np.array([np.nan if r.age is None else r.age for r in records], dtype=np.float32),
        "group": np.array([-1 if r.age_group is None else r.age_group for r in records], dtype=np.int64),
        "gender": np.array([-1 if r.gender is None else r.gender for r in records], dtype=np.int64),
    }
    width = next((len(r.attributes) for r in records if r.attributes is not None), 0)
    if width:
        targets["attributes"] = np.array([r.attributes if r.attributes is not None else (-1,) * width
                                          for r in records], dtype=np.float32).reshape(len(records), width)
    return targets


def normalize(batch_nhwc: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """N x H x W x 3 RGB 0..255 -> normalised N x 3 x H x W float tensor in channels-last memory."""
    mean, std = normalization(config)
    x = torch.from_numpy(np.ascontiguousarray(batch_nhwc, dtype=np.float32))
    return ((x - torch.from_numpy(mean)) / torch.from_numpy(std)).permute(0, 3, 1, 2)


class Batches:
    """Iterates over (inputs, targets) batches of a cached image array, shuffled and augmented when training."""

    def __init__(self, images: np.ndarray, records: Sequence[FaceRecord], config: ModelConfig, batch_size: int,
                 augment: AugmentConfig | None = None, shuffle: bool = False, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> None:
        """``shard`` = (rank, world size): each distributed rank takes every world-th image of the shared
        shuffled order, and augments with its own random stream."""
        self.images, self.config, self.batch_size = images, config, batch_size
        self.augment, self.shuffle, self.shard = augment, shuffle, shard
        self.targets = record_targets(records)
        self.indices = np.arange(len(records))
        self.order_rng = np.random.default_rng(seed)
        self.rng = np.random.default_rng([seed, shard[0]])

    def __len__(self) -> int:
        return -(-len(self.indices) // (self.batch_size * self.shard[1]))

    def state(self) -> dict:
        return {"order": self.order_rng.bit_generator.state, "augment": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.order_rng.bit_generator.state = state["order"]
        self.rng.bit_generator.state = state["augment"]

    def epoch_order(self) -> np.ndarray:
        order = self.order_rng.permutation(self.indices) if self.shuffle else self.indices
        rank, world = self.shard
        usable = len(order) - len(order) % world  # equal shards keep distributed ranks in step
        return order[rank:usable:world]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Targets]]:
        order = self.epoch_order()
        for start in range(0, len(order), self.batch_size):
            yield self.batch(np.sort(order[start:start + self.batch_size]))

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, Targets]:
        """Inputs and targets of the records at ``idx``; targets["index"] holds those positions."""
        raw = self.images[idx]
        if self.augment is not None:
            pixels = augment_batch(raw, self.config.input_size, self.augment, self.rng)
        else:
            pixels = center_crop(raw, self.config.input_size)
        x = normalize(pixels, self.config).contiguous(memory_format=torch.channels_last)
        return x, {"index": torch.from_numpy(idx), **{k: torch.from_numpy(v[idx]) for k, v in self.targets.items()}}
