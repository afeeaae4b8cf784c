"""Find byte-identical and near-duplicate images (mirrored, blurred, re-encoded, re-cropped copies) so that they
never straddle a split.

Each decodable image gets a 32x32 grayscale thumbnail. Aligned faces look alike at that size (a 64-bit pHash or a
plain thumbnail correlation chains different people together), so the thumbnails are compared after removing
what faces have in common: the mean thumbnail and the leading principal components ("eigenfaces") of the image set
itself, fitted with every image counted once as it is and once mirrored. What is left is what makes one photo
different from another (hair, background, lighting, expression), and it survives blur and JPEG re-encoding.
The comparison is made with each image as it is and horizontally mirrored, in one
matrix product: the thumbnails are split into their mirror-symmetric and antisymmetric halves ``S`` and ``A``, so
``x.y = S.S' + A.A'`` and ``x.mirror(y) = S.S' - A.A'``.

A pair of distinct images is a near duplicate when this residual correlation is ``min_residual`` or more. A pair
below that but at ``min_residual_weak`` or more is one only when a test that does not depend on the image set
confirms it: their 64x64 band-pass images (the fine detail of the two photos, in the matching orientation, best
over shifts up to ``max_shift`` pixels and zooms by ``scales``) correlate at ``min_detail`` or more, or, from
``min_residual_thumb`` up, their plain thumbnails correlate at ``min_thumb`` or more. The residual test is what
keeps different people apart; the band-pass test is what finds copies that were re-cropped (shifted or zoomed by a
few percent), since the residual is sensitive to a shift of more than about 2 pixels in 200.

The face components need enough faces to be fitted: a set of fewer than ``min_fit_images`` decodable images uses
the older test instead (pHashes within ``max_bits`` bits and plain thumbnails correlating at ``min_corr``, now
also against the mirror image). Groups are the connected components of the "duplicate of" relation
(byte-identical files are always one group). See ``docs/dedup.md`` for the figures on UTKFace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

THUMB = 32  # thumbnail side
DETAIL = 64  # band-pass image side for the second test
DETAIL_SIGMA = 2.0  # band-pass: the 64x64 image less its Gaussian blur at this sigma
#: Stored with each split (``dedup.json``): a split made by another method is made again. v4: the label and the
#: record kept of identical copies no longer depend on the order of the records (``splits.collapse_duplicates``).
METHOD = "md5 + mirror-aware eigenface-residual thumbnails + band-pass check, content-named groups (v4)"


@dataclass(frozen=True)
class Fingerprints:
    """Per-file fingerprints; ``decoded`` is False for a file that does not decode (grouped by md5 only)."""

    md5s: list[str]
    decoded: np.ndarray  # (n,) bool
    hashes: np.ndarray  # (n,) uint64 pHash of the image
    mirror_hashes: np.ndarray  # (n,) uint64 pHash of its horizontal mirror
    thumbs: np.ndarray  # (n, 32*32) float32, zero mean and unit norm
    details: np.ndarray  # (n, 64, 64) uint8 grayscale for the band-pass test


@dataclass(frozen=True)
class NearPairs:
    """Pairs ``(i, j)``, ``i < j``, of distinct files judged to be copies of one photo."""

    i: np.ndarray
    j: np.ndarray
    mirrored: np.ndarray  # bool: they match as mirror images of each other
    residual: np.ndarray  # float32 residual thumbnail correlation (nan in the small-set fallback)
    detail: np.ndarray  # float32 band-pass correlation (nan where not computed)

    def __len__(self) -> int:
        return len(self.i)


def phash(gray: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of a grayscale image (8x8 low frequencies against their median)."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].reshape(-1)
    bits = np.packbits(low > np.median(low[1:]))
    return np.uint64(int.from_bytes(bits.tobytes(), "big"))


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 thumbnail: the dot product of two is their correlation."""
    t = cv2.resize(gray, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def file_fingerprints(paths: Sequence[str], progress: bool = True) -> Fingerprints:
    """md5 of the bytes, pHashes of the image and its mirror, thumbnail and 64x64 detail image of each file."""
    n = len(paths)
    md5s, decoded = [], np.zeros(n, dtype=bool)
    hashes, mirror_hashes = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
    thumbs = np.zeros((n, THUMB * THUMB), dtype=np.float32)
    details = np.zeros((n, DETAIL, DETAIL), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc="fingerprints", unit="img", disable=not progress)):
        data = Path(path).read_bytes()
        md5s.append(hashlib.md5(data).hexdigest())
        if not data:  # OpenCV asserts on an empty buffer
            continue
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None or not gray.size:
            continue
        decoded[i] = True
        hashes[i], mirror_hashes[i] = phash(gray), phash(np.ascontiguousarray(gray[:, ::-1]))
        thumbs[i] = thumbnail(gray)
        details[i] = cv2.resize(gray, (DETAIL, DETAIL), interpolation=cv2.INTER_AREA)
    return Fingerprints(md5s, decoded, hashes, mirror_hashes, thumbs, details)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else np.unpackbits(
        x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def _halves(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-symmetric and antisymmetric halves (n, 512) of 32x32 thumbnails; x.y = S.S' + A.A' and
    x.mirror(y) = S.S' - A.A'."""
    x = thumbs.reshape(len(thumbs), THUMB, THUMB).astype(np.float64)
    left, right = x[:, :, :THUMB // 2], x[:, :, ::-1][:, :, :THUMB // 2]
    return ((left + right) / np.sqrt(2)).reshape(len(x), -1), ((left - right) / np.sqrt(2)).reshape(len(x), -1)


def residual_features(thumbs: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails less the set's mean and its ``components`` leading principal components (fitted on the images
    and their mirrors), as unit-norm symmetric and antisymmetric halves (float32)."""
    sym, anti = _halves(thumbs)
    sym = sym - sym.mean(axis=0)  # the mirror-augmented set's mean has no antisymmetric part
    vals_s, vecs_s = np.linalg.eigh(sym.T @ sym)
    vals_a, vecs_a = np.linalg.eigh(anti.T @ anti)
    top = np.argsort(-np.concatenate([vals_s, vals_a]), kind="stable")[:components]
    basis_s, basis_a = vecs_s[:, top[top < len(vals_s)]], vecs_a[:, top[top >= len(vals_s)] - len(vals_s)]
    sym = sym - (sym @ basis_s) @ basis_s.T
    anti = anti - (anti @ basis_a) @ basis_a.T
    norm = np.sqrt((sym ** 2).sum(axis=1) + (anti ** 2).sum(axis=1))[:, None] + 1e-9
    return (sym / norm).astype(np.float32), (anti / norm).astype(np.float32)


def _band(details: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm band-pass versions of 64x64 images: each less its Gaussian blur (edges reflected)."""
    out = np.empty(details.shape, dtype=np.float32)
    for k, img in enumerate(details):
        f = img.astype(np.float32)
        f -= cv2.GaussianBlur(f, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT)
        f -= f.mean()
        out[k] = f / (np.linalg.norm(f) + 1e-6)
    return out


def _rescaled(details: np.ndarray, scale: float) -> np.ndarray:
    """64x64 images zoomed about their centre by ``scale`` (edges reflected)."""
    if scale == 1:
        return details
    m = cv2.getRotationMatrix2D(((DETAIL - 1) / 2, (DETAIL - 1) / 2), 0, scale)
    return np.stack([cv2.warpAffine(d, m, (DETAIL, DETAIL), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                     for d in details])


def detail_correlation(details: np.ndarray, i: np.ndarray, j: np.ndarray, mirrored: np.ndarray,
                       max_shift: int = 2, scales: Sequence[float] = (1.0,), batch: int = 2048) -> np.ndarray:
    """Band-pass correlation of images i and j (j mirrored where asked), best over shifts up to ``max_shift``
    pixels (circular cross-correlation through the FFT) and over zooms of j by ``scales``."""
    out = np.full(len(i), -1.0, dtype=np.float32)
    near = np.r_[0:max_shift + 1, DETAIL - max_shift:DETAIL]
    for start in range(0, len(i), batch):
        sl = slice(start, start + batch)
        fa = np.fft.rfft2(_band(details[i[sl]]))
        other = np.where(mirrored[sl, None, None], details[j[sl]][:, :, ::-1], details[j[sl]])
        for scale in scales:
            fb = np.fft.rfft2(_band(_rescaled(other, scale)))
            xc = np.fft.irfft2(fa * np.conj(fb), s=(DETAIL, DETAIL))
            out[sl] = np.maximum(out[sl], xc[:, near][:, :, near].reshape(len(fa), -1).max(axis=1))
    return out


def _mirror_where(thumbs: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Flattened 32x32 thumbnails, mirrored where ``mirrored``."""
    x = thumbs.reshape(len(thumbs), THUMB, THUMB)
    return np.where(mirrored[:, None, None], x[:, :, ::-1], x).reshape(len(thumbs), THUMB * THUMB)


def near_duplicate_pairs(fp: Fingerprints, min_residual: float = 0.70, min_residual_weak: float = 0.45,
                         min_detail: float = 0.75, min_residual_thumb: float = 0.65, min_thumb: float = 0.94,
                         components: int = 64, min_fit_images: int = 500, max_shift: int = 2,
                         scales: Sequence[float] = (1 / 1.03, 1.0, 1.03), max_bits: int = 6, min_corr: float = 0.9,
                         chunk: int = 1024) -> NearPairs:
    """Pairs of distinct images that are copies of one photo (module doc): one pair per two distinct byte
    contents, however many files hold each."""
    known = np.flatnonzero(fp.decoded)
    if len(known) < min_fit_images:
        r, c, m = _phash_pairs(fp, known, max_bits, min_corr)
        s = np.full(len(r), np.nan, np.float32)
        detail = np.full(len(r), np.nan, np.float32)
    else:
        sym, anti = residual_features(fp.thumbs[known], components)
        rows, cols, mirs, scores = [], [], [], []
        for start in range(0, len(known), chunk):
            ss = sym[start:start + chunk] @ sym[start:].T
            aa = anti[start:start + chunk] @ anti[start:].T
            best = ss + np.abs(aa)  # the better of the plain and the mirrored orientation
            r, c = np.nonzero(best >= min_residual_weak)
            keep = c > r
            r, c = r[keep], c[keep]
            rows.append(r + start)
            cols.append(c + start)
            mirs.append(aa[r, c] < 0)
            scores.append(best[r, c])
        r, c, m, s = (known[np.concatenate(rows)], known[np.concatenate(cols)], np.concatenate(mirs),
                      np.concatenate(scores))
        r, c, m, s = _one_per_content(fp, r, c, m, s)
        detail = np.full(len(r), np.nan, np.float32)
        weak = s < min_residual
        detail[weak] = detail_correlation(fp.details, r[weak], c[weak], m[weak], max_shift=max_shift, scales=scales)
        thumb = np.einsum("ij,ij->i", fp.thumbs[r], _mirror_where(fp.thumbs[c], m))
        keep = ~weak | (detail >= min_detail) | ((s >= min_residual_thumb) & (thumb >= min_thumb))
        r, c, m, s, detail = r[keep], c[keep], m[keep], s[keep], detail[keep]
    return NearPairs(r, c, m, s.astype(np.float32), detail)


def _one_per_content(fp: Fingerprints, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop pairs of byte-identical files, and keep one pair per two byte contents (arrays[0], arrays[1] are the
    pair's file indices; every array is filtered alike)."""
    _, content = np.unique(np.array(fp.md5s, dtype=object), return_inverse=True)
    a, b = content[arrays[0]], content[arrays[1]]
    key = np.minimum(a, b).astype(np.int64) * len(fp.md5s) + np.maximum(a, b)
    _, first = np.unique(key, return_index=True)
    first = np.sort(first[a[first] != b[first]])
    return tuple(x[first] for x in arrays)


def _phash_pairs(fp: Fingerprints, known: np.ndarray, max_bits: int,
                 min_corr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The small-set test: pHashes within ``max_bits`` bits and thumbnails correlating at ``min_corr``, either
    as they are or one mirrored (the plain orientation wins a tie)."""
    h, th = fp.hashes[known], fp.thumbs[known]
    rows, cols, mirs = [], [], []
    for mirrored, other, other_th in ((False, h, th), (True, fp.mirror_hashes[known],
                                                      _mirror_where(th, np.ones(len(th), bool)))):
        r, c = np.nonzero(_popcount(h[:, None] ^ other[None, :]) <= max_bits)
        keep = (c > r) & (np.einsum("ij,ij->i", th[r], other_th[c]) >= min_corr)
        rows.append(r[keep])
        cols.append(c[keep])
        mirs.append(np.full(int(keep.sum()), mirrored))
    r, c, m = _one_per_content(fp, known[np.concatenate(rows)], known[np.concatenate(cols)], np.concatenate(mirs))
    return r, c, m


def duplicate_groups(fp: Fingerprints, subjects: Sequence[str] | None = None,
                     pairs: NearPairs | None = None, **thresholds: Any) -> np.ndarray:
    """Group index per image: identical bytes, near duplicates (:func:`near_duplicate_pairs`, computed here unless
    ``pairs`` is given; ``thresholds`` go to it), or the same subject when ``subjects`` is given."""
    n = len(fp.md5s)
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
    for i, digest in enumerate(fp.md5s):
        union(first.setdefault(digest, i), i)
    by_subject: dict[str, int] = {}
    for i, subject in enumerate(subjects or ()):
        union(by_subject.setdefault(subject, i), i)
    if pairs is None:
        pairs = near_duplicate_pairs(fp, **thresholds)
    for a, b in zip(pairs.i.tolist(), pairs.j.tolist(), strict=True):
        union(a, b)
    roots = np.array([find(i) for i in range(n)])
    _, group = np.unique(roots, return_inverse=True)
    return group
