"""Losses of the two stages, with mmdetection's normalisations.

RPN: sigmoid cross-entropy over sampled anchors and L1 on positive deltas, both divided by
the number of sampled anchors. Box head: softmax cross-entropy over sampled RoIs and L1 on
the positive RoIs' target-class deltas, both divided by the number of sampled RoIs. Mask:
per-pixel sigmoid cross-entropy of the target-class mask, averaged over positive RoIs.
Semantic (HTC): per-pixel softmax cross-entropy averaged over the pixels not ignored.
"""

from __future__ import annotations

from keras import ops


def _safe_count(mask):
    return ops.maximum(ops.sum(ops.cast(mask, "float32")), 1.0)


def rpn_losses(logits, deltas, target_deltas, positives, negatives):
    """`(objectness, box)` losses; inputs flattened over levels: (B, A) and (B, A, 4)."""
    sampled = positives | negatives
    count = _safe_count(sampled)
    labels = ops.cast(positives, "float32")
    bce = ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
    cls_loss = ops.sum(bce * ops.cast(sampled, "float32")) / count
    l1 = ops.sum(ops.abs(deltas - target_deltas), axis=-1)
    box_loss = ops.sum(l1 * labels) / count
    return cls_loss, box_loss


def box_head_losses(logits, deltas, target_classes, target_deltas, positives, sampled):
    """`(classification, box)` losses for (B, N, K+1) logits and (B, N, K, 4) deltas.

    `target_classes` is 0 for background, 1..K for objects.
    """
    count = _safe_count(sampled)
    log_probs = ops.log_softmax(logits, axis=-1)
    num_classes = ops.shape(logits)[-1]
    nll = -ops.sum(log_probs * ops.one_hot(target_classes, num_classes), axis=-1)
    cls_loss = ops.sum(nll * ops.cast(sampled, "float32")) / count
    fg = ops.maximum(target_classes - 1, 0)
    class_deltas = ops.sum(deltas * ops.one_hot(fg, ops.shape(deltas)[2])[..., None], axis=2)
    l1 = ops.sum(ops.abs(class_deltas - target_deltas), axis=-1)
    box_loss = ops.sum(l1 * ops.cast(positives, "float32")) / count
    return cls_loss, box_loss


def mask_loss(mask_logits, target_masks, positives):
    """Mean per-pixel BCE of (B, P, S, S) target-class logits over positive RoIs."""
    bce = (ops.maximum(mask_logits, 0.0) - mask_logits * target_masks
           + ops.log1p(ops.exp(-ops.abs(mask_logits))))
    per_roi = ops.mean(bce, axis=(2, 3))
    return ops.sum(per_roi * ops.cast(positives, "float32")) / _safe_count(positives)


def semantic_loss(logits, labels, ignore_index: int = 255):
    """Mean softmax cross-entropy of (B, h, w, K) logits over the non-ignored pixels.

    `labels` (B, H, W) are at padded-image resolution (classes 0..K-1 or `ignore_index`);
    pixel (i, j) of the logits takes label (floor(i * H / h), floor(j * W / w)), as
    mmdetection's `F.interpolate(labels, scale_factor=1/8, mode="nearest")`: with H = 8h
    that is `labels[:, ::8, ::8]`. No valid pixel gives 0 (not NaN).
    """
    logits = ops.cast(logits, "float32")
    height, width = ops.shape(logits)[1], ops.shape(logits)[2]
    rows = ops.arange(height) * ops.shape(labels)[1] // height
    cols = ops.arange(width) * ops.shape(labels)[2] // width
    labels = ops.cast(ops.take(ops.take(labels, rows, axis=1), cols, axis=2), "int32")
    valid = labels != ignore_index
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, ops.where(valid, labels, 0)[..., None], axis=-1)
    return -ops.sum(picked[..., 0] * ops.cast(valid, "float32")) / _safe_count(valid)
