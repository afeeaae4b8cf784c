"""Run under torchrun by test_training: train a few steps with DDP, then compare every rank's validated weights."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from agegender.training.config import load_config
from agegender.training.engine import Trainer


def main() -> None:
    config_path, run_dir, out = sys.argv[1:4]
    cfg, raw = load_config(config_path, sys.argv[4:])
    trainer = Trainer(cfg, run_dir, raw, progress=False)
    trainer.fit()
    weights = trainer.eval_model.state_dict()  # the averaged weights when the config sets `ema`
    flat = torch.cat([p.detach().reshape(-1) for p in weights.values() if p.is_floating_point()])
    gathered = [torch.zeros_like(flat) for _ in range(trainer.dist.world)]
    dist.all_gather(gathered, flat)
    if trainer.dist.is_main:
        with open(out, "w") as handle:
            json.dump({"world": trainer.dist.world, "max_diff": max(float((g - gathered[0]).abs().max())
                                                                    for g in gathered),
                       "norm": float(flat.norm())}, handle)
    trainer.dist.close()


if __name__ == "__main__":
    main()
