"""Is model A better than model B? A paired bootstrap over the faces of one UTKFace split (or of a manifest).

Both models (checkpoints or exported ONNX) predict every face; for each figure the per-face differences are
resampled (`agegender.evaluation.compare`, as `reproduce.py` judges the papers' claims) and the mean with its 95%
interval is printed. Examples: ``python scripts/measure/compare_models.py src/agegender/weights/flagship.onnx
OLD.onnx`` (the validation split), ``... A.onnx B.onnx --data manifest --root unseen_val.csv --split all`` (faces
neither model was trained on, from ``scripts/measure/split_overlap.py``), ``... A.onnx B.onnx --data adience-sample``
(the Adience sample's faces found and aligned as `agegender bench` finds them: groups and gender, no years; exported
models only).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agegender.benchmark.run import adience_sample_faces
from agegender.data.datasets import decode_split
from agegender.evaluation.compare import COMPARABLE, compare_faces, face_arrays
from agegender.evaluation.evaluate import evaluation_records, load_evaluable, predict_faces
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.models import config_of
from agegender.oversample import TTA_MODES


def adience_faces(paths: tuple[Path, Path], root: str | None, flip: bool) -> tuple[list[dict[str, Any]], str]:
    """Both models' faces on the Adience sample in ``root`` (:func:`adience_sample_faces`, as the bench scores it)."""
    found, missed = adience_sample_faces(Path(root) if root else None)
    if not found:
        raise SystemExit(f"no face found in the {len(missed)} labelled Adience images of {root or 'the sample'}")
    kept, chips = [r for r, _ in found], [c for _, c in found]
    faces = [face_arrays(kept, OnnxAgeGender(path).predict(chips, flip=flip)) for path in paths]
    return faces, f"the Adience sample: {len(kept)} faces ({len(missed)} images without one)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="model A (.pt or .onnx)")
    parser.add_argument("b", type=Path, help="model B (.pt or .onnx)")
    parser.add_argument("--data", default="utkface", choices=("utkface", "manifest", "adience-sample"))
    parser.add_argument("--root",
                        help="UTKFace folder (default: the shared one), manifest CSV or Adience sample folder")
    parser.add_argument("--split", default="val", choices=("test", "val", "all"),
                        help="part of the split (default val; the test split is for a shipped model, once)")
    parser.add_argument("--tta", default="flip", choices=TTA_MODES)
    args = parser.parse_args()
    for path in (args.a, args.b):
        if not path.is_file():
            parser.error(f"{path}: no such model file")
    if args.data == "adience-sample":
        if args.tta == "ten_crop" or any(path.suffix != ".onnx" for path in (args.a, args.b)):
            parser.error("--data adience-sample compares exported models (.onnx), with --tta none or flip")
        faces, which = adience_faces((args.a, args.b), args.root, flip=args.tta == "flip")
    else:
        records, which = evaluation_records(args.data, args.root, args.split, progress=False)
        faces = []
        for path in (args.a, args.b):
            model = load_evaluable(path)
            data = decode_split(records, config_of(model), progress=True)
            faces.append(face_arrays(data.records, predict_faces(model, data.images, args.tta)))
    print(f"A = {args.a}, B = {args.b}; {which}; tta {args.tta}")
    print("| Figure | A - B (better is positive) | 95% interval |\n|---|---|---|")
    for metric, unit in COMPARABLE.items():
        difference = compare_faces(faces[0], faces[1], metric)
        if difference is not None:
            mean, low, high = difference
            print(f"| {metric} | {mean:+.2f} {unit} | {low:+.2f} to {high:+.2f} |")


if __name__ == "__main__":
    main()
