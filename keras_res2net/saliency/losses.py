"""DSS's deeply supervised loss, with an optional soft-IoU term.

DSS (`train_resnet.prototxt`) puts a sigmoid cross-entropy loss of weight 1 on each of its
five side maps and on the fused map, each at the input resolution; `dss_loss` is their sum,
each term the mean over the batch's pixels. `iou_weight > 0` adds, per map, that weight
times the soft IoU loss `1 - sum(p * y) / sum(p + y - p * y)` per image (the "BCE + IoU" of
later SOD networks: BASNet, F3Net), off by default so the loss is DSS's.
"""

from __future__ import annotations

import tensorflow as tf

from keras_res2net.saliency.model import OUTPUTS


def soft_iou_loss(masks: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1 - soft IoU per image (N,), from logits (N, H, W, 1) and masks in [0, 1]."""
    probabilities = tf.sigmoid(logits)
    inter = tf.reduce_sum(probabilities * masks, axis=[1, 2, 3])
    union = tf.reduce_sum(probabilities + masks, axis=[1, 2, 3]) - inter
    return 1.0 - (inter + 1.0) / (union + 1.0)


def per_image_bce(masks: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean sigmoid cross-entropy per image (N,)."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(masks, logits), axis=[1, 2, 3])


def dss_loss(masks: tf.Tensor, outputs: dict, iou_weight: float = 0.0) -> dict:
    """Per-image loss terms of every map: {"fuse": (N,), "side2": (N,), ...}; their sum over
    maps, averaged over images, is the training loss."""
    masks = tf.cast(masks, tf.float32)
    terms = {}
    for name in OUTPUTS:
        logits = tf.cast(outputs[name], tf.float32)
        term = per_image_bce(masks, logits)
        if iou_weight:
            term += iou_weight * soft_iou_loss(masks, logits)
        terms[name] = term
    return terms
