"""Multi-level RoIAlign (mmcv `RoIAlign(aligned=True)`), computed in float32.

Each RoI is pooled from one pyramid level, `floor(4 + log2(sqrt(w * h) / 224))` clipped to
the available levels (FPN paper, eq. 1, written as mmdetection's `finest_scale=56` rule).
Sampling is pixel-aligned: box corners are scaled to the level and shifted by half a pixel;
each output bin averages a grid of bilinear samples: `sampling_ratio x sampling_ratio`, or
with `sampling_ratio=0` (every published mmdetection config) `ceil(bin height) x
ceil(bin width)`, different for each RoI; a sample more than one pixel outside the map
contributes zero. The same kernel, adaptive as in mmdetection, crops ground-truth masks to
mask targets (`crop_masks`).
"""

from __future__ import annotations

import math

from keras import ops

FINEST_SCALE = 56.0  # mmdetection's SingleRoIExtractor: RoIs under 112 px go to P2


def roi_levels(rois, min_level: int, max_level: int):
    """Pyramid level of each RoI (x1, y1, x2, y2) in image pixels (mmdetection's
    `map_roi_levels`: `floor(log2(sqrt(w * h) / 56 + 1e-6))` levels above P2, clipped)."""
    w = ops.maximum(rois[..., 2] - rois[..., 0], 0.0)
    h = ops.maximum(rois[..., 3] - rois[..., 1], 0.0)
    scale = ops.sqrt(w * h)
    level = 2.0 + ops.floor(ops.log(scale / FINEST_SCALE + 1e-6) / math.log(2.0))
    return ops.cast(ops.clip(level, min_level, max_level), "int32")


def _axis_weights(coords, size):
    """mmcv's bilinear rule along one axis for sample `coords` in a map of `size` pixels.

    Returns the two neighbour indices and their weights; a sample more than one pixel
    outside the map gets zero weights, one within a pixel of the border is clamped to it.
    """
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


def _axis_samples(start, end, size, output_size: int, sampling_ratio: int):
    """Sample coordinates (R, out * s) along one axis, their two neighbours and weights."""
    bin_size = (end - start) / output_size
    steps = (ops.arange(output_size * sampling_ratio, dtype="float32") + 0.5) / sampling_ratio
    coords = start[:, None] + steps[None, :] * bin_size[:, None]
    return _axis_weights(coords, size[:, None])


def _fixed_grid(flat_features, offsets, widths, hf, wf, rois, output_size: int,
                sampling_ratio: int):
    """`sampling_ratio x sampling_ratio` samples in every bin: separable, all static shapes."""
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


SAMPLE_CHUNK = 65536  # samples interpolated at once by the adaptive RoIAlign


