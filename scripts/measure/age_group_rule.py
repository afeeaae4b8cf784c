"""Which age group should a face report: the most probable group, or the group its age falls in by the gap policy?

The two can disagree ("age 36, group 25-32"). This scores both on Adience-style groups: the UTKFace validation
split (groups from true ages by the gap policy) and the Adience sample of ../shared (true groups as annotated; the
most confident face YuNet finds, as the bench takes it),
exact and one-off accuracy, with a paired 95% bootstrap interval of the difference.

    python scripts/measure/age_group_rule.py src/agegender/weights/flagship_int8.onnx
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from agegender.benchmark.run import adience_sample_faces
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.data.records import FaceRecord
from agegender.evaluation.compare import paired_bootstrap
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.labels import age_to_group


def groups(model: OnnxAgeGender, records: list[FaceRecord], chips: list[np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true group, most probable group, group of the age) per face."""
    decoded = model.predict(chips, flip=True)
    by_age = np.array([age_to_group(a) for a in decoded.age])
    return np.array([r.age_group for r in records]), decoded.group_probs.argmax(axis=1), by_age


def score(name: str, true: np.ndarray, argmax: np.ndarray, by_age: np.ndarray) -> list[str]:
    lines = []
    for label, tolerance in (("exact", 0), ("one-off", 1)):
        a = (np.abs(argmax - true) <= tolerance).astype(float)
        b = (np.abs(by_age - true) <= tolerance).astype(float)
        diff, low, high = paired_bootstrap(b, a)
        lines.append(f"| {name} | {label} | {len(true)} | {100 * a.mean():.2f} | {100 * b.mean():.2f} | "
                     f"{100 * diff:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] |")
    agree = float((argmax == by_age).mean())
    lines.append(f"| {name} | the two agree | {len(true)} | {100 * agree:.1f} | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported model (ONNX) or a shipped model's name")
    args = parser.parse_args()
    model = OnnxAgeGender(args.model, threads=2)
    val = dataset_splits(DataConfig(), progress=False)["val"]
    lines = ["| data | accuracy | faces | most probable group % | group of the age % | difference (age - argmax), "
             "95% interval |", "|---|---|---|---|---|---|"]
    lines += score("UTKFace validation", *groups(model, val, [cv2.imread(r.path) for r in val]))
    faces, _ = adience_sample_faces()  # as the bench finds them
    if faces:
        lines += score("Adience sample", *groups(model, [r for r, _ in faces], [c for _, c in faces]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
