"""``agegender models``: the registry with parameter counts against the papers' figures."""

from __future__ import annotations

import argparse

from agegender.cli.common import require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("train", "torch")
    from agegender.models import create_model, list_models

    for name in list_models():
        model = create_model(name)
        n = sum(p.numel() for p in model.parameters())
        cfg = model.config
        paper = f"{cfg.paper_params / 1e6:.2f}M" if cfg.paper_params else "-"
        print(f"{name:34s} {n / 1e6:7.2f}M params (paper {paper:>6s})  {cfg.input_size:>3d}px  "
              f"{','.join(cfg.outputs)}")
    return 0
