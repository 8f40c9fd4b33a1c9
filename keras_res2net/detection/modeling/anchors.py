"""Anchor generation (mmdetection's AnchorGenerator, `center_offset=0`).

At stride `s` the base anchors are centred on `(0, 0)` with side `s * scale` for each ratio
(`h / w = ratio`, area preserved); they are then shifted to every feature-map cell
`(x * s, y * s)`, rows outer, columns next, anchors innermost: the order in which the RPN
head's NHWC outputs flatten.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def base_anchors(stride: int, scales, ratios) -> np.ndarray:
    """The (len(ratios) * len(scales), 4) anchors of one level centred on the origin."""
    ratios = np.asarray(ratios, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], axis=-1).astype(np.float32)


def level_anchors(height, width, stride: int, scales, ratios):
    """All anchors of a `height x width` feature map at `stride`, shape (H * W * A, 4)."""
    base = ops.convert_to_tensor(base_anchors(stride, scales, ratios))
    xs = ops.cast(ops.arange(width), "float32") * stride
    ys = ops.cast(ops.arange(height), "float32") * stride
    yy, xx = ops.meshgrid(ys, xs, indexing="ij")
    shifts = ops.stack([xx, yy, xx, yy], axis=-1)
    shifts = ops.reshape(shifts, (-1, 1, 4))
    return ops.reshape(shifts + base[None], (-1, 4))


def multilevel_anchors(feature_shapes: dict, strides: dict, scales, ratios) -> dict:
    """`{level: anchors}` for `{level: (height, width)}` feature shapes."""
    return {level: level_anchors(h, w, strides[level], scales, ratios)
            for level, (h, w) in feature_shapes.items()}
