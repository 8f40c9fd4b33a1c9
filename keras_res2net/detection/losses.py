"""Losses of the two stages, with mmdetection's normalisations.

RPN: sigmoid cross-entropy over sampled anchors and L1 on positive deltas, both divided by
mmdetection's `avg_factor`, the sum over images of `max(positives, 1) + max(negatives, 1)`.
Box head: softmax cross-entropy over sampled RoIs and L1 on the positive RoIs' target-class
deltas, both divided by the number of sampled RoIs. Mask:
per-pixel sigmoid cross-entropy of the target-class mask, averaged over positive RoIs.
`smooth_l1_beta > 0` turns the box L1 into smooth L1 (the cascades' choice).
Semantic (HTC): per-pixel softmax cross-entropy averaged over all pixels, ignored ones
counting zero (mmdetection's `CrossEntropyLoss(ignore_index=255)`, `avg_non_ignore=False`).
"""

from __future__ import annotations

from keras import ops


def _safe_count(mask):
    return ops.maximum(ops.sum(ops.cast(mask, "float32")), 1.0)


def _per_image_count(mask):
    """(B,) count of each image's entries of a (B, N) mask, at least 1 (mmdetection's
    `SamplingResult.num_pos` / `num_neg`)."""
    return ops.maximum(ops.sum(ops.cast(mask, "float32"), axis=1), 1.0)


def box_distance(deltas, target_deltas, smooth_l1_beta: float = 0.0):
    """Per-box sum over the 4 coordinates of L1, or smooth L1 when `smooth_l1_beta > 0`."""
    diff = ops.abs(deltas - target_deltas)
    if smooth_l1_beta > 0:
        diff = ops.where(diff < smooth_l1_beta, 0.5 * diff * diff / smooth_l1_beta,
                         diff - 0.5 * smooth_l1_beta)
    return ops.sum(diff, axis=-1)


def rpn_losses(logits, deltas, target_deltas, positives, negatives,
               smooth_l1_beta: float = 0.0):
    """`(objectness, box)` losses; inputs flattened over levels: (B, A) and (B, A, 4)."""
    sampled = positives | negatives
    count = ops.sum(_per_image_count(positives) + _per_image_count(negatives))
    labels = ops.cast(positives, "float32")
    bce = ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
    cls_loss = ops.sum(bce * ops.cast(sampled, "float32")) / count
    distance = box_distance(deltas, target_deltas, smooth_l1_beta)
    box_loss = ops.sum(distance * labels) / count
    return cls_loss, box_loss


def box_head_losses(logits, deltas, target_classes, target_deltas, positives, sampled,
                    smooth_l1_beta: float = 0.0):
    """`(classification, box)` losses for (B, N, K+1) logits and (B, N, K or 1, 4) deltas.

    `target_classes` is 0 for background, 1..K for objects; class-agnostic deltas (one box
    per RoI) are compared as they are.
    """
    count = _safe_count(sampled)
    log_probs = ops.log_softmax(logits, axis=-1)
    num_classes = ops.shape(logits)[-1]
    nll = -ops.sum(log_probs * ops.one_hot(target_classes, num_classes), axis=-1)
    cls_loss = ops.sum(nll * ops.cast(sampled, "float32")) / count
    if deltas.shape[2] == 1:
        class_deltas = deltas[:, :, 0]
    else:
        fg = ops.maximum(target_classes - 1, 0)
        class_deltas = ops.sum(deltas * ops.one_hot(fg, ops.shape(deltas)[2])[..., None],
                               axis=2)
    distance = box_distance(class_deltas, target_deltas, smooth_l1_beta)
    box_loss = ops.sum(distance * ops.cast(positives, "float32")) / count
    return cls_loss, box_loss


def mask_loss(mask_logits, target_masks, positives):
    """Mean per-pixel BCE of (B, P, S, S) target-class logits over positive RoIs."""
    bce = (ops.maximum(mask_logits, 0.0) - mask_logits * target_masks
           + ops.log1p(ops.exp(-ops.abs(mask_logits))))
    per_roi = ops.mean(bce, axis=(2, 3))
    return ops.sum(per_roi * ops.cast(positives, "float32")) / _safe_count(positives)


def semantic_loss(logits, labels, ignore_index: int = 255, avg_non_ignore: bool = False):
    """Mean softmax cross-entropy of (B, h, w, K) logits, ignored pixels counting zero.

    The mean is over all pixels (mmdetection's default), or over the non-ignored ones with
    `avg_non_ignore=True` (mmdetection's option of that name).

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
    total = -ops.sum(picked[..., 0] * ops.cast(valid, "float32"))
    if avg_non_ignore:
        return total / _safe_count(valid)
    return total / ops.cast(ops.size(labels), "float32")
