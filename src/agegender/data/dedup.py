"""Find byte-identical and near-duplicate images so that they never straddle a split.

Near duplicates are images whose 64-bit DCT perceptual hashes differ in at most ``max_bits`` bits *and* whose
32x32 grayscale thumbnails correlate at ``min_corr`` or more. The second test matters on aligned faces: different
people's chips often sit within 6 bits of each other, and chaining such pairs alone merged 1,064 UTKFace images of
different children into one group. Groups are the connected components of the "duplicate of" relation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm


def phash(gray: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of a grayscale image (8x8 low frequencies against their median)."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 thumbnail: the dot product of two is their correlation."""
    t = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def file_fingerprints(paths: Sequence[str], progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(md5 of bytes, perceptual hash, thumbnail) of each file; an undecodable file gets hash 0 and is grouped
    by md5 only."""
    md5s, hashes = [], np.zeros(len(paths), dtype=np.uint64)
    thumbs = np.zeros((len(paths), 32 * 32), dtype=np.float32)
    for i, path in enumerate(tqdm(paths, desc="fingerprints", unit="img", disable=not progress)):
        data = Path(path).read_bytes()
        md5s.append(hashlib.md5(data).hexdigest())
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is not None and gray.size:
            hashes[i] = phash(gray)
            thumbs[i] = thumbnail(gray)
    return md5s, hashes, thumbs


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else np.unpackbits(
        x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def duplicate_groups(md5s: Sequence[str], hashes: np.ndarray, thumbs: np.ndarray, max_bits: int = 6,
                     min_corr: float = 0.9, chunk: int = 2048,
                     subjects: Sequence[str] | None = None) -> np.ndarray:
    """Group index per image: identical bytes, near duplicates as the module doc defines (hash 0 = unknown),
    or the same subject when ``subjects`` is given."""
    n = len(md5s)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first: dict[str, int] = {}
    for i, digest in enumerate(md5s):
        union(first.setdefault(digest, i), i)
    by_subject: dict[str, int] = {}
    for i, subject in enumerate(subjects or ()):
        union(by_subject.setdefault(subject, i), i)
    known = np.flatnonzero(hashes != 0)
    h = hashes[known]
    for start in range(0, len(known), chunk):
        block = h[start:start + chunk]
        dist = _popcount(block[:, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows + start, cols, strict=True):
            a, b = int(known[r]), int(known[c])
            if c > r and float(thumbs[a] @ thumbs[b]) >= min_corr:
                union(a, b)
    roots = np.array([find(i) for i in range(n)])
    _, group = np.unique(roots, return_inverse=True)
    return group
