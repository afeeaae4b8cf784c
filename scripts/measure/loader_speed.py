"""How many training images per second the data path delivers (cached arrays, augmentation, normalisation).

    python scripts/measure/loader_speed.py [--root UTKFACE_FOLDER] [--config configs/flagship/v02.yaml]

The number to compare with is the model's own training speed (about 200 images/s for a 0.9M-parameter 64 px
net on this 2-core CPU): the loader must be much faster so that it is never the bottleneck.
"""

from __future__ import annotations

import argparse
import time

import torch

from agegender.data.datasets import load_splits
from agegender.models import get_config
from agegender.paths import default_path
from agegender.training.batches import Batches
from agegender.training.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/flagship/v02.yaml")
    parser.add_argument("--root", default=str(default_path("utkface")), help="UTKFace folder (default: the shared one)")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, _ = load_config(args.config, [f"data.root={args.root}"])
    model_config = get_config(cfg.model)
    t0 = time.perf_counter()
    train = load_splits(cfg.data, model_config, progress=True)["train"]
    print(f"splits + cache ready in {time.perf_counter() - t0:.1f} s ({len(train.records)} training images, "
          f"{model_config.load_size} px)")
    batches = Batches(train.images, train.records, model_config, cfg.batch_size, augment=cfg.data.augment,
                      shuffle=True)
    n, t0 = 0, time.perf_counter()
    for i, (x, _) in enumerate(batches):
        n += len(x)
        if i + 1 == args.batches:
            break
    rate = n / (time.perf_counter() - t0)
    print(f"loader: {rate:.0f} images/s at {model_config.input_size}x{model_config.input_size} with "
          f"augmentation, batch {cfg.batch_size}, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
