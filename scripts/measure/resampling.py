"""What a model's resampling costs and gives (``ModelConfig.resampling``): the shipped default read by "area"
(box average, then area: what it was trained on) and by "linear" (box average, then bilinear), on the validation
chips, with flip.

Accuracy: age MAE and gender, each with the paired difference and its 95% bootstrap interval (faces resampled,
2,000 times). Speed, per face: the preprocessing alone (``chips_to_input``) and ``OnnxAgeGender.predict`` (decoding
in the graph, compiled for the batch size) at batch 1 and 64, the two resamplings alternated round by round
(median over rounds).

    python scripts/measure/resampling.py [MODEL.onnx] [--rounds 15]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from agegender.data.datasets import DataConfig, dataset_splits
from agegender.images import load_image
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.labels import gender_codes
from agegender.model_config import RESAMPLINGS
from agegender.paths import default_path
from agegender.preprocess import chips_to_input
from agegender.reporting.metrics import compute_metrics


def paired(diff: np.ndarray, rng: np.random.Generator, draws: int = 2000) -> str:
    """The mean of per-face differences, and its 95% bootstrap interval."""
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    return f"{diff.mean():+.3f} ({np.percentile(means, 2.5):+.3f} to {np.percentile(means, 97.5):+.3f})"


def per_face_us(call: Callable[[], object], faces: int, repeats: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1e6 * (time.perf_counter() - start) / (repeats * faces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="an export (default: the shipped default)")
    parser.add_argument("--rounds", type=int, default=15, help="alternated timing rounds")
    args = parser.parse_args()
    records = dataset_splits(DataConfig(dataset="utkface", root=str(default_path("utkface"))), progress=False)["val"]
    chips = [load_image(r.path) for r in tqdm(records, desc="chips", leave=False)]
    ages = np.array([r.age for r in records], dtype=float)
    genders = np.array([r.gender for r in records])
    models = {}
    for resampling in RESAMPLINGS:
        model = OnnxAgeGender(args.model)
        declared = model.config.resampling
        model.config = model.config.replace(resampling=resampling)  # as a file declaring it would be read
        models[resampling] = model
    base = models["area"]
    print(f"{base.path.name} on {base.session.backend}, its file declaring {declared!r}; "
          f"{len(records)} UTKFace validation chips, flip-averaged, calibrated as stored\n")

    errors, right, predicted = {}, {}, {}
    print("| resampling | age MAE | gender | MAE - area's (95% CI) | gender - area's, points (95% CI) | "
          "median age change |\n|---|---|---|---|---|---|")
    for resampling, model in models.items():
        decoded = model.predict(chips)
        assert decoded.age is not None
        figures = compute_metrics(ages, None, genders, decoded)["overall"]
        predicted[resampling] = decoded.age
        errors[resampling] = np.abs(decoded.age - ages)
        right[resampling] = 100 * (gender_codes(decoded.female_prob) == genders)
        rng = np.random.default_rng(0)
        against = ["–"] * 3 if resampling == "area" else [
            paired(errors[resampling] - errors["area"], rng), paired(right[resampling] - right["area"], rng),
            f"{np.median(np.abs(decoded.age - predicted['area'])):.2f} years"]
        print(f"| {resampling} | {figures['age_mae']:.3f} | {100 * figures['gender_accuracy']:.2f}% | "
              + " | ".join(against) + " |")

    timings: dict[tuple[str, str, int], list[float]] = {}
    for _ in tqdm(range(args.rounds), desc="timing", leave=False):
        for batch in (1, 64):
            faces = chips[:batch]
            for resampling, model in models.items():
                model.prepare(batch)
                for what, call in (("preprocessing", lambda m=model, f=faces: chips_to_input(f, m.config)),
                                   ("predict", lambda m=model, f=faces: m.predict(f))):
                    timings.setdefault((what, resampling, batch), []).append(
                        per_face_us(call, batch, max(1, 256 // batch)))
    print("\nµs per face, median of the rounds\n\n| stage | batch | area | linear | linear / area |\n"
          "|---|---|---|---|---|")
    for what in ("preprocessing", "predict"):
        for batch in (1, 64):
            area, linear = (float(np.median(timings[(what, r, batch)])) for r in RESAMPLINGS)
            print(f"| {what} | {batch} | {area:.1f} | {linear:.1f} | {linear / area:.2f} |")


if __name__ == "__main__":
    main()
