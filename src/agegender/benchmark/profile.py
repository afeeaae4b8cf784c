"""``agegender bench --profile``: the time of each stage of the default pipeline, on photos and on face chips.

Each stage is the piece the pipeline calls, called directly on the previous stage's output (computed once
beforehand), so its time is that piece's alone:

- decode: :func:`agegender.images.load_scaled` at the reduced JPEG scale the Predictor uses;
- detect: :meth:`FaceDetector.detect` on those pixels;
- align: :func:`agegender.inference.faces.locate_faces` given those detections (each face aligned; a small face in
  a reduced decode from a finer decode of its photo);
- preprocess: :meth:`OnnxAgeGender.network_input` (the chips' pixels, and their mirrors when the model flips);
- network: :meth:`OnnxAgeGender.raw`;
- decode outputs: :meth:`OnnxAgeGender.finish` (flip averaging, :func:`agegender.outputs.decode` and the
  model's age and interval calibration).

These three model stages in a row are the network followed by NumPy: what :meth:`OnnxAgeGender.predict` runs where
it cannot fuse its decoding into the graph. Where it can (the shipped int8 files: :mod:`agegender.inference.fused`)
``predict`` is one inference from pixels to predictions, timed beside them.

Photos are predicted one at a time (``Predictor.predict``'s way), chips at batch 1 and 64; every stage is timed
interleaved with the others (:func:`~agegender.benchmark.timing.time_interleaved`), and next to them the whole
``Predictor.predict`` of the photos, and on the chips the model's stages in a row (each on the arrays the one before
has just made) and ``OnnxAgeGender.predict``. Chained, each stage finds the caches holding the others' data, and
the network runs after Python has worked for a while, long enough for the runtime's worker threads to fall asleep;
so the chain can cost more than the sum of its stages timed apart. On chips each stage is also timed inside the
chain (``in_a_row``: the median of its share of each chained call), which shows where that extra cost lands: on
a 2-core Xeon with AMX at batch 1 it was the Python stages after the network, not the network (bench of
2026-12-07, ``docs/logs/bench_profile_xeon.md``), which is why ``predict`` now fuses them into the graph.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from agegender.benchmark.timing import DEFAULT_WARMUP, time_interleaved
from agegender.images import ScaledImage, finer_decoder, load_scaled
from agegender.inference.detector import Detection
from agegender.inference.faces import locate_faces
from agegender.inference.onnx_model import OnnxAgeGender
from agegender.inference.predictor import Predictor

#: The stages, in pipeline order: (key, what the tables call it).
STAGES = (("decode", "decode (reduced JPEG)"), ("detect", "detect (YuNet)"), ("align", "align"),
          ("preprocess", "preprocess (chips -> network input)"), ("network", "network"),
          ("decode_outputs", "decode outputs (+ calibration)"))
#: Stages that start from face chips (the others need a photo).
CHIP_STAGES = ("preprocess", "network", "decode_outputs")
#: The model's stages in a row on chips: the network, then NumPy.
CHIP_CHAINED = "chained"
#: :meth:`OnnxAgeGender.predict` on chips (its decoding fused into the graph where the model allows it).
CHIP_PREDICT = "predict"
CHIP_BATCHES = (1, 64)


class _Found:
    """A stand-in detector that returns detections found beforehand, so that ``locate_faces`` times the
    alignment alone."""

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        return self.detections


@dataclass
class _Work:
    """The chips of a set of inputs, run through each model stage once beforehand."""

    chips: list[list[np.ndarray]]  # per call of the model: the chips it gets
    inputs: list[np.ndarray]
    raws: list[dict[str, np.ndarray]]

    @classmethod
    def of(cls, model: OnnxAgeGender, chips: list[list[np.ndarray]], flip: bool) -> _Work:
        chips = [c for c in chips if c]
        inputs = [model.network_input(c, flip) for c in chips]
        return cls(chips, inputs, [model.raw(x) for x in inputs])

    def calls(self, model: OnnxAgeGender, flip: bool) -> dict[str, Callable[[], object]]:
        return {
            "preprocess": lambda: [model.network_input(c, flip) for c in self.chips],
            "network": lambda: [model.raw(x) for x in self.inputs],
            "decode_outputs": lambda: [model.finish(r, flip) for r in self.raws],
        }


def profile_photos(predictor: Predictor, photos: Sequence[Path], timing: dict[str, Any]) -> dict[str, Any]:
    """Every stage over ``photos`` (one call: all of them, one at a time), in ms per photo and per face."""
    detector, model = predictor.detector, predictor.model
    if detector is None:
        raise ValueError("the photo profile needs a detector")
    min_side = detector.max_side if predictor.reduced else None
    load = partial(load_scaled, min_side=min_side, max_pixels=predictor.max_pixels)
    scaled: list[ScaledImage] = [load(p) for p in photos]
    found = [detector.detect(s.pixels) for s in scaled]
    full = [finer_decoder(p, s) for p, s in zip(photos, scaled, strict=True)]

    def align() -> list[tuple[list[Detection], list[np.ndarray]]]:
        return [locate_faces(s, _Found(f), predictor.input_side, d)
                for s, f, d in zip(scaled, found, full, strict=True)]

    chips = [c for _, c in align()]
    work = _Work.of(model, chips, predictor.flip)
    calls: dict[str, Callable[[], object]] = {
        "decode": lambda: [load(p) for p in photos],
        "detect": lambda: [detector.detect(s.pixels) for s in scaled],
        "align": align,
        **work.calls(model, predictor.flip),
        "end_to_end": lambda: [predictor.predict(p) for p in photos],
    }
    times = time_interleaved(calls, **timing)
    faces = sum(len(c) for c in chips)
    stages = {key: {"ms_per_photo": t.median_ms / len(photos), "ms_per_face": t.median_ms / faces if faces else None,
                    "p90_ms_per_photo": t.p90_ms / len(photos), "runs": t.runs} for key, t in times.items()}
    return {"photos": [p.name for p in photos], "faces": faces,
            "pixels": [[s.full_size[0], s.full_size[1]] for s in scaled],
            "decoded_at": [[s.pixels.shape[1], s.pixels.shape[0]] for s in scaled], "stages": stages}


class _Chained:
    """The model's three stages on ``chips`` in a row (the network, then NumPy), each stage's time of every call
    kept."""

    def __init__(self, model: OnnxAgeGender, chips: list[np.ndarray], flip: bool) -> None:
        self.model, self.chips, self.flip = model, chips, flip
        self.seconds: dict[str, list[float]] = {key: [] for key in CHIP_STAGES}

    def __call__(self) -> object:
        clock = time.perf_counter
        start = clock()
        pixels = self.model.network_input(self.chips, self.flip)
        preprocessed = clock()
        raw = self.model.raw(pixels)
        inferred = clock()
        decoded = self.model.finish(raw, self.flip)
        for key, seconds in zip(CHIP_STAGES, (preprocessed - start, inferred - preprocessed, clock() - inferred),
                                strict=True):
            self.seconds[key].append(seconds)
        return decoded


def profile_chips(model: OnnxAgeGender, chips: Sequence[np.ndarray], flip: bool, timing: dict[str, Any]
                  ) -> dict[str, Any]:
    """The model's stages on face chips at each of :data:`CHIP_BATCHES`, in ms per face: each timed apart, the
    three in a row (:data:`CHIP_CHAINED`), each inside that row (``in_a_row``), and ``predict``
    (:data:`CHIP_PREDICT`)."""
    if not chips:
        raise ValueError("no chips to profile")
    calls: dict[tuple[int, str], Callable[[], object]] = {}
    chained: dict[int, _Chained] = {}
    for batch in CHIP_BATCHES:
        model.prepare(batch, flip)  # the steady state, as the bench's main table times it
        group = [chips[i % len(chips)] for i in range(batch)]
        for key, call in _Work.of(model, [group], flip).calls(model, flip).items():
            calls[batch, key] = call
        calls[batch, CHIP_CHAINED] = chained[batch] = _Chained(model, group, flip)
        calls[batch, CHIP_PREDICT] = partial(model.predict, group, flip)
    times = time_interleaved(calls, **timing)
    warmup = timing.get("warmup", DEFAULT_WARMUP)  # the chained calls' first ones were warm-up calls
    return {str(batch): {**{key: {"ms_per_face": times[batch, key].median_ms / batch,
                                  "p90_ms_per_face": times[batch, key].p90_ms / batch, "runs": times[batch, key].runs}
                            for key in (*CHIP_STAGES, CHIP_CHAINED, CHIP_PREDICT)},
                         "in_a_row": {key: 1000 * statistics.median(seconds[warmup:]) / batch
                                      for key, seconds in chained[batch].seconds.items()}}
            for batch in CHIP_BATCHES}


def run_profile(predictor: Predictor, photos: Sequence[Path], chips: Sequence[np.ndarray], timing: dict[str, Any]
                ) -> dict[str, Any]:
    """The profile's JSON: what ran, the stages on the photos and on chips."""
    info = predictor.model.describe()
    return {"model": predictor.model.path.name, "backend": info["backend"], "device": info["device"],
            "flip": predictor.flip, "reduced_decode": predictor.reduced,
            "fused_decoding": predictor.model.fused_why_not is None,
            "on_photos": profile_photos(predictor, photos, timing) if photos else None,
            "on_chips": profile_chips(predictor.model, chips, predictor.flip, timing) if chips else None}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def profile_markdown(profile: dict[str, Any]) -> list[str]:
    """The profile as a table: one row per stage, ms per photo and per face on the photos, ms per face on chips."""
    photos, chips = profile["on_photos"], profile["on_chips"]
    header = ["Stage"]
    if photos:
        header += ["photos: ms/photo", "photos: ms/face"]
    if chips:
        header += [f"chips, batch {b}: ms/face{where}" for b in CHIP_BATCHES for where in ("", ", in a row")]
    rows = []
    for key, title in (*STAGES, ("end_to_end", "end to end (`Predictor.predict`)"),
                       (CHIP_CHAINED, "the model's stages in a row (the network, then NumPy)"),
                       (CHIP_PREDICT, "`OnnxAgeGender.predict`" + (", decoding in the graph"
                                                                   if profile["fused_decoding"] else ""))):
        row = [title]
        if photos:
            stage = photos["stages"].get(key)
            row += [_ms(stage["ms_per_photo"]), _ms(stage["ms_per_face"])] if stage else ["–", "–"]
        if chips:
            for b in CHIP_BATCHES:
                on = chips[str(b)]
                row += [_ms(on[key]["ms_per_face"]) if key in on else "–",
                        _ms(on["in_a_row"].get(key, on[key]["ms_per_face"] if key == CHIP_CHAINED else None))]
        rows.append(row)
    if photos:
        total = sum(photos["stages"][k]["ms_per_photo"] for k, _ in STAGES)
        per_face = total * len(photos["photos"]) / photos["faces"] if photos["faces"] else None
        sums = [_ms(total), _ms(per_face)]
        if chips:
            sums += [_ms(sum(chips[str(b)][part][k] if part == "in_a_row" else chips[str(b)][k]["ms_per_face"]
                             for k in CHIP_STAGES))
                     for b in CHIP_BATCHES for part in ("apart", "in_a_row")]
        rows.insert(len(STAGES), ["sum of the stages", *sums])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    flip = "with flip averaging" if profile["flip"] else "without flip"
    what = (f"{profile['model']} on {profile['backend']} ({profile['device']}), {flip}, "
            f"{'reduced' if profile['reduced_decode'] else 'full'} JPEG decode")
    intro = [f"Stages of the default pipeline ({what}), each piece called directly on the previous stage's output, "
             "all timed interleaved (median); beside them the whole pipeline on the photos and the model's three "
             "stages in a row on the chips, which can cost more than their sum (the runtime's threads can "
             "fall asleep between inferences, and each stage finds the caches holding the others' data). "
             "\"In a row\": each model stage's share of the chained calls (median), where that extra cost lands."]
    if photos:
        intro.append(f"Photos: {len(photos['photos'])} ({photos['faces']} faces), one at a time.")
    return ["### Where the time goes (`--profile`)", "", " ".join(intro), "", *lines, ""]
