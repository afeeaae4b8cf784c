"""``agegender predict PATH...``: age and gender for every face in photos, folders, videos or a webcam."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from agegender.cli.common import UserError, add_accurate_options, check_accurate_options
from agegender.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES

CSV_FIELDS = ("file", "frame", "track", "face", "x", "y", "w", "h", "score", "age", "age_low", "age_high",
              "age_group", "age_group_confidence", "gender", "gender_confidence", "error")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="age and gender for every face in images, folders or videos",
                       description="Detect every face, align it and predict age and gender. PATH may be an image, "
                                   "a folder (searched recursively), a video file, or a webcam index such as 0.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per file on stdout (JSON Lines)")
    out.add_argument("--csv", action="store_true", help="one CSV row per face on stdout")
    p.add_argument("--save-dir", type=Path, help="write annotated images and face crops here")
    p.add_argument("--no-detect", action="store_true", help="inputs are aligned face chips: skip detection")
    p.add_argument("--model", help="a shipped model, flagship-int8 (the default) or flagship (float32), or an "
                                   "`agegender export` ONNX file")
    p.add_argument("--detector", help="YuNet ONNX file (default: $AGEGENDER_YUNET, cache, or download)")
    p.add_argument("--no-flip", action="store_true", help="do not average each face with its mirror image")
    add_accurate_options(p)
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: all)")
    p.add_argument("--every", type=int, default=1, help="videos: predict every N-th frame (default 1)")
    p.add_argument("--max-frames", type=int, help="videos: stop after this many frames")
    p.set_defaults(handler=run)


def expand(paths: list[str]) -> Iterator[str]:
    """Files named, files under folders (sorted, recursive), and webcam indices, in order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from (str(p) for p in sorted(path.rglob("*"))
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        else:
            yield raw


class Writer:
    """Prints results as text, JSON Lines or CSV."""

    def __init__(self, mode: str, stream: TextIO = sys.stdout) -> None:
        self.mode, self.stream = mode, stream
        self.csv = csv.DictWriter(stream, fieldnames=CSV_FIELDS) if mode == "csv" else None
        if self.csv:
            self.csv.writeheader()

    def faces(self, file: str, faces: list, frame: int | None = None, tracks: list[int] | None = None) -> None:
        if self.mode == "json":
            record: dict[str, Any] = {"file": file, "faces": [f.to_dict() for f in faces]}
            if frame is not None:
                record["frame"] = frame
                for entry, track in zip(record["faces"], tracks or [], strict=True):
                    entry["track"] = track
            self.stream.write(json.dumps(record) + "\n")
        elif self.csv:
            for i, f in enumerate(faces):
                d = f.to_dict()
                x, y, w, h = d["box"]
                self.csv.writerow({"file": file, "frame": frame, "track": tracks[i] if tracks else None,
                                   "face": i, "x": x, "y": y, "w": w, "h": h, "score": d["score"],
                                   "age": d["age"], "age_low": d["age_range"][0], "age_high": d["age_range"][1],
                                   "age_group": d["age_group"], "age_group_confidence": d["age_group_confidence"],
                                   "gender": d["gender"], "gender_confidence": d["gender_confidence"]})
        else:
            where = f"{file}" + (f" [frame {frame}]" if frame is not None else "")
            self.stream.write(f"{where}: {len(faces)} face{'s' if len(faces) != 1 else ''}\n")
            for i, f in enumerate(faces):
                x, y, w, h = (int(v) for v in f.box)
                who = f"track {tracks[i]}" if tracks else f"face {i}"
                self.stream.write(f"  {who}: {f.gender} ({f.gender_confidence:.0%}), age {f.age:.0f} "
                                  f"[{f.age_range[0]:.0f}-{f.age_range[1]:.0f}], group {f.age_group}, "
                                  f"box {x},{y},{w},{h}\n")
        self.stream.flush()

    def error(self, file: str, message: str) -> None:
        if self.mode == "json":
            self.stream.write(json.dumps({"file": file, "error": message}) + "\n")
        elif self.csv:
            self.csv.writerow({"file": file, "error": message})
        where = "" if message.startswith(file) else f"{file}: "  # image errors already name their file
        print(f"agegender predict: {where}{message}", file=sys.stderr)


def _save(save_dir: Path, file: str, image: Any, faces: list, predictor: Any, frame: int | None = None) -> None:
    import cv2

    from agegender.inference.align import align_face
    from agegender.preprocess import CHIP_SIZE

    stem = Path(file).stem + (f"_{frame:06d}" if frame is not None else "")
    save_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(save_dir / f"{stem}_annotated.jpg"), predictor.plot(image, faces))
    for i, face in enumerate(faces):
        chip = align_face(image, face.landmarks, CHIP_SIZE) if face.landmarks is not None else image
        cv2.imwrite(str(save_dir / f"{stem}_face{i}.jpg"), chip)


def run(args: argparse.Namespace) -> int:
    from agegender.images import ImageError, load_image
    from agegender.inference.detector import WeightsError
    from agegender.inference.factory import load_model
    from agegender.inference.onnx_model import ModelError
    from agegender.inference.predictor import Predictor
    from agegender.inference.video import predict_video

    check_accurate_options(args)
    try:
        model = load_model(args.model, accurate=args.accurate, threads=args.threads,
                           descriptor_weights=args.descriptor_weights)
        predictor = Predictor(model, detector=None if args.no_detect else (args.detector or "auto"),
                              threads=args.threads, flip=not args.no_flip)
    except (ModelError, WeightsError) as err:
        raise UserError(str(err)) from err
    writer = Writer("json" if args.json else "csv" if args.csv else "text")
    files = list(expand(args.paths))
    failed = 0
    for file in tqdm(files, desc="predict", unit="file", disable=len(files) < 2 or not sys.stderr.isatty()):
        is_video = Path(file).suffix.lower() in VIDEO_SUFFIXES or file.isdigit()
        try:
            if is_video:
                for frame_no, frame, tracked in predict_video(predictor, file, args.every, args.max_frames):
                    faces = [f for _, f in tracked]
                    writer.faces(file, faces, frame=frame_no, tracks=[t for t, _ in tracked])
                    if args.save_dir:
                        _save(args.save_dir, file, frame, faces, predictor, frame_no)
                continue
            image = load_image(file, max_pixels=predictor.max_pixels)
            faces = predictor.predict_arrays([image])[0]
        except (ImageError, ValueError, OSError) as err:
            failed += 1
            writer.error(file, str(err))
            continue
        writer.faces(file, faces)
        if args.save_dir:
            _save(args.save_dir, file, image, faces, predictor)
    if failed:
        print(f"agegender predict: {failed} of {len(files)} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
