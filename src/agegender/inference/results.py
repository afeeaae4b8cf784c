"""Per-face results: what ``Predictor.predict`` returns, with ``to_dict()`` and drawing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agegender.inference.detector import LANDMARK_NAMES

MALE_COLOR, FEMALE_COLOR = (235, 150, 40), (120, 60, 230)  # BGR


@dataclass(frozen=True)
class Face:
    """One face: where it is, and its age and gender.

    ``box`` is (x, y, w, h) in image pixels (the whole image for an undetected chip), ``age_range`` an 80%
    interval in years, ``gender_confidence`` the probability of the predicted gender.
    """

    box: tuple[float, float, float, float]
    score: float
    age: float
    age_range: tuple[float, float]
    age_group: str
    age_group_confidence: float
    gender: str
    gender_confidence: float
    landmarks: np.ndarray | None = None

    @property
    def label(self) -> str:
        return f"{self.gender[0].upper()} {self.age:.0f} ({self.age_range[0]:.0f}-{self.age_range[1]:.0f})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the schema is documented in the README."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "age": round(float(self.age), 1),
            "age_range": [round(float(v), 1) for v in self.age_range],
            "age_group": self.age_group,
            "age_group_confidence": round(float(self.age_group_confidence), 4),
            "gender": self.gender,
            "gender_confidence": round(float(self.gender_confidence), 4),
            "landmarks": None if self.landmarks is None else {
                name: [round(float(x), 1), round(float(y), 1)]
                for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks, strict=True)},
        }


def plot(image_bgr: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of the image with each face's box and label drawn (blue male, magenta female)."""
    canvas = image_bgr.copy()
    scale = max(canvas.shape[:2]) / 800
    thick, font = max(1, round(2 * scale)), 0.5 * max(scale, 0.6)
    for face in faces:
        x, y, w, h = (int(round(v)) for v in face.box)
        color = MALE_COLOR if face.gender == "male" else FEMALE_COLOR
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thick)
        (tw, th), base = cv2.getTextSize(face.label, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        top = max(y - th - base - 4, 0)
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 4), color, -1)
        cv2.putText(canvas, face.label, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    thick, cv2.LINE_AA)
    return canvas
