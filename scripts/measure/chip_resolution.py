"""How finely must a face be decoded? The model on validation chips that held fewer pixels than it reads.

A JPEG decoded at a reduced DCT scale holds a small face at fewer pixels than the network reads from its chip
(``input_side`` across the chip: 72 for a model that averages its chip down to 72 px, 100 for one that
interpolates it, as the shipped flagship v18 does). ``agegender.inference.faces`` then decodes the photo again,
finer, rather than align the face from the coarse pixels. This measures what the second decode buys: each
validation chip is shrunk so that it holds ``q x input_side`` pixels across (area averaging, as a reduced decode
gives them), enlarged back to the chip's size (bilinear, as aligning from coarse pixels does), and predicted with
flip. For each ``q``: age MAE, gender accuracy, how far the ages are from those of the untouched chips (median),
and how many genders changed.

    python scripts/measure/chip_resolution.py [MODEL.onnx] [--limit N]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from tqdm import tqdm

from agegender.data.datasets import DataConfig, dataset_splits
from agegender.images import load_image
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.labels import gender_codes
from agegender.paths import default_path
from agegender.preprocess import CHIP_SIZE
from agegender.reporting.metrics import compute_metrics

SHARES = (1.0, 0.85, 0.7, 0.6, 0.5, 0.4)


def coarse(chip: np.ndarray, side: int) -> np.ndarray:
    """``chip`` as pixels that hold it at ``side`` across, brought back to its own size."""
    small = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, chip.shape[1::-1], interpolation=cv2.INTER_LINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="an export (default: the shipped default)")
    parser.add_argument("--limit", type=int, default=None, help="the first N validation chips only")
    args = parser.parse_args()
    records = dataset_splits(DataConfig(dataset="utkface", root=str(default_path("utkface"))), progress=False)["val"]
    records = records[:args.limit]
    model = OnnxAgeGender(args.model)
    chips = [load_image(r.path) for r in tqdm(records, desc="chips", leave=False)]
    ages = np.array([r.age for r in records], dtype=float)
    genders = np.array([r.gender for r in records])
    side = model.input_side
    print(f"{model.path.name} on {model.session.backend}, {len(records)} UTKFace validation chips "
          f"({CHIP_SIZE} px, read at {side}), flip-averaged\n")
    print("| share of the network's resolution | pixels across the chip | age MAE | gender | median age change "
          "| genders changed |\n|---|---|---|---|---|---|")
    base: tuple[np.ndarray, np.ndarray] | None = None
    for share in SHARES:
        pixels = round(side * share)
        shown = chips if share == 1.0 else [coarse(c, pixels) for c in chips]
        decoded = model.predict(shown)
        figures = compute_metrics(ages, None, genders, decoded)["overall"]
        age, gender = decoded.age, gender_codes(decoded.female_prob)
        assert age is not None
        base = base or (age, gender)
        print(f"| {share:.2f} | {pixels} | {figures['age_mae']:.3f} | {100 * figures['gender_accuracy']:.2f}% "
              f"| {np.median(np.abs(age - base[0])):.2f} | {int((gender != base[1]).sum())} |")


if __name__ == "__main__":
    main()
