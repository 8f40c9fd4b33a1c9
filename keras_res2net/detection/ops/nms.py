"""Non-maximum suppression through `tf.image.combined_non_max_suppression`.

The one TensorFlow-specific op of the model: Keras 3 has no NMS of its own, and the TF
kernel is batched, per class and padded to a fixed size, which is what both the RPN
(one "class" per pyramid level, as mmdetection's batched NMS over level ids) and the final
per-class detection step need.
"""

from __future__ import annotations

import tensorflow as tf


def per_class_nms(boxes, scores, *, iou_threshold: float, score_threshold: float,
                  max_per_class: int, max_total: int):
    """Boxes (B, N, K or 1, 4) and scores (B, N, K) -> padded detections.

    Returns `(boxes (B, T, 4), scores (B, T), classes (B, T) int32 in 0..K-1, valid (B,))`.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    result = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_per_class, max_total_size=max_total,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False,
        clip_boxes=False)
    return (result.nmsed_boxes, result.nmsed_scores, tf.cast(result.nmsed_classes, tf.int32),
            result.valid_detections)
