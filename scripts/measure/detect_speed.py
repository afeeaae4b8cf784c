"""The detector and the whole pipeline on 12 MP photos: medians in ms, to compare two versions of the code.

``FaceDetector.detect`` on a 12 MP copy's working size (1280 x 960) and ``Predictor.predict`` on each of the
shared photos' 12 MP copies (the bench's :func:`~agegender.benchmark.photos.resized_photo`), 2 threads, after
warm-up calls. YuNet's models compiled for one input shape are held off (the model for any shape runs, as for a
collection of photos of mixed sizes). Run it alternately on two versions, e.g. the code of an older commit from a
``git worktree`` with ``PYTHONPATH=<worktree>/src`` in front, so that the machine's drift falls on both:

    python scripts/measure/detect_speed.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np

from agegender.benchmark.photos import default_work_dir, resized_photo
from agegender.images import load_image
from agegender.inference import detector
from agegender.inference.predictor import Predictor
from agegender.paths import default_path


def median_ms(call: Callable[[], object], runs: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls of the detector (the photos: a third)")
    args = parser.parse_args()
    detector._OpenVinoYuNet.STATIC_AFTER = 10 ** 9  # the any-shape model throughout
    predictor = Predictor()
    assert predictor.detector is not None
    photos = [resized_photo(p, 12, default_work_dir()) for p in sorted(default_path("photos").glob("*.jpg"))]
    image = cv2.resize(load_image(photos[0]), (1280, 960))
    detect = median_ms(partial(predictor.detector.detect, image), args.runs)
    predict = [median_ms(partial(predictor.predict, p), max(1, args.runs // 3)) for p in photos]
    print(f"YuNet on {predictor.detector.runtime}: detect at 1280x960 {detect:.1f} ms; Predictor.predict per 12 MP "
          f"photo {', '.join(f'{x:.1f}' for x in predict)} (mean {np.mean(predict):.1f}) ms")


if __name__ == "__main__":
    main()
