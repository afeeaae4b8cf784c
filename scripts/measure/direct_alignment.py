"""Align faces straight to the network's load size instead of through the 200 px chip: the time it saves and what it
does to the predictions.

Today each face is warped onto the UTKFace template at 200 x 200 (``align_face``), then resized to the network's
load size and centre-cropped (``chips_to_input``), the path the network was trained on (UTKFace's own 200 px chips,
resized the same way). The direct path warps onto the template scaled to the load size (``align_face(...,
size=load_size)``, area-prefiltered where it shrinks) and centre-crops. On every face the detector finds in the
shared photos, this prints the time of the two paths per face (interleaved, median of ``--rounds``) and the
differences of the shipped model's outputs (flip averaged).

    python scripts/measure/direct_alignment.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from agegender.images import load_image
from agegender.inference.align import align_face
from agegender.inference.detector import FaceDetector
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.outputs import decode
from agegender.paths import default_path
from agegender.preprocess import center_crop, chips_to_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model, detector = OnnxAgeGender(None, args.threads), FaceDetector()
    config = model.config
    faces = [(image, det.landmarks) for path in sorted(default_path("photos").glob("*.jpg"))
             for image in [load_image(path)] for det in detector.detect(image)]

    def through_chip() -> np.ndarray:
        return chips_to_input([align_face(image, points) for image, points in faces], config)

    def direct() -> np.ndarray:
        loaded = np.stack([align_face(image, points, config.load_size) for image, points in faces])
        return np.ascontiguousarray(center_crop(loaded, config.input_size)[..., ::-1].transpose(0, 3, 1, 2),
                                    dtype=np.float32)

    paths: dict[str, Callable[[], np.ndarray]] = {"through the 200 px chip": through_chip, "direct": direct}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000 / len(faces))
    decoded = {name: model.calibrate(decode(model.forward(fn(), flip=True))) for name, fn in paths.items()}
    old, new = decoded["through the 200 px chip"], decoded["direct"]
    age = new.age - old.age
    same = np.mean((old.female_prob >= 0.5) == (new.female_prob >= 0.5))
    print(f"{len(faces)} faces of the shared photos; model {model.path.name}; {args.threads} threads")
    for name, values in times.items():
        print(f"  {name}: align + preprocess {statistics.median(values):.3f} ms/face")
    print(f"  age, direct - through the chip: mean {age.mean():+.2f}, median |diff| {np.median(np.abs(age)):.2f}, "
          f"max |diff| {np.abs(age).max():.2f} years; same gender {100 * same:.0f}%; female probability "
          f"max |diff| {np.abs(new.female_prob - old.female_prob).max():.3f}")


if __name__ == "__main__":
    main()
