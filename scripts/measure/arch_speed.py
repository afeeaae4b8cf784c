"""How fast candidate architectures run in ONNX Runtime on this CPU, before any of them is trained.

    python scripts/measure/arch_speed.py [--candidates scripts/measure/arch_speed.yaml] [--threads 2] [--deployed]

Each candidate (a registered model and its ``model_args``) is exported untrained to ONNX and timed on random
input at batch 64 (per face) and batch 1: the network alone, without preprocessing (which ``agegender bench``
adds). This is how the flagship's shape was chosen against its latency budget (issue #6: <= 1 ms per face at
batch 64 including preprocessing).

``--deployed`` times each candidate as we ship it instead: float32 and static int8 (``agegender quantize``'s
settings, calibrated on training-split chips), with and without flip averaging, through ``OnnxAgeGender`` on
UTKFace chips as read from disk (resizing and cropping included), the path ``agegender bench`` times;
``--reference M.onnx`` adds exported models timed the same way, as a yardstick from the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from agegender.benchmark.run import precision
from agegender.benchmark.timing import per_face_latency, time_call
from agegender.export import export_onnx
from agegender.inference.backends import ort_session
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.models import create_model
from agegender.paths import default_path
from agegender.quantize import quantization_chips, quantize_int8


def untrained(model_name: str, model_args: dict) -> torch.nn.Module:
    """The model with random weights and every BatchNorm scale set to 1: no trained network has the
    zero-initialised residual branches of a fresh one, and int8 would time those faster than it runs them."""
    model = create_model(model_name, **model_args).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    return model


def time_candidate(model_name: str, model_args: dict, threads: int) -> tuple[int, float, float]:
    """(parameters, ms per face at batch 64, ms at batch 1) of an untrained model exported to ONNX."""
    model = untrained(model_name, model_args)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "candidate.onnx")
        session = ort_session(path, threads)
    size = model.config.input_size
    name = session.get_inputs()[0].name
    batch = np.random.default_rng(0).uniform(0, 255, (64, 3, size, size)).astype(np.float32)
    per_face = time_call(lambda: session.run(None, {name: batch}), runs=30, min_seconds=2).scaled(1 / 64)
    single = time_call(lambda: session.run(None, {name: batch[:1]}), runs=200, min_seconds=2)
    return params, per_face.median_ms, single.median_ms


def utkface_chips(root: Path, n: int = 64) -> list[np.ndarray]:
    """The first ``n`` UTKFace chips as read from disk (200 x 200 BGR)."""
    chips = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in sorted(root.glob("*.jpg"))[:n]]
    if not chips or any(c is None for c in chips):
        raise SystemExit(f"no readable .jpg chips in {root}")
    return chips


def deployed_rows(label: str, params: str, files: Sequence[Path], chips: Sequence[np.ndarray],
                  threads: int) -> Iterator[str]:
    """One table row per file and flip setting: precision, per-face ms at batch 64 and at batch 1."""
    for path in files:
        runner = OnnxAgeGender(path, threads=threads)
        for flip in (True, False):
            b64, b1 = (per_face_latency(partial(runner.predict, flip=flip), chips, b).median_ms for b in (64, 1))
            yield f"| {label} | {params} | {precision(runner)} | {'yes' if flip else 'no'} | {b64:.2f} | {b1:.2f} |"


def deployed(candidates: dict, references: Sequence[Path], root: Path, threads: int) -> Iterator[str]:
    """Rows of the ``--deployed`` table: the references as they are, then every candidate in float32 and int8."""
    chips = utkface_chips(root)
    chips: dict[tuple, np.ndarray] = {}  # candidates of one input geometry share their quantisation chips
    for path in references:
        if not path.is_file():
            raise SystemExit(f"no such model: {path}")
        yield from deployed_rows(f"`{path}`", "", [path], chips, threads)
    for name, spec in candidates.items():
        model = untrained(spec["model"], spec.get("model_args", {}))
        params = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, Path(tmp) / "candidate.onnx")
            geometry = (model.config.load_size, model.config.face_crop, model.config.input_size)
            if geometry not in chips:
                chips[geometry] = quantization_chips(model.config, 256, root)
            int8 = quantize_int8(fp32, Path(tmp) / "candidate_int8.onnx", chips[geometry])
            yield from deployed_rows(name, params, [fp32, int8], chips, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=Path, default=Path(__file__).with_name("arch_speed.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--deployed", action="store_true",
                        help="float32 and int8, with and without flip, preprocessing included")
    parser.add_argument("--reference", type=Path, nargs="*", default=[],
                        help="with --deployed: exported models to time the same way")
    parser.add_argument("--root", type=Path, default=default_path("utkface"),
                        help="with --deployed: UTKFace folder (chips to time, int8 quantisation chips)")
    args = parser.parse_args()
    candidates = yaml.safe_load(args.candidates.read_text())["candidates"]
    if args.deployed:
        print(f"| Candidate | Parameters | Precision | Flip | ms/face, batch 64 | ms/face, batch 1 |  "
              f"(ONNX Runtime, {args.threads} threads, preprocessing included)")
        print("|---|---|---|---|---|---|")
        for line in deployed(candidates, args.reference, args.root, args.threads):
            print(line, flush=True)
        return
    print(f"| Candidate | Parameters | ms/face, batch 64 | ms, batch 1 |  (ONNX Runtime, {args.threads} threads)")
    print("|---|---|---|---|")
    for name, spec in candidates.items():
        params, b64, b1 = time_candidate(spec["model"], spec.get("model_args", {}), args.threads)
        print(f"| {name} | {params / 1e6:.2f} M | {b64:.3f} | {b1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
