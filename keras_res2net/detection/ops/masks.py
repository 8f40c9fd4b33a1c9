"""Paste box-relative mask probabilities back into the image (mmdetection's `_do_paste_mask`).

A (S, S) mask covering box (x1, y1, x2, y2) is sampled at every image pixel centre with
`grid_sample(align_corners=False)` semantics: pixel x maps to mask coordinate
`(x + 0.5 - x1) / (x2 - x1) * S - 0.5`, bilinear, zero outside the mask. Bilinear sampling is
separable, so the paste is two small matrix products. NumPy: post-processing runs on host.
"""

from __future__ import annotations

import numpy as np


def _interpolation_matrix(start: float, end: float, pixels: int, size: int) -> np.ndarray:
    """(pixels, size) weights that sample a length-`size` signal at every pixel centre."""
    coords = (np.arange(pixels, dtype=np.float64) + 0.5 - start) / max(end - start, 1e-6)
    coords = coords * size - 0.5
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    weights = np.zeros((pixels, size), dtype=np.float64)
    rows = np.arange(pixels)
    for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < size)
        weights[rows[inside], index[inside]] += weight[inside]
    return weights


def paste_mask(mask: np.ndarray, box, height: int, width: int,
               threshold: float | None = 0.5) -> np.ndarray:
    """Paste one (S, S) mask at `box` into an (height, width) image.

    Returns probabilities (threshold=None) or a uint8 binary mask (probability >= threshold).
    """
    mask = np.asarray(mask, dtype=np.float64)
    x1, y1, x2, y2 = (float(v) for v in box)
    wy = _interpolation_matrix(y1, y2, height, mask.shape[0])
    wx = _interpolation_matrix(x1, x2, width, mask.shape[1])
    pasted = wy @ mask @ wx.T
    if threshold is None:
        return pasted.astype(np.float32)
    return (pasted >= threshold).astype(np.uint8)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float | None = 0.5) -> np.ndarray:
    """`paste_mask` for (N, S, S) masks and (N, 4) boxes -> (N, height, width)."""
    dtype = np.float32 if threshold is None else np.uint8
    out = np.zeros((len(masks), height, width), dtype=dtype)
    for index, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
        out[index] = paste_mask(mask, box, height, width, threshold)
    return out
