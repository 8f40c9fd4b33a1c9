"""Second-stage training targets: assign RoIs to ground truth, sample them, encode boxes.

One function serves Mask R-CNN's single box stage and every cascade stage (each with its own
IoU threshold and box stds): the ground-truth boxes are appended to the candidate RoIs
(mmdetection's `add_gt_as_proposals`), candidates are matched by max IoU with no
low-quality matches, and a fixed number is sampled, positives first. `is_gt` marks the
sampled RoIs that are ground-truth boxes, which a cascade drops before the next stage.
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_res2net.detection.ops import boxes as box_ops
from keras_res2net.detection.ops.assign import assign
from keras_res2net.detection.ops.sampling import sample_indices


class RoiSample(NamedTuple):
    """Sampled RoIs (B, S, 4) and their per-RoI targets, each (B, S) unless noted."""

    rois: object
    matched: object  # index of the matched ground truth (meaningful where is_pos)
    classes: object  # 0 background, 1..K objects
    box_targets: object  # (B, S, 4) deltas of the matched ground truth, divided by stds
    is_pos: object
    is_sampled: object
    is_gt: object


def gather_rows(values, indices):
    """Rows of (B, M, ...) `values` at (B, N) `indices`."""
    expanded = ops.reshape(indices, (*ops.shape(indices), *([1] * (len(values.shape) - 2))))
    return ops.take_along_axis(values, expanded, axis=1)


def sample_rois(rois, roi_valid, gt_boxes, gt_classes, gt_valid, *, iou: float,
                num_samples: int, pos_fraction: float, stds, seed=None) -> RoiSample:
    """Assign `rois` (B, P, 4) plus the ground truth at `iou`, sample `num_samples`."""
    candidates = ops.concatenate([rois, gt_boxes], axis=1)
    valid = ops.concatenate([roi_valid, gt_valid], axis=1)
    from_gt = ops.concatenate([ops.zeros_like(roi_valid), gt_valid], axis=1)
    labels, matched, _ = assign(candidates, gt_boxes, gt_valid, pos_iou=iou, neg_iou=iou)
    labels = ops.where(valid, labels, -1)
    index, is_pos, is_sampled = sample_indices(labels, num_samples, pos_fraction, seed)
    sampled_rois = gather_rows(candidates, index)
    matched = gather_rows(matched, index)
    classes = ops.where(is_pos, gather_rows(gt_classes, matched), 0)
    box_targets = box_ops.encode(gather_rows(gt_boxes, matched), sampled_rois, stds)
    is_gt = gather_rows(from_gt, index) & is_sampled
    return RoiSample(sampled_rois, matched, classes, box_targets, is_pos, is_sampled, is_gt)
