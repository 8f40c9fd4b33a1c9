"""Box arithmetic in `[x1, y1, x2, y2]` pixel coordinates (mmdetection v2 convention, no +1).

Encoding is mmdetection's `DeltaXYWHBBoxCoder`: centre offsets relative to the reference box
size and log size ratios, divided by `stds`. Everything is `keras.ops`, batched over any
leading axes.
"""

from __future__ import annotations

import math

from keras import ops

# Exp of a delta is clamped so a wild prediction cannot overflow (mmdetection's wh_ratio_clip).
_MAX_LOG_RATIO = abs(math.log(16.0 / 1000.0))


def _centres(boxes):
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode(boxes, anchors, stds=(1.0, 1.0, 1.0, 1.0)):
    """Deltas `(dx, dy, dw, dh) / stds` that turn `anchors` into `boxes`."""
    gx, gy, gw, gh = _centres(boxes)
    ax, ay, aw, ah = _centres(anchors)
    aw = ops.maximum(aw, 1e-6)
    ah = ops.maximum(ah, 1e-6)
    deltas = ops.stack([(gx - ax) / aw, (gy - ay) / ah,
                        ops.log(ops.maximum(gw, 1e-6) / aw),
                        ops.log(ops.maximum(gh, 1e-6) / ah)], axis=-1)
    return deltas / ops.convert_to_tensor(stds, dtype=deltas.dtype)


def decode(deltas, anchors, stds=(1.0, 1.0, 1.0, 1.0)):
    """Inverse of `encode`; log size ratios are clipped to avoid overflow."""
    deltas = deltas * ops.convert_to_tensor(stds, dtype=deltas.dtype)
    ax, ay, aw, ah = _centres(anchors)
    dw = ops.clip(deltas[..., 2], -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    dh = ops.clip(deltas[..., 3], -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    cx = ax + deltas[..., 0] * aw
    cy = ay + deltas[..., 1] * ah
    w = aw * ops.exp(dw)
    h = ah * ops.exp(dh)
    return ops.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def clip(boxes, height, width):
    """Clip boxes to the image `[0, width] x [0, height]` (scalars, or tensors that
    broadcast against the boxes' leading axes)."""
    x1 = ops.minimum(ops.maximum(boxes[..., 0], 0.0), width)
    y1 = ops.minimum(ops.maximum(boxes[..., 1], 0.0), height)
    x2 = ops.minimum(ops.maximum(boxes[..., 2], 0.0), width)
    y2 = ops.minimum(ops.maximum(boxes[..., 3], 0.0), height)
    return ops.stack([x1, y1, x2, y2], axis=-1)


def clip_to_images(boxes, image_sizes):
    """Clip (B, ...) boxes to each image's own (height, width) in `image_sizes` (B, 2):
    mmdetection's `max_shape=img_shape`, the resized image without the batch padding."""
    extra = (1,) * (len(boxes.shape) - 2)
    sizes = ops.cast(image_sizes, boxes.dtype)
    height = ops.reshape(sizes[:, 0], (-1, *extra))
    width = ops.reshape(sizes[:, 1], (-1, *extra))
    return clip(boxes, height, width)


def area(boxes):
    return ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * ops.maximum(
        boxes[..., 3] - boxes[..., 1], 0.0)


def pairwise_iou(boxes_a, boxes_b):
    """IoU of every box in `boxes_a` (..., N, 4) with every box in `boxes_b` (..., M, 4).

    Written here rather than with `keras.utils.bounding_boxes.compute_iou`, which treats
    the padded (all -1 or zero) ground-truth rows this pipeline uses differently per version.
    """
    a = ops.expand_dims(boxes_a, -2)
    b = ops.expand_dims(boxes_b, -3)
    iw = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    union = area(a) + area(b) - inter
    return inter / ops.maximum(union, 1e-6)
