"""Decode and resize every image once into a memory-mapped uint8 array, reused until the data changes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agegender.data.records import FaceRecord
from agegender.data.splits import dataset_key
from agegender.images import ImageError, load_image
from agegender.paths import default_cache_dir
from agegender.preprocess import chip_to_rgb


def cached_images(records: Sequence[FaceRecord], size: int, face_crop: float = 1.0, resampling: str = "area",
                  cache_dir: str | Path | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images N x size x size x 3 RGB uint8 memmap, ok mask). Undecodable images are zeros with ok False.

    The file name hashes the records, their files' sizes and mtimes, the size, the crop and the resampling, so
    a change in any of them builds a new cache; the array is written to a temporary file and renamed when complete.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "arrays"
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{dataset_key(records)}|{size}|{face_crop}|box-then-{resampling}".encode()).hexdigest()[:16]
    array_file, meta_file = folder / f"{key}.npy", folder / f"{key}.json"
    if array_file.is_file() and meta_file.is_file():
        ok = np.array(json.loads(meta_file.read_text())["ok"], dtype=bool)
        return np.load(array_file, mmap_mode="r"), ok
    tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3))
    ok = np.zeros(len(records), dtype=bool)
    for i, rec in enumerate(tqdm(records, desc=f"decoding to {size}px", unit="img", disable=not progress)):
        try:
            images[i] = chip_to_rgb(load_image(rec.path), size, face_crop, resampling)
            ok[i] = True
        except (ImageError, OSError):
            continue
    images.flush()
    del images
    tmp.replace(array_file)
    meta_file.write_text(json.dumps({"size": size, "face_crop": face_crop, "resampling": resampling, "n": len(records),
                                     "ok": ok.tolist()}))
    return np.load(array_file, mmap_mode="r"), ok
