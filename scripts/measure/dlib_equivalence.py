"""Our ONNX conversion of dlib's face-recognition ResNet against dlib itself, on real faces.

The accurate mode runs dlib's network as ONNX, converted from dlib's ``.dat`` file
(``agegender.inference.accurate``). For ``--faces`` UTKFace validation chips (a fixed random choice), each turned
into dlib's 150 px descriptor chip (``descriptor_chip``), this computes the 128-number descriptors with dlib
(``dlib.face_recognition_model_v1``, the ``teacher`` extra) and with the converted network on ONNX Runtime, and
prints how far apart they are: the largest difference of one number, the largest Euclidean distance between a
face's two descriptors (dlib calls two faces one person below 0.6), and the largest number for scale.

    python scripts/measure/dlib_equivalence.py [--faces 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from agegender.data.datasets import DataConfig, dataset_splits
from agegender.images import load_image
from agegender.inference.accurate.stacked import (
    chip_transform,
    descriptor_chip,
    descriptor_network,
    locate_dlib_resnet,
)
from agegender.paths import default_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=64, help="validation chips to compare (default 64)")
    args = parser.parse_args()
    import dlib  # the teacher extra

    val = dataset_splits(DataConfig(dataset="utkface", root=str(default_path("utkface"))), progress=False)["val"]
    chosen = [val[i] for i in np.random.default_rng(0).permutation(len(val))[:args.faces]]
    matrix = chip_transform()
    chips = np.stack([descriptor_chip(load_image(r.path), matrix) for r in chosen])  # RGB, [n, 150, 150, 3]
    dat, digest = locate_dlib_resnet()
    expected = np.asarray(dlib.face_recognition_model_v1(str(dat)).compute_face_descriptor(list(chips)),
                          dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(descriptor_network()), options, providers=["CPUExecutionProvider"])
    got = session.run(["descriptor"], {"image": chips.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    diff = np.abs(got - expected)
    print(f"dlib {dlib.__version__}, {dat.name} (sha256 {digest[:12]}...), onnxruntime {ort.__version__}; "
          f"{len(chips)} UTKFace validation chips\n")
    print("| figure | value |\n|---|---|")
    print(f"| largest difference of one number | {diff.max():.2e} |")
    print(f"| mean difference of one number | {diff.mean():.2e} |")
    print(f"| largest distance between a face's two descriptors | {np.linalg.norm(got - expected, axis=1).max():.2e} |")
    print(f"| largest number of a descriptor (for scale) | {np.abs(expected).max():.3f} |")


if __name__ == "__main__":
    main()
