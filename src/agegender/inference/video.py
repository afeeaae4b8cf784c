"""Per-frame prediction on videos and webcams, with each tracked face's age and gender smoothed over time."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from agegender.inference.predictor import Predictor
from agegender.inference.results import Face
from agegender.labels import AGE_GROUPS, age_to_group, gender_codes, gender_name
from agegender.outputs import reported_ages

log = logging.getLogger(__name__)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes.

    >>> iou((0, 0, 10, 10), (5, 0, 10, 10))
    0.3333333333333333
    """
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    box: tuple[float, ...]
    age: float
    female: float  # smoothed P(female)
    groups: np.ndarray | None = None  # smoothed age-group probabilities (None: the faces carry none)
    missed: int = 0
    hits: int = 1


@dataclass
class FaceTracker:
    """Greedy IoU tracker; age, P(female) and the age-group probabilities are exponential moving averages per track
    (``alpha`` = weight of the newest frame). The age group follows the smoothed age by the gap policy
    (``labels.age_to_group``), so a tracked face never reads "age 43, group 48-53", and its confidence is that
    group's smoothed probability."""

    alpha: float = 0.3
    min_iou: float = 0.3
    max_missed: int = 10
    tracks: list[Track] = field(default_factory=list)
    _next_id: int = 1

    def cut(self) -> None:
        """A new shot begins: the faces on screen are new people, whatever their boxes (new track ids)."""
        self.tracks = []

    def update(self, faces: Sequence[Face]) -> list[tuple[int, Face]]:
        """Assign each face a track id and return it with smoothed age and gender."""
        free = list(self.tracks)
        out = []
        for face in sorted(faces, key=lambda f: -f.score):
            female = face.gender_confidence if face.gender == "female" else 1 - face.gender_confidence
            groups = None if face.age_group_probabilities is None else np.asarray(face.age_group_probabilities)
            best = max(free, key=lambda t: iou(t.box, face.box), default=None)
            if best is not None and iou(best.box, face.box) >= self.min_iou:
                free.remove(best)
                best.age += self.alpha * (face.age - best.age)
                best.female += self.alpha * (female - best.female)
                if groups is not None:
                    best.groups = groups if best.groups is None else best.groups + self.alpha * (groups - best.groups)
                best.box, best.missed, best.hits = face.box, 0, best.hits + 1
                track = best
            else:
                track = Track(self._next_id, face.box, face.age, female, groups)
                self._next_id += 1
                self.tracks.append(track)
            age = float(reported_ages(track.age))
            age_range = None  # a point-age model's faces have none
            if face.age_range is not None:  # the frame's interval, moved with the age
                low, high = reported_ages(np.asarray(face.age_range) + (track.age - face.age))
                age_range = (float(low), float(high))
            group = age_to_group(age)
            confidence = face.age_group_confidence  # None for a point-age model
            if track.groups is not None:
                confidence = float(track.groups[group])
            elif confidence is not None and AGE_GROUPS[group] != face.age_group:
                confidence = 0.0  # a face without its group probabilities: the frame's own, where its group is the same
            out.append((track.track_id, replace(
                face, age=age, age_range=age_range, age_group=AGE_GROUPS[group], age_group_confidence=confidence,
                age_group_probabilities=None if track.groups is None else tuple(float(v) for v in track.groups),
                gender=gender_name(int(gender_codes(track.female))),
                gender_confidence=max(track.female, 1 - track.female))))
        for track in free:
            track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return out


def is_camera(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a webcam's index (``0``): digits that name no file (a photo called ``7`` is a file)."""
    return isinstance(source, str) and source.isdigit() and not os.path.exists(source)


def open_capture(source: str | os.PathLike) -> cv2.VideoCapture:
    """A video file, or a webcam given as its index (``0``: :func:`is_camera`)."""
    if not is_camera(source) and os.path.isfile(source) and not os.path.getsize(source):
        raise ValueError(f"empty video file (0 bytes): {os.fspath(source)}")
    capture = cv2.VideoCapture(int(os.fspath(source)) if is_camera(source) else os.fspath(source))
    if not capture.isOpened():
        raise ValueError(f"cannot open video or camera {os.fspath(source)!r}")
    return capture


class AnnotatedVideo:
    """Writes annotated frames into one video file (``.mp4``, MPEG-4 Part 2), at the source's frame rate divided by
    the frames skipped; opened on the first frame. The codec needs even sides: an odd width or height is padded
    by one pixel that repeats the last column or row (the encoder would otherwise drop that column or row)."""

    def __init__(self, path: str, source_fps: float, every: int = 1) -> None:
        self.path, self.fps = path, max((source_fps or 25.0) / max(every, 1), 1.0)
        self.writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if height % 2 or width % 2:
            frame = cv2.copyMakeBorder(frame, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        if self.writer is None:
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter.fourcc(*"mp4v"), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise OSError(f"cannot write the video {self.path}")
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def frame_rate(source: str | os.PathLike) -> float:
    """The frames per second a video file or camera reports (0 when it does not say)."""
    capture = open_capture(source)
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


#: A frame whose 32 x 18 grey thumbnail differs from the last predicted frame's by more than this (mean absolute
#: difference, 0-255) starts a new shot: cuts between the shared photos measured 67-92; the same photo moved 8 and
#: 30 px 16 and 43, brightened by 20 19 (one measurement each). Without it a face after a cut took over the track
#: (age, gender) of whoever had stood there.
CUT_DIFFERENCE = 50.0
#: A video file that yields fewer than this share of the frames its header announces is reported as truncated (a
#: header's count can be approximate: a few frames short are not).
TRUNCATED_SHARE = 0.9


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    return cv2.resize(grey, (32, 18), interpolation=cv2.INTER_AREA).astype(np.int16)


def predict_video(predictor: Predictor, source: str | os.PathLike, every: int = 1,
                  max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray, list[tuple[int, Face]]]]:
    """Yield (frame index, frame, [(track id, smoothed face)]) for every ``every``-th frame of the first
    ``max_frames`` read; a cut to another shot (:data:`CUT_DIFFERENCE`) ends every track. A video file that ends
    well before the frames its header announces (:data:`TRUNCATED_SHARE`) is logged as truncated (a warning)."""
    if every < 1 or (max_frames is not None and max_frames < 0):
        raise ValueError(f"every must be at least 1 and max_frames at least 0, got {every} and {max_frames}")
    capture = open_capture(source)
    announced = 0 if is_camera(source) else int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    tracker = FaceTracker()
    index = 0
    shot: np.ndarray | None = None
    try:
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                thumb = _thumbnail(frame)
                if shot is not None and float(np.abs(thumb - shot).mean()) > CUT_DIFFERENCE:
                    tracker.cut()
                shot = thumb
                yield index, frame, tracker.update(predictor.predict_arrays([frame])[0])
            index += 1
    finally:
        capture.release()
    if index < TRUNCATED_SHARE * announced and (max_frames is None or index < max_frames):
        log.warning("%s: the video ended after %d of the %d frames its header announces (truncated or damaged?)",
                    os.fspath(source), index, announced)
