"""``agegender models``: the registry (input size, outputs, the papers' parameter counts; ``--params`` builds each
network to count its parameters), or what one exported model file holds (its input, version, quantisation, age
calibration, interval calibration and stored metrics with their protocol). Only ``--params`` imports torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agegender.cli.common import UserError, require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models, or describe an exported model file",
                       description="Without MODEL: every registered network with its input size, outputs and the "
                                   "paper's parameter count; --params builds each one to count its parameters "
                                   "(needs the `train` extra). With MODEL: what the exported file holds.")
    p.add_argument("model", nargs="?",
                   help="a shipped model (flagship-int8, flagship) or an `agegender export` ONNX file")
    p.add_argument("--json", action="store_true", help="MODEL: print its description as JSON")
    p.add_argument("--params", action="store_true",
                   help="without MODEL: build every network and print its parameter count, and how many train "
                        "at the start (frozen layers left out), beside the paper's (needs the `train` extra; "
                        "takes seconds)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        if args.json:
            raise UserError("--json describes one MODEL: give a shipped model's name or an ONNX file")
        return list_registry(count_params=args.params)
    if args.params:
        raise UserError("--params counts the registered networks' parameters: give no MODEL")
    from agegender.artifacts import SHIPPED_MODELS
    from agegender.inference.onnx_model import ModelError, OnnxAgeGender
    from agegender.models import get_config, list_models

    if args.model in list_models() and args.model not in SHIPPED_MODELS and not Path(args.model).exists():
        config = get_config(args.model).to_dict()  # a registered network, not a file: what the registry holds
        print(json.dumps(config, indent=2) if args.json else "\n".join(
            [f"{args.model}: a registered network (train a config that names it, then `agegender export` it to "
             "run it)", *config_lines(config)]))
        return 0

    try:
        info = OnnxAgeGender(args.model).describe()
    except ModelError as err:
        raise UserError(str(err)) from err
    print(json.dumps(info, indent=2) if args.json else "\n".join(describe_lines(info)))
    return 0


def describe_lines(info: dict[str, Any]) -> list[str]:
    """``OnnxAgeGender.describe()`` as lines a person reads."""
    from agegender.age_calibration import AgeCalibration, IntervalCalibration
    from agegender.reporting.metrics import METRIC_LABELS, format_metric

    lines = [info["path"], *config_lines(info["config"]),
             f"  agegender        {info['version'] or 'unknown version'}",
             f"  precision        {info['quantization'] or 'float32'}",
             f"  runs on          {info['backend']} ({info['device']}, floats in {info['float_precision']}); "
             f"decoding {info['decoding']}",
             f"  age calibration  {AgeCalibration(**info['age_calibration']) if info['age_calibration'] else 'none'}"]
    interval = info.get("age_interval_calibration")
    lines.append(f"  age interval     {IntervalCalibration.from_dict(interval) if interval else 'as decoded'}")
    metrics = dict(info["metrics"])
    protocol = metrics.pop("protocol", None)
    if not metrics:
        return [*lines, "  metrics          none stored (`agegender evaluate MODEL --tta flip --store-metrics`)"]
    lines.append(f"  metrics          measured on: {protocol or 'not recorded'}")
    lines += [f"    {METRIC_LABELS.get(k, k):42s} {format_metric(k, v)}" for k, v in metrics.items()]
    return lines


def config_lines(cfg: dict[str, Any]) -> list[str]:
    """A ``ModelConfig.to_dict()``: the network, its input and its outputs, as lines a person reads."""
    mean, std = (", ".join(f"{v:g}" for v in cfg[k]) for k in ("mean", "std"))
    return [f"  network          {cfg['name']} ({cfg['source']})",
            f"  input            RGB {cfg['input_size']}x{cfg['input_size']}: the chip "
            + (f"resized to {cfg['resize']}, centre crop" if cfg.get("resize") else "resized to it")
            + f" ({cfg.get('resampling', 'area')} resampling)"
            + f"; (x - [{mean}]) / [{std}]",
            f"  outputs          {', '.join(cfg['outputs'])}"]


def list_registry(count_params: bool = False) -> int:
    """One line per registered network, from the registry's static catalog (no torch); ``count_params`` builds
    each network and adds its parameter count, and how many of them train at the start (a network trained frozen
    at first, such as seed 003's VGG-16, whose paper gives that count)."""
    from agegender.models import get_config, list_models

    if count_params:
        require_extra("train", "torch")
        from agegender.models import create_model
        from agegender.models.freezing import freeze_all_but_last
    for name in list_models():
        cfg = get_config(name)
        paper = f"{cfg.paper_params / 1e6:.2f}M" if cfg.paper_params else "-"
        if count_params:
            model = create_model(name)
            if cfg.extra.get("trainable_last") is not None:  # trained frozen at first (e.g. VGG-16: the paper
                freeze_all_but_last(model, cfg.extra["trainable_last"])  # counts what trains then)
            n = sum(p.numel() for p in model.parameters())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            counts = f"{n / 1e6:7.2f}M params {trainable / 1e6:6.2f}M trainable (paper {paper:>6s})"
        else:
            counts = f"paper params {paper:>6s}"
        print(f"{name:34s} {counts}  {cfg.input_size:>3d}px  {','.join(cfg.outputs)}")
    return 0
