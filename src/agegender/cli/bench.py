"""``agegender bench``: speed and accuracy of our model next to the peer models, as JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from agegender.cli.common import (
    UserError,
    add_backend_options,
    add_detect_size_option,
    non_negative_int,
    non_negative_seconds,
    positive_int,
)
from agegender.paths import check_writable_file, check_writable_folder, default_path

#: The bench's data options, whose defaults come from the shared folder when it is there.
BENCH_DATA = ("peers", "utkface", "adience_sample", "adience_fold", "photos", "detector")


def _shared(name: str) -> Path | None:
    """The default ``name`` in the shared folder (:mod:`agegender.paths`), when it is there."""
    path = default_path("yunet" if name == "detector" else name)
    return path if path.exists() else None


def _sizes(value: str) -> tuple[float, ...]:
    try:
        sizes = tuple(float(v) for v in value.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"megapixels separated by commas, e.g. 0.3,2,12,24: {err}") from err
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be > 0, got {value}")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and accuracy next to the peer models", description=(
        "Time our model per face (batch 1 and 64) and end to end on photos, on every installed backend, score "
        "it on UTKFace validation chips and the Adience sample, and do the same for every peer model in --peers; "
        "the systems of each measurement are timed interleaved. Then photos at scale: end to end by photo size "
        "next to cv2.imread, and the bulk path's throughput (--no-sweep skips them); --profile adds the time "
        "of each stage of the default pipeline. Data defaults to ../shared when it exists; a part whose data "
        "is missing is left out. Writes bench.json and Markdown tables, the CPU and its features first."))
    p.add_argument("--model", type=Path, help="an `agegender export` ONNX file (default: the shipped flagship, "
                                               "float32, and its shipped int8 variant)")
    p.add_argument("--int8", type=Path, help="the model's int8 variant (`agegender quantize`), benched alongside")
    p.add_argument("--accurate", action="store_true", help="also bench the accurate mode (`predict --accurate`)")
    p.add_argument("--descriptor-weights", type=Path, metavar="DAT",
                   help="--accurate: dlib_face_recognition_resnet_model_v1.dat (default: located as predict does)")
    p.add_argument("--peers", type=Path, default=_shared("peers"),
                   help="folder of peer models (default: ../shared/peers if present)")
    p.add_argument("--utkface", type=Path, default=_shared("utkface"),
                   help="UTKFace chips folder (default: ../shared/data/UTKFace)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="the UTKFace split scored: val (default, as every comparison) or test, sealed: only for the "
                        "figures of a model that ships, once")
    p.add_argument("--adience-sample", type=Path, default=_shared("adience_sample"),
                   help="Adience images folder (default: ../shared/data/adience_sample)")
    p.add_argument("--adience-fold", type=Path, default=_shared("adience_fold"),
                   help="Adience fold_k_data.txt with the labels (default: ../shared fold 0)")
    p.add_argument("--photos", type=Path, default=_shared("photos"),
                   help="photos for end-to-end latency (default: ../shared/photos)")
    p.add_argument("--detector", type=Path, default=_shared("detector"),
                   help="YuNet ONNX file (default: ../shared's, else $AGEGENDER_YUNET or the cache)")
    add_detect_size_option(p)
    p.add_argument("--limit", type=positive_int, help="at most N faces per data set (a fixed random subset)")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                   help="threads for every runtime (default: all CPUs)")
    p.add_argument("--runs", type=positive_int, default=10,
                   help="minimum timed runs per measurement (default 10)")
    p.add_argument("--min-time", type=non_negative_seconds, default=1.0,
                   help="minimum seconds per measurement (default 1; 0 for a quick check)")
    add_backend_options(p)
    for action in p._actions:
        if action.dest == "backend":
            action.help = ("our models' runtime: auto (default) runs them on every installed one, onnxruntime or "
                           "openvino that one only")
        elif action.dest == "device":
            action.help = ("cuda: also run them on ONNX Runtime's CUDA provider (an error where it is missing; "
                           "with --backend onnxruntime, only there); cpu: leave CUDA out (default: CUDA too where "
                           "ONNX Runtime has it)")
    p.add_argument("--profile", action="store_true",
                   help="also time each stage of the default pipeline (decode, detect, align, preprocess, "
                        "network, decode outputs) on the photos and on chips")
    p.add_argument("--no-sweep", dest="sweep", action="store_false",
                   help="skip photos at scale (the photo-size sweep and the bulk throughput)")
    p.add_argument("--sweep-sizes", type=_sizes, default=(0.3, 2.0, 12.0, 24.0), metavar="MP[,MP...]",
                   help="photo sizes of the sweep, in megapixels (default 0.3,2,12,24; the bulk throughput "
                        "runs on 12 MP when it is one)")
    p.add_argument("--sweep-photos", type=positive_int, metavar="N",
                   help="the sweep, the bulk throughput and the profile on the first N photos only (default: all)")
    p.add_argument("--work-dir", type=Path,
                   help="where the resized photos are written once (default: the agegender cache's bench-photos)")
    p.add_argument("--bulk-photos", type=non_negative_int, default=60, metavar="N",
                   help="photos per bulk run (default 60; 0 skips the bulk throughput)")
    p.add_argument("--bulk-rounds", type=positive_int, default=3, help="bulk runs per setting (default 3)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    p.add_argument("--markdown", type=Path, help="Markdown file to write (default OUT/bench.md)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agegender.benchmark.run import BenchOptions, run_bench, to_markdown
    from agegender.inference.backends import ModelError
    from agegender.inference.detector import WeightsError

    if args.descriptor_weights and not args.accurate:
        raise UserError("--descriptor-weights is for --accurate")
    if args.bulk_photos == 1:
        raise UserError("--bulk-photos: at least 2 (0 skips the bulk throughput)")
    check_writable_folder(args.out)  # before the minutes of measuring, not after them
    if args.markdown is not None:
        check_writable_file(args.markdown)
    for option in ("model", "int8", "descriptor_weights", *BENCH_DATA):
        path = getattr(args, option)
        if path is not None and not path.exists():
            raise UserError(f"--{option.replace('_', '-')}: {path} not found")
    opts = BenchOptions(
        model=args.model, int8=args.int8, accurate=args.accurate, descriptor_weights=args.descriptor_weights,
        peers=args.peers, utkface=args.utkface, split=args.split,
        adience_sample=args.adience_sample, adience_fold=args.adience_fold, photos=args.photos,
        detector=args.detector, detect_size=args.detect_size, limit=args.limit, threads=args.threads, runs=args.runs,
        min_seconds=args.min_time, backend=args.backend, device=args.device, profile=args.profile,
        sweep=args.sweep, sweep_sizes=args.sweep_sizes, sweep_photos=args.sweep_photos, work_dir=args.work_dir,
        bulk_photos=args.bulk_photos, bulk_rounds=args.bulk_rounds)
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
