"""Can flip averaging cost less than a second pass for every face? Flip only the faces the plain pass is unsure of.

The plain pass (centre crop) runs for every face; the mirrored pass only for a chosen share of them, ranked by the
plain pass's uncertainty: the gender margin ``|P(female) - 0.5|``, the width of the decoded 80% age interval, or both
(a face's larger percentile rank of the two). A random choice of the same share is the baseline a criterion must
beat. Scored on a UTKFace split after the file's calibrations, as ``Predictor`` reads it, with the paired 95%
bootstrap interval of each row against flipping every face. Example (the shipped default, validation split):

    python scripts/measure/selective_flip.py src/agegender/weights/flagship_int8.onnx

The network's cost per face is ``1 + share`` passes instead of 2, so the measurement says which share of faces
flip averaging is worth running for.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from agegender.data.datasets import DataConfig, dataset_splits, decode_split
from agegender.evaluation.compare import face_arrays, face_scores, paired_bootstrap
from agegender.evaluation.evaluate import ExportedModel
from agegender.outputs import Decoded, decode
from agegender.oversample import flip_average
from agegender.training.forward import model_outputs

SHARES = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Each value's rank in ``x`` as a share in [0, 1) (ties broken by position).

    >>> percentile_rank(np.array([3.0, 1.0, 2.0])).tolist()
    [0.6666666666666666, 0.0, 0.3333333333333333]
    """
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks / len(x)


def uncertainty(plain: Decoded, seed: int = 0) -> dict[str, np.ndarray]:
    """Criterion name -> a score per face, higher = flip it first."""
    assert plain.female_prob is not None and plain.age_low is not None and plain.age_high is not None
    gender = -np.abs(plain.female_prob - 0.5)
    width = plain.age_high - plain.age_low
    return {"gender margin": gender, "age interval width": width,
            "both (larger rank)": np.maximum(percentile_rank(gender), percentile_rank(width)),
            "random": np.random.default_rng(seed).random(len(width))}


def mixed(plain: Mapping[str, np.ndarray], both: Mapping[str, np.ndarray], chosen: np.ndarray
          ) -> dict[str, np.ndarray]:
    """The flip-averaged outputs for the ``chosen`` faces, the plain ones for the rest."""
    return {k: np.where(chosen.reshape(-1, *([1] * (v.ndim - 1))), both[k], v) for k, v in plain.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an `agegender export` ONNX file")
    parser.add_argument("--root", help="UTKFace folder (default: the shared one)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args()
    model = ExportedModel(args.model)
    config = model.config
    records = dataset_splits(DataConfig(dataset="utkface", root=args.root), progress=False)[args.split]
    data = decode_split(records, config, progress=False)
    plain = model_outputs(model, data.images, config, tta="none")
    mirrored = model_outputs(model, np.ascontiguousarray(data.images[:, :, ::-1]), config, tta="none")
    both = flip_average(plain, mirrored)

    def score(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per face: the absolute age error, and the gender score (1 right, 0.5 a tie, as the metrics count)."""
        faces = face_arrays(data.records, model.calibrate(decode(dict(outputs))))
        return -face_scores(faces, "age_mae")[0], face_scores(faces, "gender_accuracy")[0]

    all_err, all_right = score(both)
    print(f"{args.model.name}, {args.split} split, {len(data.records)} faces; every row against flipping every face "
          f"(MAE {all_err.mean():.3f}, gender {100 * all_right.mean():.2f}%); network passes per face = 1 + share\n")
    print("| criterion | share flipped | age MAE | vs all flipped (95% CI) | gender | vs all flipped, pts (95% CI) |")
    print("|---|---|---|---|---|---|")
    for name, rank in uncertainty(model.calibrate(decode(dict(plain)))).items():
        order = np.argsort(-rank, kind="stable")
        for share in SHARES:
            chosen = np.zeros(len(data.records), dtype=bool)
            chosen[order[:round(share * len(data.records))]] = True
            err, right = score(mixed(plain, both, chosen))
            d_age, lo_age, hi_age = paired_bootstrap(err, all_err)
            d_g, lo_g, hi_g = paired_bootstrap(right, all_right)
            print(f"| {name} | {share:.0%} | {err.mean():.3f} | {d_age:+.3f} ({lo_age:+.3f} to {hi_age:+.3f}) | "
                  f"{100 * right.mean():.2f}% | {100 * d_g:+.2f} ({100 * lo_g:+.2f} to {100 * hi_g:+.2f}) |")


if __name__ == "__main__":
    main()
