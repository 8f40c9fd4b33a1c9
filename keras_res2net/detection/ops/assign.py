"""Max-IoU assignment of ground truth to anchors or proposals (mmdetection's MaxIoUAssigner).

Labels: 1 positive, 0 negative, -1 ignored. A box is negative when its best IoU is below
`neg_iou`, positive when at or above `pos_iou`; with `low_quality_matches`, every box whose
IoU equals a ground truth's best IoU (and at least `min_pos_iou`) is made positive for that
ground truth, so each object gets an anchor even when none reaches `pos_iou`.
Ground-truth rows with `gt_valid == False` (padding) are never matched. Boxes with
`box_valid == False` (mmdetection's anchors outside `inside_flags`) take no part: they are
labelled -1 and never become an object's best (low-quality) match.
"""

from __future__ import annotations

from keras import ops

from keras_res2net.detection.ops.boxes import pairwise_iou


def assign(boxes, gt_boxes, gt_valid, *, pos_iou: float, neg_iou: float,
           min_pos_iou: float = 0.0, low_quality_matches: bool = False, box_valid=None):
    """Match `boxes` (B, N, 4) to `gt_boxes` (B, M, 4); `box_valid` (B, N), if given,
    leaves boxes out.

    Returns `(labels, matched_gt, max_iou)`, each (B, N): labels in {1, 0, -1}, the index of
    the matched ground truth (meaningful where labels == 1) and the best IoU.
    """
    valid = ops.expand_dims(ops.cast(gt_valid, "bool"), 1)  # (B, 1, M)
    # Padding columns read as IoU 0: with no ground truth every box is a negative.
    iou = ops.where(valid, pairwise_iou(boxes, gt_boxes), 0.0)  # (B, N, M)
    if box_valid is not None:  # below any real IoU: never a ground truth's best
        iou = ops.where(ops.expand_dims(ops.cast(box_valid, "bool"), -1), iou, -1.0)
    max_iou = ops.max(iou, axis=-1)
    matched = ops.argmax(iou, axis=-1)
    labels = ops.full_like(max_iou, -1, dtype="int32")
    labels = ops.where(max_iou < neg_iou, 0, labels)
    labels = ops.where(max_iou >= pos_iou, 1, labels)
    if low_quality_matches:
        gt_best = ops.max(iou, axis=1, keepdims=True)  # (B, 1, M)
        hits = (iou == gt_best) & (gt_best >= min_pos_iou) & valid & (gt_best > 0.0)
        # The reference loops over ground truths, so the last one wins a tie.
        order = ops.arange(1, ops.shape(iou)[-1] + 1, dtype="int32")
        last_hit = ops.argmax(ops.where(hits, order, 0), axis=-1)
        has_hit = ops.any(hits, axis=-1)
        matched = ops.where(has_hit, last_hit, matched)
        labels = ops.where(has_hit, 1, labels)
    if box_valid is not None:
        labels = ops.where(ops.cast(box_valid, "bool"), labels, -1)
    return labels, ops.cast(matched, "int32"), max_iou
