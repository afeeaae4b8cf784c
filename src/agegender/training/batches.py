"""Training batches: cached uint8 images in, normalised channels-last tensors and label tensors out. ``Batches``
augments on the CPU; ``DeviceBatches`` holds the images in the training device's memory and augments there."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agegender.data.augment import AugmentConfig, Draws, augment_batch, draw
from agegender.data.records import FaceRecord
from agegender.model_config import ModelConfig
from agegender.preprocess import center_crop, normalization

Targets = dict[str, torch.Tensor]


def record_targets(records: Sequence[FaceRecord]) -> dict[str, np.ndarray]:
    """Label arrays; a missing label is NaN (age) or -1 (group, gender, attribute) and is masked by the losses.
    ``attributes`` (N x 40, CelebA's) is there only when some record has attributes."""
    targets: dict[str, np.ndarray] = {
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


class DeviceBatches(Batches):
    """:class:`Batches` held in ``device``'s memory (a GPU): the uint8 images and the labels are copied there once,
    and the crop, mirror, affine warp and photometric jitter run there as batched tensor operations instead of a
    CPU loop per image. The random choices are :func:`~agegender.data.augment.draw`'s, from the same streams as
    :class:`Batches` (a run resumes the same way); crops and mirrors give the same pixels, the warp samples
    bilinearly as OpenCV's does but reflects its border about the edge rather than the edge pixel."""

    def __init__(self, images: np.ndarray, records: Sequence[FaceRecord], config: ModelConfig, batch_size: int,
                 augment: AugmentConfig | None = None, shuffle: bool = False, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), *, device: torch.device | str) -> None:
        super().__init__(images, records, config, batch_size, augment, shuffle, seed, shard)
        self.device = torch.device(device)
        self.pixels = torch.from_numpy(np.array(images)).to(self.device)  # a copy: the cache is read-only
        self.on_device = {k: torch.from_numpy(v).to(self.device) for k, v in self.targets.items()}
        mean, std = normalization(config)
        self.mean, self.std = (torch.from_numpy(v).to(self.device).view(1, 3, 1, 1) for v in (mean, std))

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, Targets]:
        index = torch.from_numpy(idx).to(self.device)
        raw = self.pixels[index]  # n x S x S x 3 uint8
        out = self.config.input_size
        if self.augment is None:
            y0 = x0 = (raw.shape[1] - out) // 2  # preprocess.center_crop's window
            pixels = raw[:, y0:y0 + out, x0:x0 + out].permute(0, 3, 1, 2).float()
        else:
            pixels = self._augmented(raw, draw(len(idx), raw.shape[1], out, self.augment, self.rng))
        x = ((pixels - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return x, {"index": index, **{k: v[index] for k, v in self.on_device.items()}}

    def _augmented(self, raw: torch.Tensor, d: Draws) -> torch.Tensor:
        """N x 3 x out x out float pixels (0..255) of ``raw`` (N x S x S x 3 uint8) under the draws ``d``."""
        n, src, out = len(raw), raw.shape[1], self.config.input_size
        if d.matrices is not None:
            grid = F.affine_grid(torch.from_numpy(_sampling_theta(d.matrices, src, out)).float().to(self.device),
                                 [n, 3, out, out], align_corners=False)
            pixels = F.grid_sample(raw.permute(0, 3, 1, 2).float(), grid, mode="bilinear", padding_mode="reflection",
                                   align_corners=False)
        else:
            steps = np.arange(out)
            cols = d.offsets[:, :1] + np.where(d.flips[:, None], steps[::-1], steps)  # n x out
            rows = d.offsets[:, 1:] + steps  # n x out
            rows_t, cols_t = (torch.from_numpy(a).to(self.device) for a in (rows, cols))
            batch = torch.arange(n, device=self.device)[:, None, None]
            pixels = raw[batch, rows_t[:, :, None], cols_t[:, None, :]].permute(0, 3, 1, 2).float()
        if d.contrast is not None and d.brightness is not None:
            c, b = (torch.from_numpy(a).float().to(self.device).view(-1, 1, 1, 1) for a in (d.contrast, d.brightness))
            mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
            pixels = ((pixels - mean) * c + mean + b).clamp_(0.0, 255.0)
        return pixels


def _sampling_theta(matrices: np.ndarray, src: int, out: int) -> np.ndarray:
    """``affine_grid``'s N x 2 x 3 thetas for OpenCV-style matrices (source pixels -> output pixels): each output
    pixel's normalised coordinates (``align_corners=False``: pixel centres at (2i + 1) / side - 1) mapped to
    the normalised source position it samples."""
    n = len(matrices)
    forward = np.tile(np.eye(3), (n, 1, 1))
    forward[:, :2] = matrices
    to_source = np.linalg.inv(forward)  # output pixels -> source pixels
    from_out = np.array([[out / 2, 0, (out - 1) / 2], [0, out / 2, (out - 1) / 2], [0, 0, 1]])
    to_norm = np.array([[2 / src, 0, 1 / src - 1], [0, 2 / src, 1 / src - 1], [0, 0, 1]])
    return (to_norm @ to_source @ from_out)[:, :2]
