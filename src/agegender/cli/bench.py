"""``agegender bench``: speed and accuracy of our model next to the peer models, as JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from agegender.cli.common import UserError
from agegender.paths import default_path

#: The bench's data options, whose defaults come from the shared folder when it is there.
BENCH_DATA = ("peers", "utkface", "adience_sample", "adience_fold", "photos", "detector")


def _shared(name: str) -> Path | None:
    """The default ``name`` in the shared folder (:mod:`agegender.paths`), when it is there."""
    path = default_path("adience_folds") / "original_txt_files" / "fold_0_data.txt" if name == "adience_fold" \
        else default_path("yunet" if name == "detector" else name)
    return path if path.exists() else None


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and accuracy next to the peer models", description=(
        "Time our model per face (batch 1 and 64) and end to end on photos, score it on UTKFace test chips "
        "and the Adience sample, and do the same for every peer model in --peers. Data defaults to ../shared "
        "when it exists; a part whose data is missing is left out. Writes bench.json and a Markdown table."))
    p.add_argument("--model", type=Path, help="an `agegender export` ONNX file (default: the shipped flagship, "
                                               "float32, and its shipped int8 variant)")
    p.add_argument("--int8", type=Path, help="the model's int8 variant (`agegender quantize`), benched alongside")
    p.add_argument("--accurate", action="store_true", help="also bench the accurate mode (`predict --accurate`)")
    p.add_argument("--descriptor-weights", type=Path, metavar="DAT",
                   help="--accurate: dlib_face_recognition_resnet_model_v1.dat (default: located as predict does)")
    p.add_argument("--peers", type=Path, default=_shared("peers"),
                   help="folder of peer models (default: ../shared/peers if present)")
    p.add_argument("--utkface", type=Path, default=_shared("utkface"),
                   help="UTKFace chips folder; its test split is used (default: ../shared/data/UTKFace)")
    p.add_argument("--adience-sample", type=Path, default=_shared("adience_sample"),
                   help="Adience images folder (default: ../shared/data/adience_sample)")
    p.add_argument("--adience-fold", type=Path, default=_shared("adience_fold"),
                   help="Adience fold_k_data.txt with the labels (default: ../shared fold 0)")
    p.add_argument("--photos", type=Path, default=_shared("photos"),
                   help="photos for end-to-end latency (default: ../shared/photos)")
    p.add_argument("--detector", type=Path, default=_shared("detector"),
                   help="YuNet ONNX file (default: ../shared's, else $AGEGENDER_YUNET or the cache)")
    p.add_argument("--limit", type=_positive, help="at most N faces per data set (a fixed random subset)")
    p.add_argument("--threads", type=_positive, default=os.cpu_count() or 1,
                   help="threads for every runtime (default: all CPUs)")
    p.add_argument("--runs", type=_positive, default=10,
                   help="minimum timed runs per measurement (default 10)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="minimum seconds per measurement (default 1; 0 for a quick check)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    p.add_argument("--markdown", type=Path, help="Markdown file to write (default OUT/bench.md)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agegender.benchmark.run import BenchOptions, run_bench, to_markdown
    from agegender.inference.detector import WeightsError
    from agegender.inference.onnx_model import ModelError

    if args.descriptor_weights and not args.accurate:
        raise UserError("--descriptor-weights is for --accurate")
    for option in ("model", "int8", "descriptor_weights", *BENCH_DATA):
        path = getattr(args, option)
        if path is not None and not path.exists():
            raise UserError(f"--{option.replace('_', '-')}: {path} not found")
    opts = BenchOptions(
        model=args.model, int8=args.int8, accurate=args.accurate, descriptor_weights=args.descriptor_weights,
        peers=args.peers, utkface=args.utkface,
        adience_sample=args.adience_sample, adience_fold=args.adience_fold, photos=args.photos,
        detector=args.detector, limit=args.limit, threads=args.threads, runs=args.runs,
        min_seconds=args.min_time)
    try:
        result = run_bench(opts)
    except (ModelError, WeightsError) as err:
        raise UserError(str(err)) from err
    args.out.mkdir(parents=True, exist_ok=True)
    json_file = args.out / "bench.json"
    json_file.write_text(json.dumps(result, indent=2))
    markdown = to_markdown(result)
    md_file = args.markdown or args.out / "bench.md"
    md_file.parent.mkdir(parents=True, exist_ok=True)
    md_file.write_text(markdown)
    print(markdown)
    print(f"results: {json_file}, {md_file}")
    return 0