def _adaptive_grid(flat_features, offsets, widths, hf, wf, rois, output_size: int,
                   grid_size: int):
    """mmcv's `sampling_ratio=0`: each RoI's bins take `ceil(roi size / grid_size)` samples
    per axis (times `grid_size // output_size`, see `roi_align_flat`).

    The sample count differs per RoI, so the samples of all RoIs are laid out as one ragged
    list (its length known only at run time) and summed into their bins with a segment sum:
    work proportional to the samples taken, as in mmcv's kernel. The list is interpolated
    `SAMPLE_CHUNK` samples at a time in a loop, so memory stays bounded (a full-size R2-101
    batch of 2000 RoIs takes millions of samples of 256 channels); a list shorter than that
    is one chunk of its own length, not padded to it (the synthetic HTC experiment's training
    step at 96 px took 1.24 s with the padding, 0.85 s without, on 2 CPU cores).
    """
    factor = grid_size // output_size
    num_rois = ops.shape(rois)[0]
    bins = output_size * output_size
    num_bins = num_rois * bins
    channels = ops.shape(flat_features)[-1]
    roi_h = rois[:, 3] - rois[:, 1]
    roi_w = rois[:, 2] - rois[:, 0]
    n_y = ops.cast(ops.maximum(ops.ceil(roi_h / grid_size), 0.0), "int32") * factor
    n_x = ops.cast(ops.maximum(ops.ceil(roi_w / grid_size), 0.0), "int32") * factor
    counts = ops.reshape(ops.broadcast_to((n_y * n_x)[:, None], (num_rois, bins)), (-1,))
    segments = ops.repeat(ops.arange(num_bins, dtype="int32"), counts, axis=0)
    starts = ops.cumsum(counts) - counts
    total = ops.shape(segments)[0]
    weights = 1.0 / ops.cast(ops.maximum(n_y * n_x, 1), "float32")
    chunk = ops.minimum(SAMPLE_CHUNK, ops.maximum(total, 1))

    def chunk_sum(first):
        """Interpolate samples `first .. first + chunk` and sum them into their bins."""
        position = first + ops.arange(chunk, dtype="int32")
        present = position < total
        position = ops.minimum(position, ops.maximum(total - 1, 0))
        segment = ops.take(segments, position)
        local = position - ops.take(starts, segment)
        roi = segment // bins
        by = ops.cast((segment % bins) // output_size, "float32")
        bx = ops.cast(segment % output_size, "float32")
        ny, nx = ops.take(n_y, roi), ops.take(n_x, roi)
        iy = ops.cast(local // ops.maximum(nx, 1), "float32")
        ix = ops.cast(local % ops.maximum(nx, 1), "float32")
        bin_h = ops.take(roi_h, roi) / output_size
        bin_w = ops.take(roi_w, roi) / output_size
        y = ops.take(rois[:, 1], roi) + by * bin_h + (iy + 0.5) * bin_h / ops.cast(ny, "float32")
        x = ops.take(rois[:, 0], roi) + bx * bin_w + (ix + 0.5) * bin_w / ops.cast(nx, "float32")
        y_lo, y_hi, wy_lo, wy_hi = _axis_weights(y, ops.take(hf, roi))
        x_lo, x_hi, wx_lo, wx_hi = _axis_weights(x, ops.take(wf, roi))
        base = ops.take(offsets, roi)
        row = ops.take(widths, roi)
        weight = ops.take(weights, roi) * ops.cast(present, "float32")
        values = 0.0
        for ys, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
            for xs, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
                corner = ops.take(flat_features, base + ys * row + xs, axis=0)  # (chunk, C)
                values = values + corner * (wy * wx * weight)[:, None]
        return ops.segment_sum(values, segment, num_segments=num_bins)

    def body(first, pooled):
        return first + chunk, pooled + chunk_sum(first)

    _, pooled = ops.while_loop(lambda first, _: first < total, body,
                               (ops.convert_to_tensor(0, "int32"),
                                ops.zeros((num_bins, channels), "float32")))
    return ops.reshape(pooled, (-1, output_size, output_size, channels))


def roi_align_flat(flat_features, offsets, heights, widths, scales, rois,
                   output_size: int, sampling_ratio: int, adaptive_grid: int | None = None):
    """RoIAlign over maps stored row-major in `flat_features` (T, C).

    RoI `r` reads the `heights[r] x widths[r]` map starting at row `offsets[r]`, with its box
    multiplied by `scales[r]`. `sampling_ratio > 0` takes a fixed grid of samples per bin;
    0 is mmcv's adaptive count, `ceil(roi size / output_size)` per axis. `adaptive_grid`
    (a multiple of `output_size`) counts as if pooling at that size and averaging down, which
    is how HTC pools its semantic map at 14x14 and averages to 7x7 for the box head.
    Returns (R, output_size, output_size, C) float32.
    """
    flat_features = ops.cast(flat_features, "float32")
    rois = ops.cast(rois, "float32") * scales[:, None] - 0.5
    hf = ops.cast(heights, "float32")
    wf = ops.cast(widths, "float32")
    if sampling_ratio > 0:
        return _fixed_grid(flat_features, offsets, widths, hf, wf, rois, output_size,
                           sampling_ratio)
    grid = adaptive_grid or output_size
    if grid % output_size:
        raise ValueError(f"adaptive_grid {grid} must be a multiple of output_size "
                         f"{output_size}.")
    return _adaptive_grid(flat_features, offsets, widths, hf, wf, rois, output_size, grid)


def multilevel_roi_align(features: dict, rois, *, output_size: int, sampling_ratio: int = 0,
                         adaptive_grid: int | None = None):
    """Pool (B, N, 4) RoIs from `{"P2": ..., "P5": ...}` maps into (B, N, S, S, C) float32.

    `sampling_ratio` and `adaptive_grid` as in `roi_align_flat` (0: mmcv's adaptive count)."""
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
                            ops.reshape(rois, (-1, 4)), output_size, sampling_ratio,
                            adaptive_grid)
    return ops.reshape(pooled, (batch, num_rois, output_size, output_size, -1))


def crop_masks(masks, boxes, gt_index, *, output_size: int, sampling_ratio: int = 0):
    """Mask targets: crop (B, M, H, W) masks by (B, N, 4) boxes of their ground truth.

    `gt_index` (B, N) picks the mask for each box; returns (B, N, S, S) in [0, 1]. The crop
    is mmdetection's `BitmapMasks.crop_and_resize`: RoIAlign with `aligned=True` and
    `sampling_ratio=0` (adaptive samples per bin); N > 0 takes a fixed N x N grid.
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
                           output_size, sampling_ratio)
    return ops.reshape(crops, (batch, num_boxes, output_size, output_size))


CROP_PAD = 2  # zero pixels around each mask crop: samples past its box read 0 (Model Garden)


def crop_box_masks(mask_crops, crop_boxes, rois, gt_index, *, output_size: int,
                   sampling_ratio: int = 2):
    """Mask targets from per-instance crops: RoIAlign of each RoI's ground-truth crop.

    `mask_crops` (B, M, S, S) holds ground truth m's mask resampled over its box
    `crop_boxes[b, m]` (image pixels); RoI (B, N, 4) `rois` with `gt_index` (B, N) is mapped
    into its crop's frame, `(x - x1) * S / (x2 - x1)`, and pooled there, as `crop_masks`
    pools a full-image mask (the pipeline carries crops, see `data.instance_masks`). Model
    Garden's `crop_mask_in_target_box`, with this module's pixel-aligned RoIAlign.
    Returns (B, N, output_size, output_size) in [0, 1].
    """
    shape = ops.shape(mask_crops)
    batch, num_gt, size = shape[0], shape[1], shape[2]
    side = size + 2 * CROP_PAD
    padded = ops.pad(ops.cast(mask_crops, "float32"),
                     [[0, 0], [0, 0], [CROP_PAD, CROP_PAD], [CROP_PAD, CROP_PAD]])
    gt_index = ops.cast(gt_index, "int32")
    boxes = ops.take_along_axis(ops.cast(crop_boxes, "float32"), gt_index[..., None], axis=1)
    rois = ops.cast(rois, "float32")
    scale_x = ops.cast(size, "float32") / ops.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    scale_y = ops.cast(size, "float32") / ops.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    local = ops.stack([(rois[..., 0] - boxes[..., 0]) * scale_x,
                       (rois[..., 1] - boxes[..., 1]) * scale_y,
                       (rois[..., 2] - boxes[..., 0]) * scale_x,
                       (rois[..., 3] - boxes[..., 1]) * scale_y], axis=-1) + CROP_PAD
    image = ops.arange(batch, dtype="int32")[:, None] * num_gt + gt_index
    offsets = ops.reshape(image, (-1,)) * (side * side)
    count = ops.shape(offsets)[0]
    ones = ops.ones((count,), dtype="int32")
    crops = roi_align_flat(ops.reshape(padded, (-1, 1)), offsets, ones * side, ones * side,
                           ops.ones((count,), dtype="float32"), ops.reshape(local, (-1, 4)),
                           output_size, sampling_ratio)
    return ops.reshape(crops, (batch, ops.shape(rois)[1], output_size, output_size))
