"""What does decoding inside the graph save? ``OnnxAgeGender.predict`` runs the shipped models with flip averaging,
decoding and their calibrations fused into the graph (``agegender.inference.fused``); this times it against the
same model with those steps in NumPy after the network (what ``predict`` did before, and still does where it
cannot fuse), without flip, and the retail model, on aligned validation chips.

    python scripts/measure/fused_decoding.py [--model flagship-int8] [--backend openvino] [--threads 2] [--chips 64]

It prints the largest differences between the two paths' outputs, then ms per face at batch 1 and 64, every path
timed interleaved (the bench's timing, :func:`agegender.benchmark.timing.time_interleaved`) after each was prepared
for its batch size. On OpenVINO it then times both graphs as compiled for any input shape (what a batch size runs on
before it is prepared or seen a thousand times), which is why ``predict`` switches to the fused graph only for a
batch size compiled for.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from agegender.benchmark.peers import OpenVinoRetail0013, PeerUnavailable
from agegender.benchmark.timing import batch_call, time_interleaved
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.images import load_image
from agegender.inference.backends import cpu_info
from agegender.inference.fused import fused_decoded
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.outputs import Decoded, decode
from agegender.paths import default_path

BATCHES = (1, 64)
NUMPY, FUSED, NO_FLIP, RETAIL = "NumPy after the network", "fused (predict)", "no flip", "retail-0013"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flagship-int8")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chips", type=int, default=64, help="validation chips compared and cycled in timing")
    args = parser.parse_args()
    model = OnnxAgeGender(args.model, threads=args.threads, backend=args.backend)
    if model.fused_why_not:
        print(f"{model.path.name} on {args.backend}: not fused ({model.fused_why_not})", file=sys.stderr)
        return 1
    for batch in BATCHES:
        model.prepare(batch)
        model.prepare(batch, flip=False)

    def numpy_path(chips: list[np.ndarray]) -> Decoded:
        return model.calibrate(decode(model.outputs(chips, flip=True)))

    records = dataset_splits(DataConfig(), progress=False)["val"][:args.chips]
    chips = [load_image(r.path) for r in records]
    fused, numpy = model.predict(chips), numpy_path(chips)
    print(f"CPU {cpu_info().describe()}; {model.path.name} on {model.session.backend} "
          f"({model.session.float_precision}), {args.threads} threads; {len(chips)} validation chips\n")
    print("Largest difference, fused against NumPy:", ", ".join(
        f"{field} {np.abs(getattr(fused, field) - getattr(numpy, field)).max():.1e}"
        for field in ("age", "age_low", "age_high", "female_prob", "group_probs")), "\n")
    paths = {NUMPY: numpy_path, FUSED: model.predict, NO_FLIP: lambda c: model.predict(c, flip=False)}
    try:
        retail = OpenVinoRetail0013(default_path("peers") / OpenVinoRetail0013.folder_name, args.threads)
        paths[RETAIL] = retail.predict
    except PeerUnavailable as err:
        print(f"(the retail model is not timed: {err})\n")
    ratios = ["fused / NumPy", *(["NumPy / retail", "fused / retail"] if RETAIL in paths else [])]
    print("| ms per face | " + " | ".join([*paths, *ratios]) + " |")
    print("|---" * (len(paths) + len(ratios) + 1) + "|")
    for batch in BATCHES:
        timings = time_interleaved({name: batch_call(fn, chips, batch) for name, fn in paths.items()})
        ms = {name: t.median_ms / batch for name, t in timings.items()}
        cells = [f"{ms[name]:.3f}" for name in paths] + [f"{ms[FUSED] / ms[NUMPY]:.2f}"]
        if RETAIL in ms:
            cells += [f"{ms[NUMPY] / ms[RETAIL]:.2f}", f"{ms[FUSED] / ms[RETAIL]:.2f}"]
        print(f"| batch {batch} | " + " | ".join(cells) + " |")
    if model.session.backend == "openvino":
        print_any_shape(args, chips)
    return 0


def print_any_shape(args: argparse.Namespace, chips: list[np.ndarray]) -> None:
    """Both graphs of a fresh model on OpenVINO's model for any input shape, never compiled for one."""
    model = OnnxAgeGender(args.model, threads=args.threads, backend=args.backend)
    fused = model._fused_session(True)
    assert fused is not None
    for session in (model.session, fused):
        session.models.static_after = 10 ** 9  # type: ignore[attr-defined]  # no batch size compiled for

    def fused_any_shape(chips: list[np.ndarray]) -> Decoded:
        return fused_decoded(fused.run({fused.input_name: model.network_input(chips, flip=False)}))

    paths = {NUMPY: lambda c: model.predict(c), "fused": fused_any_shape}
    print("\nBoth graphs compiled for any input shape (OpenVINO, before a batch size is compiled for):\n")
    print("| ms per face | " + " | ".join(paths) + " | fused / NumPy |\n|---|---|---|---|")
    for batch in BATCHES:
        timings = time_interleaved({name: batch_call(fn, chips, batch) for name, fn in paths.items()})
        ms = {name: t.median_ms / batch for name, t in timings.items()}
        print(f"| batch {batch} | {ms[NUMPY]:.3f} | {ms['fused']:.3f} | {ms['fused'] / ms[NUMPY]:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
