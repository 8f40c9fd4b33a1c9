"""mmdetection 3.3's training-data rules, as small functions the input pipeline calls.

- `annotation_box`: which COCO annotations `CocoDataset.parse_data_info` keeps (a box must
  overlap its image, have a positive area and be at least 1 px wide and tall).
- `keep_training_image`: `filter_cfg=dict(filter_empty_gt=True, min_size=32)`: images with
  no annotation, or whose shorter side is under 32 px, are left out of training.
- `resize_nearest`: OpenCV's `INTER_NEAREST` (what mmcv's `imresize(..., "nearest")` runs on
  masks and semantic maps): output pixel `d` takes input pixel `floor(d * in / out)`, not the
  half-pixel-centre rule of `tf.image.resize(method="nearest")`.
- `clip_boxes`: mmdetection's `Resize(clip_object_border=True)`: boxes clipped to the
  resized image.
"""

from __future__ import annotations

import math

import tensorflow as tf

MIN_IMAGE_SIZE = 32  # mmdetection's filter_cfg min_size for the COCO detectors


def annotation_box(bbox, image_width: float, image_height: float, area: float | None = None):
    """The `[x1, y1, x2, y2]` box of a COCO `[x, y, w, h]` bbox, or None when mmdetection
    drops the annotation: no overlap with the image, `area <= 0`, `w < 1` or `h < 1`.
    Partly outside boxes are kept as they are (the resize clips them)."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"bbox {list(bbox)!r} is not finite")
    inter_w = max(0.0, min(x + w, image_width) - max(x, 0.0))
    inter_h = max(0.0, min(y + h, image_height) - max(y, 0.0))
    if inter_w * inter_h == 0 or w < 1 or h < 1 or (area is not None and area <= 0):
        return None
    return [x, y, x + w, y + h]


def keep_training_image(num_annotations: int, width: int, height: int, *,
                        filter_empty_gt: bool = True, min_size: int = MIN_IMAGE_SIZE) -> bool:
    """mmdetection's `CocoDataset.filter_data`: whether an image takes part in training.

    `num_annotations` counts every annotation of the image in the JSON (crowd ones and ones
    `annotation_box` drops included), as mmdetection's category-to-image map does."""
    if filter_empty_gt and num_annotations == 0:
        return False
    return min(width, height) >= min_size


def filter_training_examples(data, filter_empty_gt: bool = True,
                             min_size: int = MIN_IMAGE_SIZE):
    """`keep_training_image` on a tf.data set of raw examples (TFDS, TFRecords), which no
    longer hold the crowd annotations: an image with crowd objects only is left out too
    (mmdetection keeps it, with no objects to learn)."""
    def keep(example):
        shape = tf.shape(example["image"])
        kept = tf.minimum(shape[0], shape[1]) >= min_size
        if filter_empty_gt:
            kept = kept & (tf.size(example["classes"]) > 0)
        return kept
    return data.filter(keep)


def _nearest_indices(in_size, out_size):
    """OpenCV's source index of each output index: `min(floor(d / (out / in)), in - 1)`,
    computed in float64 as `cv::resize` does (`ifx = 1 / inv_scale`)."""
    in_f = tf.cast(in_size, tf.float64)
    inverse = 1.0 / (tf.cast(out_size, tf.float64) / in_f)
    index = tf.floor(tf.cast(tf.range(out_size), tf.float64) * inverse)
    return tf.cast(tf.minimum(index, in_f - 1.0), tf.int32)


def resize_nearest(image, size):
    """OpenCV-style nearest resize of an (H, W) or (H, W, C) tensor to `size` (height, width)."""
    image = tf.gather(image, _nearest_indices(tf.shape(image)[0], size[0]), axis=0)
    return tf.gather(image, _nearest_indices(tf.shape(image)[1], size[1]), axis=1)


def clip_boxes(boxes, size):
    """Clip (N, 4) xyxy boxes to an image of `size` (height, width)."""
    size = tf.cast(size, boxes.dtype)
    limits = tf.stack([size[1], size[0], size[1], size[0]])
    return tf.clip_by_value(boxes, tf.zeros_like(limits), limits)
