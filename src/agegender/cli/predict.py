"""``agegender predict PATH...``: age and gender for every face in photos, folders, videos or a webcam."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from agegender.cli.common import (
    UserError,
    add_accurate_options,
    add_backend_options,
    add_detect_size_option,
    add_max_pixels_option,
    add_model_options,
    check_model_options,
    non_negative_seconds,
    positive_int,
)
from agegender.images import VIDEO_SUFFIXES

if TYPE_CHECKING:
    from agegender.inference.collection import Collection
    from agegender.inference.predictor import Predictor
    from agegender.inference.results import ImageResult
    from agegender.inference.sinks import RowSink


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a number of processes (at least 1) or auto, got {text!r}") from err


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="age and gender for every face in images, folders or videos",
                       description="Detect every face, align it and predict age and gender. PATH may be an image, "
                                   "a folder (searched recursively), a video file, or a webcam index such as 0.")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--files-from", metavar="LIST",
                   help="also read PATHs from this file, one per line ('-': standard input): for collections too "
                        "large to name or to walk, e.g. `find /archive -name '*.jpg' > LIST`")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per file on stdout (JSON Lines)")
    out.add_argument("--csv", action="store_true", help="one CSV row per face on stdout")
    p.add_argument("--save-dir", type=Path, help="write annotated images and face crops here")
    p.add_argument("--no-detect", action="store_true", help="inputs are aligned face chips: skip detection")
    add_model_options(p)
    p.add_argument("--detector", help="YuNet ONNX file (default: $AGEGENDER_YUNET, cache, or download)")
    add_detect_size_option(p)
    p.add_argument("--no-flip", action="store_true", help="do not average each face with its mirror image")
    add_accurate_options(p)
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: all)")
    add_max_pixels_option(p)
    add_backend_options(p)
    bulk = p.add_argument_group("bulk", "many photos into one table, resumable, in parallel, across machines")
    bulk.add_argument("--output", type=Path, metavar="FILE",
                      help="write one row per face (and one per photo without a face or with an error) to FILE: "
                           ".parquet (needs pyarrow), .jsonl or .csv; a crash loses at most the photos in flight")
    bulk.add_argument("--resume", action="store_true",
                      help="continue --output: skip the inputs already in it (error rows too: --retry-errors)")
    bulk.add_argument("--retry-errors", action="store_true",
                      help="with --resume: predict again the inputs whose rows in --output are error rows (a disk "
                           "or network that failed, a file since repaired), their error rows taken out of it")
    bulk.add_argument("--shard", metavar="I/N", help="take the I-th of N disjoint parts of the inputs (0 <= I < N), "
                                                     "so that N machines or array jobs cover all of them; with "
                                                     "--files-from, the list's lines are shared out before any is "
                                                     "read (a folder's files go to its line's part)")
    bulk.add_argument("--flush-seconds", type=non_negative_seconds, default=10.0,
                      help="Parquet: make the rows written so far durable at least this often (default 10)")
    bulk.add_argument("--workers", type=_workers, metavar="K|auto",
                      help="processes that decode and detect in parallel while the model runs batched (default auto: "
                           "one per core once the photos to do hold 32 MB, where their start pays back; else 1)")
    bulk.add_argument("--ray", action="store_true",
                      help="run through Ray Data on a Ray cluster (--ray-address; default: the one `ray start` made "
                           "on this machine, else a local one); needs --output .parquet and the `ray` extra")
    bulk.add_argument("--ray-address", default="auto", metavar="ADDRESS",
                      help="--ray: HOST:PORT of the cluster's head, auto (default), or local (a private local Ray)")
    p.add_argument("--every", type=positive_int, default=1, help="videos: predict every N-th frame (default 1)")
    p.add_argument("--max-frames", type=positive_int, help="videos: stop after this many frames")
    p.set_defaults(handler=run)


def expand(paths: list[str]) -> tuple[list[str], Collection]:
    """Webcam indices as they are, and files under the other paths (:func:`~agegender.inference.collection.collect`:
    folders recursive and sorted, videos included), with what was skipped or could not be listed."""
    from agegender.inference.collection import collect
    from agegender.inference.video import is_camera

    cameras = [p for p in paths if is_camera(p)]
    collection = collect((p for p in paths if p not in cameras), videos=True)
    return cameras + collection.files, collection


def csv_columns() -> tuple[str, ...]:
    """The ``--csv`` columns: those of ``ImageResult.rows()`` up to ``error`` (the rest are not printed)."""
    from agegender.inference.results import ROW_COLUMNS

    return ROW_COLUMNS[:ROW_COLUMNS.index("error") + 1]


class Writer:
    """Prints ``ImageResult``s as text, JSON Lines (``to_dict()``) or CSV (``rows()``)."""

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.mode, self.stream = mode, stream or sys.stdout
        self.csv: csv.DictWriter[str] | None = None
        if mode == "csv":
            self.csv = csv.DictWriter(self.stream, fieldnames=csv_columns(), extrasaction="ignore")
            self.csv.writeheader()

    def result(self, result: ImageResult, frame: int | None = None, tracks: list[int] | None = None) -> None:
        """One image's faces; a video frame also gives its index and each face's track."""
        if self.mode == "json":
            d = result.to_dict()
            record: dict[str, Any] = {"file": d["source"], "faces": d["faces"]}
            if frame is not None:
                record["frame"] = frame
                for entry, track in zip(record["faces"], tracks or [], strict=True):
                    entry["track"] = track
            self.stream.write(json.dumps(record) + "\n")
        elif self.csv:
            for row in result.rows() if result else []:  # no row for an image without a face
                if frame is not None:
                    row.update(frame=frame, track=tracks[row["face"]] if tracks else None)
                self.csv.writerow(row)
        else:
            where = result.source + (f" [frame {frame}]" if frame is not None else "")
            self.stream.write(f"{where}: {len(result)} face{'s' if len(result) != 1 else ''}\n")
            for i, f in enumerate(result):
                x, y, w, h = (int(v) for v in f.box)
                who = f"track {tracks[i]}" if tracks else f"face {i}"
                interval = "" if f.age_range is None else f" [{f.age_range[0]:.1f}-{f.age_range[1]:.1f}]"
                self.stream.write(f"  {who}: {f.gender} ({f.gender_confidence:.0%}), age {f.age:.1f}{interval}, "
                                  f"group {f.age_group}, box {x},{y},{w},{h}\n")
        self.stream.flush()

    def error(self, file: str, message: str) -> None:
        if self.mode == "json":
            self.stream.write(json.dumps({"file": file, "error": message}) + "\n")
        elif self.csv:
            from agegender.inference.results import ImageResult

            self.csv.writerow(ImageResult.error_row(file, message))
        where = "" if message.startswith(file) else f"{file}: "  # image errors already name their file
        print(f"agegender predict: {where}{message}", file=sys.stderr)


def save_stems(files: Sequence[str]) -> dict[str, str]:
    """The STEM of each file's ``--save-dir`` outputs: its own, or, where files share it (``2023/IMG_0001.jpg``
    and ``2024/IMG_0001.jpg``), its path below their common folder (``2023_IMG_0001``), with the ending where
    only that tells them apart (``a_jpg``, ``a_png``); a STEM that still meets another (``c/2023_IMG_1.jpg``'s
    own, or ``a/b/c.jpg`` and ``a_b/c.jpg``) gets ``-2``, ``-3``... in the order of ``files``, so that no output is
    written over another's.

    >>> save_stems(["c/2023/IMG_1.jpg", "c/2024/IMG_1.jpg", "c/x.png", "c/a.jpg", "c/a.png", "0"])
    {'c/2023/IMG_1.jpg': '2023_IMG_1', 'c/2024/IMG_1.jpg': '2024_IMG_1', 'c/x.png': 'x', 'c/a.jpg': 'a_jpg', \
'c/a.png': 'a_png', '0': 'camera0'}
    >>> save_stems(["c/2023/IMG_1.jpg", "c/2024/IMG_1.jpg", "c/2023_IMG_1.jpg", "a/b/c.jpg", "a_b/c.jpg"])
    {'c/2023/IMG_1.jpg': '2023_IMG_1', 'c/2024/IMG_1.jpg': '2024_IMG_1', 'c/2023_IMG_1.jpg': '2023_IMG_1-2', \
'a/b/c.jpg': 'a_b_c', 'a_b/c.jpg': 'a_b_c-2'}
    """
    from agegender.inference.video import is_camera

    by_stem: dict[str, list[str]] = {}
    for file in files:
        by_stem.setdefault("camera" + file if is_camera(file) else Path(file).stem, []).append(file)
    stems = {}
    for stem, same in by_stem.items():
        if len(same) == 1:
            stems[same[0]] = stem
            continue
        root = os.path.commonpath([os.path.abspath(f) for f in same])
        below = {f: Path(os.path.relpath(os.path.abspath(f), root)) for f in same}
        names = {f: "_".join(path.with_suffix("").parts) for f, path in below.items()}
        if len(set(names.values())) < len(same):
            with_ending = {f: "_".join(path.parts).replace(".", "_") for f, path in below.items()}
            names = with_ending if len(set(with_ending.values())) == len(same) else names
        stems.update(names)
    taken: set[str] = set()
    for file in files:  # in the order given: the first keeps its STEM
        stem, n = stems[file], 1
        while stems[file] in taken:
            n += 1
            stems[file] = f"{stem}-{n}"
        taken.add(stems[file])
    return stems


def _save(save_dir: Path, result: ImageResult, stem: str, max_pixels: int) -> None:
    """``STEM_annotated.jpg`` and the face chips ``STEM_face{i}.jpg`` (STEM: :func:`save_stems`), drawn and cut at
    full resolution (a JPEG predicted from a reduced decode is decoded again for them, and its chips aligned
    again from that: the predictions do not depend on ``--save-dir``)."""
    import dataclasses

    from agegender.images import load_image

    try:
        if result.scale != 1.0:
            result = dataclasses.replace(result, image=load_image(result.source, max_pixels=max_pixels), scale=1.0,
                                         chips=None)
        result.save(save_dir / f"{stem}_annotated.jpg")
        result.save_crops(save_dir, stem)
    except OSError as err:
        raise UserError(f"--save-dir: {err}") from err


def run(args: argparse.Namespace) -> int:
    from agegender.inference.detector import WeightsError
    from agegender.inference.factory import load_model
    from agegender.inference.onnx_model import ModelError
    from agegender.inference.predictor import Predictor

    check_model_options(args)
    if args.files_from is not None:
        from agegender.inference.collection import read_list

        try:
            args.paths = [*args.paths, *read_list(args.files_from)]
        except OSError as err:
            raise UserError(f"--files-from {args.files_from}: {err.strerror or err}") from err
        if not args.paths:
            print(f"agegender predict: no input: {args.files_from} names no path", file=sys.stderr)
            return 1
    elif not args.paths:
        raise UserError("give one or more PATHs, or --files-from LIST")
    if args.output is None and (args.resume or args.shard or args.workers is not None or args.ray):
        raise UserError("--resume, --shard, --workers and --ray go with --output FILE")
    if args.retry_errors and not args.resume:
        raise UserError("--retry-errors goes with --resume: it retries the failed inputs of an existing --output")
    if args.output is not None and (args.json or args.csv or args.save_dir):
        raise UserError("--output writes a table: leave out --json, --csv and --save-dir")
    if args.ray:
        from agegender.cli.predict_ray import run_ray

        return run_ray(args)
    try:
        model = load_model(args.model, accurate=args.accurate, threads=args.threads,
                           descriptor_weights=args.descriptor_weights, backend=args.backend, device=args.device,
                           gender_model=args.gender_model)
        predictor = Predictor(model, detector=None if args.no_detect else (args.detector or "auto"),
                              threads=args.threads, flip=not args.no_flip, max_pixels=args.max_pixels,
                              detect_size=args.detect_size)
    except (ModelError, WeightsError, ValueError) as err:
        raise UserError(str(err)) from err
    return _bulk(args, predictor) if args.output is not None else _stream(args, predictor)


def report_skipped(collection: Collection) -> None:
    for reason, paths in sorted(collection.skipped.items()):
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        print(f"agegender predict: skipped {len(paths)} file(s), {reason}: {shown}", file=sys.stderr)


def bulk_inputs(args: argparse.Namespace, shard: tuple[int, int] | None,
                lister: Callable[[list[str]], Collection]) -> tuple[Collection, str] | None:
    """The inputs of ``shard`` for a bulk run (local or Ray; ``lister`` lists paths), taken before its output is
    created, their skipped files named, and what to say if the shard holds none (:func:`report_empty_shard`).
    With ``--files-from``, the lines are shared out before they are read
    (:func:`~agegender.inference.collection.collect_listed`; the command line's paths count as lines). Returns None
    (said on stderr) when the paths hold no input, so that the command, fixed, can run again."""
    from agegender.inference.collection import collect_listed

    if args.files_from is not None and shard is not None:
        part = collect_listed(args.paths, shard, lister)
        report_skipped(part)
        return part, (f"its lines of the {len(args.paths)} listed path(s) name no input (each shard reads only its "
                      "own lines)")
    listed = lister(args.paths)
    if not (listed.files or listed.errors):
        report_skipped(listed)
        print("agegender predict: no input: the paths hold no image file", file=sys.stderr)
        return None
    everything = len(listed.files) + len(listed.errors)
    part = listed.part(shard)
    report_skipped(part)
    return part, f"none of the {everything} input(s) is in it (the other shards hold them all)"


def retry_errors(sink: RowSink, inputs: Collection, paths: Sequence[str]) -> None:
    """``--retry-errors``: the inputs whose rows in the output are error rows are to do again (said on stderr), and
    so are the error rows of ``paths`` (the command line's) and of the folders holding the inputs: a folder that
    could not be read (unmounted, say) and now lists its files leaves no stale error row behind."""
    folders: set[str] = set()
    for file in inputs.files:
        parent = os.path.dirname(file)
        while parent and parent not in folders:
            folders.add(parent)
            parent, previous = os.path.dirname(parent), parent
            if parent == previous:
                break
    retried = sink.retry_failed([*inputs.files, *(path for path, _ in inputs.errors), *paths, *folders])
    print(f"agegender predict: retrying {len(retried)} input(s) whose rows were errors", file=sys.stderr)


def report_empty_shard(shard_text: str | None, inputs: int, why: str) -> None:
    """A shard that got none of the inputs is not an error (the other shards hold them): say so, and ``why``."""
    if shard_text and not inputs:
        print(f"agegender predict: shard {shard_text} is empty: {why}", file=sys.stderr)


def _bulk(args: argparse.Namespace, predictor: Predictor) -> int:
    from agegender.inference.bulk import WorkerDied, run_bulk
    from agegender.inference.collection import collect, parse_shard
    from agegender.inference.results import ROW_TYPES
    from agegender.inference.sinks import check_output, open_sink

    shard = parse_shard(args.shard) if args.shard else None
    check_output(args.output, args.resume)
    inputs = bulk_inputs(args, shard, collect)
    if inputs is None:
        return 1
    collection, everything = inputs
    try:
        sink = open_sink(args.output, ROW_TYPES, resume=args.resume, flush_seconds=args.flush_seconds,
                         model_version=predictor.model.version_label)
    except ImportError as err:
        raise UserError(str(err)) from err
    if args.retry_errors:
        retry_errors(sink, collection, args.paths)
    try:
        summary = run_bulk(predictor, collection, sink, workers=args.workers or "auto",
                           progress=sys.stderr.isatty())
    except WorkerDied as err:
        print(f"agegender predict: error: {err}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(f"agegender predict: {line}", file=sys.stderr)
    report_empty_shard(args.shard, summary.inputs, everything)
    return 1 if summary.errors else 0


def _video(args: argparse.Namespace, predictor: Predictor, writer: Writer, file: str, stem: str) -> None:
    """Each predicted frame to the writer; with ``--save-dir``, one annotated video ``STEM_annotated.mp4``."""
    from agegender.inference.results import ImageResult
    from agegender.inference.video import AnnotatedVideo, frame_rate, predict_video

    video = None
    if args.save_dir:
        _make_dir(args.save_dir)
        video = AnnotatedVideo(str(args.save_dir / f"{stem}_annotated.mp4"), frame_rate(file), args.every)
    frames = 0
    try:
        for frame_no, frame, tracked in predict_video(predictor, file, args.every, args.max_frames):
            result = ImageResult([f for _, f in tracked], source=file, image=frame, model=predictor.model.config.name)
            writer.result(result, frame=frame_no, tracks=[t for t, _ in tracked])
            if video is not None:
                try:
                    video.write(result.plot())
                except OSError as err:  # as for a photo: every input would fail alike, so the run stops
                    raise UserError(f"--save-dir: {err}") from err
            frames += 1
    finally:
        if video is not None:
            video.close()
    if not frames:  # it opened, but held no frame to read: an input that failed, not a silent success
        raise ValueError(f"{file}: the video holds no frame that could be read")


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--save-dir: {err}") from err


def _stream(args: argparse.Namespace, predictor: Predictor) -> int:
    from agegender.images import ImageError
    from agegender.inference.video import is_camera

    writer = Writer("json" if args.json else "csv" if args.csv else "text")
    files, collection = expand(args.paths)
    report_skipped(collection)
    stems = save_stems(files)
    failed = 0
    for file, reason in collection.errors:
        failed += 1
        writer.error(file, f"{file}: {reason}")
    for file in tqdm(files, desc="predict", unit="file", disable=len(files) < 2 or not sys.stderr.isatty()):
        is_video = Path(file).suffix.lower() in VIDEO_SUFFIXES or is_camera(file)
        try:
            if is_video:
                _video(args, predictor, writer, file, stems[file])
                continue
            result = predictor.predict(file)
        except BrokenPipeError:
            raise  # the reader of stdout went away: main() ends quietly
        except (ImageError, ValueError, OSError) as err:
            failed += 1
            writer.error(file, str(err))
            continue
        writer.result(result)
        if args.save_dir:
            _save(args.save_dir, result, stems[file], predictor.max_pixels)
    total = len(files) + len(collection.errors)
    if not total:
        print("agegender predict: no input: the paths hold no image or video file", file=sys.stderr)
        return 1
    if failed:
        print(f"agegender predict: {failed} of {total} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
