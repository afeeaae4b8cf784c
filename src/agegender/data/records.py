"""The one record type every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field

from agegender.labels import age_to_group


@dataclass(frozen=True)
class FaceRecord:
    """One labelled face image.

    ``group_id`` is the leakage unit: records sharing it must stay on one side of every split (a subject for
    Adience, a near-duplicate group for UTKFace, a user-given subject for CSV manifests, an identity for CelebA).
    ``attributes`` holds a face's binary attributes (CelebA's 40, in ``agegender.outputs.ATTRIBUTES`` order: 1
    present, 0 absent, -1 unknown), None when the data set has none.
    """

    path: str
    age: float | None
    age_group: int | None
    gender: int | None
    race: int | None = None
    group_id: str = ""
    attributes: tuple[int, ...] | None = None

    @classmethod
    def from_age(cls, path: str, age: float | None, gender: int | None, race: int | None = None,
                 group_id: str = "") -> FaceRecord:
        group = age_to_group(age) if age is not None else None
        return cls(path, age, group, gender, race, group_id or path)


@dataclass
class ReadReport:
    """What a reader kept and what it skipped, with reasons, so nothing is dropped silently."""

    read: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, item: str) -> None:
        self.skipped.setdefault(reason, []).append(item)

    def summary(self, shown: int = 3) -> str:
        """``"201 read, 1 skipped (bad row: ...: line 203)"``: each reason with its first ``shown`` items."""
        parts = [f"{self.read} read"] + [
            f"{len(v)} skipped ({k}: {', '.join(v[:shown])}{f' and {len(v) - shown} more' if len(v) > shown else ''})"
            for k, v in sorted(self.skipped.items())]
        return ", ".join(parts)
