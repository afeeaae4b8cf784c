"""Should ONNX Runtime's idle threads spin? ``ort_session`` says no (they sleep between runs); this measures the
trade on the machine at hand, alternating the two settings over a few rounds so that drift hits both alike.

    python scripts/measure/ort_spinning.py [--rounds 3] [--accurate]

Timed per setting, on ONNX Runtime (2 threads, medians of each round, then the median over rounds): the shipped
int8 default with flip on aligned chips one at a time and 64 at a time, end to end on each photo of
``../shared/photos`` (YuNet from ``../shared/models/yunet``), and with ``--accurate`` the accurate mode on chips
(needs dlib's network, found as ``predict --accurate`` finds it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agegender import Predictor
from agegender.benchmark.timing import per_face_latency, time_call
from agegender.images import load_image
from agegender.inference.accurate.stacked import StackedAgeGender
from agegender.paths import default_path

THREADS = 2


SESSIONS = {"session": "path", "head": "head_path", "network": "network_path"}  # Session attribute: its file


def spinning_session(path: Path) -> ort.InferenceSession:
    """A session of ``path`` whose idle threads spin (ONNX Runtime's own default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(spin: bool, chips: list[np.ndarray], photos: dict[str, np.ndarray], accurate: bool) -> dict[str, float]:
    predictor = Predictor(detector=default_path("yunet"), threads=THREADS, backend="onnxruntime")
    models = {"int8 flip": predictor.model}
    if accurate:
        models["accurate"] = StackedAgeGender(threads=THREADS, backend="onnxruntime")
    if spin:  # each backends.Session wrapper runs a spinning ONNX Runtime session instead of its own
        for model in models.values():
            for session, path in SESSIONS.items():
                if hasattr(model, session):
                    getattr(model, session).session = spinning_session(getattr(model, path))
    row = {}
    for label, model in models.items():
        for batch in (1, 64):
            row[f"{label}, chips, batch {batch} (ms/face)"] = per_face_latency(model.predict, chips, batch).median_ms
    for name, image in photos.items():
        row[f"{name} end to end (ms)"] = time_call(lambda image=image: predictor.predict(image)).median_ms
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accurate", action="store_true", help="also time the accurate mode")
    args = parser.parse_args()
    chips = [load_image(p) for p in sorted(default_path("utkface").glob("*.jpg"))[:64]]
    photos = {p.name: load_image(p) for p in sorted(default_path("photos").glob("*.jpg"))}
    rounds: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for spin in (True, False):
            rounds[spin].append(measure(spin, chips, photos, args.accurate))
    print("| Timing | threads spin | threads sleep (shipped) |\n|---|---|---|")
    for key in rounds[True][0]:
        spin, sleep = (float(np.median([r[key] for r in rounds[s]])) for s in (True, False))
        print(f"| {key} | {spin:.2f} | {sleep:.2f} |")


if __name__ == "__main__":
    main()
