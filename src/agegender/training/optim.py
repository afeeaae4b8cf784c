"""Optimizers and learning-rate schedules named in configs, as the seed papers used them."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from agegender.training.config import OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """All parameters, frozen ones included: a frozen parameter has no gradient and is skipped by every
    optimizer, so unfreezing later needs no new parameter group and follows the schedule."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}: use sgd, adam, adamw or rmsprop")


class Schedule:
    """One interface over per-step (onecycle) and per-epoch schedules, and ReduceLROnPlateau."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int,
                 steps_per_epoch: int) -> None:
        self.per_step = cfg.name == "onecycle"
        lr = [g["lr"] for g in optimizer.param_groups]
        self.inner: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
        if cfg.name == "none":
            self.inner = None
        elif cfg.name == "step":
            self.inner = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
        elif cfg.name == "multistep":
            self.inner = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
        elif cfg.name == "cosine":
            self.inner = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
        elif cfg.name == "onecycle":
            if float(cfg.pct_start * (epochs * steps_per_epoch)) - 1 == 0:  # OneCycleLR's first phase's end
                raise ValueError(f"schedule onecycle: pct_start {cfg.pct_start:g} of {epochs} x {steps_per_epoch} "
                                 "steps is a warm-up of exactly one step, which PyTorch's OneCycleLR divides by "
                                 "zero on; change pct_start, the epochs or the batch size")
            self.inner = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs,
                                                             steps_per_epoch=steps_per_epoch,
                                                             pct_start=cfg.pct_start)
        elif cfg.name == "plateau":
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma,
                                                                    patience=cfg.patience)
        else:
            raise ValueError(f"unknown schedule {cfg.name!r}: use none, step, multistep, onecycle, cosine "
                             "or plateau")

    def after_step(self) -> None:
        if self.inner is not None and self.per_step:
            self.inner.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.inner is None or self.per_step:
            return
        if isinstance(self.inner, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.inner.step(val_loss)
        else:
            self.inner.step()

    def state_dict(self) -> dict:
        return self.inner.state_dict() if self.inner is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.inner is not None:
            self.inner.load_state_dict(state)
