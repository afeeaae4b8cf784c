"""Datasets as one record type, deduplicated, group-exclusive splits, and a cached fast path for CPU training."""

from agegender.data.records import FaceRecord, ReadReport

__all__ = ["FaceRecord", "ReadReport"]
