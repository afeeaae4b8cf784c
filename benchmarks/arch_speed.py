"""How fast candidate architectures run in ONNX Runtime on this CPU, before any of them is trained.

    python benchmarks/arch_speed.py [--candidates benchmarks/arch_speed.yaml] [--threads 2]

Each candidate (a registered model and its ``model_args``) is exported untrained to ONNX and timed on random
input at batch 64 (per face) and batch 1: the network alone, without preprocessing (which ``agegender bench``
adds). This is how the flagship's shape was chosen against its latency budget (issue #6: <= 1 ms per face at
batch 64 including preprocessing).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml

from agegender.benchmark.timing import time_call
from agegender.export import export_onnx
from agegender.inference.onnx_model import ort_session
from agegender.models import create_model


def time_candidate(model_name: str, model_args: dict, threads: int) -> tuple[int, float, float]:
    """(parameters, ms per face at batch 64, ms at batch 1) of an untrained model exported to ONNX."""
    model = create_model(model_name, **model_args).eval()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=Path, default=Path(__file__).with_name("arch_speed.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    candidates = yaml.safe_load(args.candidates.read_text())["candidates"]
    print(f"| Candidate | Parameters | ms/face, batch 64 | ms, batch 1 |  (ONNX Runtime, {args.threads} threads)")
    print("|---|---|---|---|")
    for name, spec in candidates.items():
        params, b64, b1 = time_candidate(spec["model"], spec.get("model_args", {}), args.threads)
        print(f"| {name} | {params / 1e6:.2f} M | {b64:.3f} | {b1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
