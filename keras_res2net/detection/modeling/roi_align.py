"""Multi-level RoIAlign (mmcv `RoIAlign(aligned=True)`), computed in float32.

Each RoI is pooled from one pyramid level, `floor(4 + log2(sqrt(w * h) / 224))` clipped to
the available levels (FPN paper, eq. 1; mmdetection's `finest_scale=56` is the same rule).
Sampling is pixel-aligned: box corners are scaled to the level and shifted by half a pixel;
each output bin averages `sampling_ratio x sampling_ratio` bilinear samples; a sample more
than one pixel outside the map contributes zero. The same kernel crops ground-truth masks
to mask targets (`crop_masks`).
"""

from __future__ import annotations

import math

from keras import ops


def roi_levels(rois, min_level: int, max_level: int):
    """Pyramid level of each RoI (x1, y1, x2, y2) in image pixels."""
    w = ops.maximum(rois[..., 2] - rois[..., 0], 0.0)
    h = ops.maximum(rois[..., 3] - rois[..., 1], 0.0)
    scale = ops.sqrt(w * h)
    level = ops.floor(4.0 + ops.log(scale / 224.0 + 1e-6) / math.log(2.0))
    return ops.cast(ops.clip(level, min_level, max_level), "int32")


def _axis_samples(start, end, size, output_size: int, sampling_ratio: int):
    """Sample coordinates (R, out * s) along one axis, their two neighbours and weights."""
    bin_size = (end - start) / output_size
    steps = (ops.arange(output_size * sampling_ratio, dtype="float32") + 0.5) / sampling_ratio
    coords = start[:, None] + steps[None, :] * bin_size[:, None]
    size = size[:, None]
    inside = (coords >= -1.0) & (coords <= size)
    coords = ops.maximum(coords, 0.0)
    low = ops.floor(coords)
    at_edge = low >= size - 1.0
    low = ops.where(at_edge, size - 1.0, low)
    high = ops.where(at_edge, size - 1.0, low + 1.0)
    frac = ops.where(at_edge, 0.0, coords - low)
    mask = ops.cast(inside, "float32")
    return (ops.cast(low, "int32"), ops.cast(high, "int32"),
            (1.0 - frac) * mask, frac * mask)


def roi_align_flat(flat_features, offsets, heights, widths, scales, rois,
                   output_size: int, sampling_ratio: int):
    """RoIAlign over maps stored row-major in `flat_features` (T, C).

    RoI `r` reads the `heights[r] x widths[r]` map starting at row `offsets[r]`, with its box
    multiplied by `scales[r]`. Returns (R, output_size, output_size, C) float32.
    """
    flat_features = ops.cast(flat_features, "float32")
    rois = ops.cast(rois, "float32") * scales[:, None] - 0.5
    hf = ops.cast(heights, "float32")
    wf = ops.cast(widths, "float32")
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(rois[:, 1], rois[:, 3], hf, output_size,
                                             sampling_ratio)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(rois[:, 0], rois[:, 2], wf, output_size,
                                             sampling_ratio)
    base = offsets[:, None, None]
    row = widths[:, None, None]
    result = 0.0
    for ys, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xs, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            index = base + ys[:, :, None] * row + xs[:, None, :]
            values = ops.take(flat_features, index, axis=0)  # (R, S, S, C)
            result = result + values * (wy[:, :, None] * wx[:, None, :])[..., None]
    channels = ops.shape(flat_features)[-1]
    result = ops.reshape(result, (-1, output_size, sampling_ratio, output_size,
                                  sampling_ratio, channels))
    return ops.mean(result, axis=(2, 4))


def multilevel_roi_align(features: dict, rois, *, output_size: int, sampling_ratio: int = 2):
    """Pool (B, N, 4) RoIs from `{"P2": ..., "P5": ...}` maps into (B, N, S, S, C) float32."""
    names = sorted(features, key=lambda name: int(name[1:]))
    levels = [int(name[1:]) for name in names]
    batch = ops.shape(rois)[0]
    num_rois = ops.shape(rois)[1]
    flats, sizes = [], []
    for name in names:
        shape = ops.shape(features[name])
        flats.append(ops.reshape(ops.cast(features[name], "float32"),
                                 (shape[0] * shape[1] * shape[2], shape[3])))
        sizes.append((shape[1], shape[2]))
    level = roi_levels(rois, levels[0], levels[-1]) - levels[0]  # (B, N)
    heights = ops.stack([ops.cast(h, "int32") for h, _ in sizes])
    widths = ops.stack([ops.cast(w, "int32") for _, w in sizes])
    level_sizes = heights * widths
    level_starts = ops.cumsum(level_sizes * batch) - level_sizes * batch
    scales = ops.convert_to_tensor([2.0 ** -lv for lv in levels], dtype="float32")
    image = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None], (batch, num_rois))
    level = ops.reshape(level, (-1,))
    image = ops.reshape(image, (-1,))
    offsets = ops.take(level_starts, level) + image * ops.take(level_sizes, level)
    pooled = roi_align_flat(ops.concatenate(flats, axis=0), offsets, ops.take(heights, level),
                            ops.take(widths, level), ops.take(scales, level),
                            ops.reshape(rois, (-1, 4)), output_size, sampling_ratio)
    return ops.reshape(pooled, (batch, num_rois, output_size, output_size, -1))


def crop_masks(masks, boxes, gt_index, *, output_size: int):
    """Mask targets: crop (B, M, H, W) masks by (B, N, 4) boxes of their ground truth.

    `gt_index` (B, N) picks the mask for each box; returns (B, N, S, S) in [0, 1].
    """
    shape = ops.shape(masks)
    batch, num_gt, height, width = shape[0], shape[1], shape[2], shape[3]
    num_boxes = ops.shape(boxes)[1]
    flat = ops.reshape(ops.cast(masks, "float32"), (-1, 1))
    image = ops.arange(batch, dtype="int32")[:, None] * num_gt + ops.cast(gt_index, "int32")
    offsets = ops.reshape(image, (-1,)) * (height * width)
    count = ops.shape(offsets)[0]
    ones = ops.ones((count,), dtype="int32")
    crops = roi_align_flat(flat, offsets, ones * height, ones * width,
                           ops.ones((count,), dtype="float32"), ops.reshape(boxes, (-1, 4)),
                           output_size, 2)
    return ops.reshape(crops, (batch, num_boxes, output_size, output_size))
