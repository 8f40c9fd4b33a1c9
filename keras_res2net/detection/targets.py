"""Training targets of both stages: which anchors and RoIs learn what.

RPN (`rpn_targets`): as mmdetection's AnchorHead, only the anchors of an image's own
feature-map cells take part (`anchor_valid_flags`: cells over the image padded to a multiple
of 32, not the rest of the batch padding) and, with `allowed_border >= 0` (the cascade and
HTC configs use 0), only anchors inside the image; they are assigned with low-quality matches and
256 are sampled, half positive at most.

Second stage (`sample_rois`): assign RoIs to ground truth, sample them, encode boxes.

One function serves Mask R-CNN's single box stage and every cascade stage (each with its own
IoU threshold and box stds): the RoIs are matched by max IoU (with low-quality matches for
Mask R-CNN's stage, as its config; none for Faster R-CNN and the cascades), the ground-truth
boxes join them as positives of their own objects (mmdetection's `add_gt_as_proposals`), and
a fixed number is sampled, positives first. `is_gt` marks the
sampled RoIs that are ground-truth boxes, which a cascade drops before the next stage.
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_res2net.detection.ops import boxes as box_ops
from keras_res2net.detection.ops.assign import assign
from keras_res2net.detection.ops.sampling import balanced_mask, sample_indices


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


def anchor_valid_flags(anchors: dict, strides: dict, image_sizes, size_divisor: int = 32,
                       allowed_border: int = -1):
    """(B, A) bool: the anchors of each image that take part in RPN target assignment.

    `anchors` are `{level: (N, 4)}` as `multilevel_anchors` makes them (anchor centres on
    the cell origins `(x * stride, y * stride)`), `image_sizes` (B, 2) each image's
    (height, width) before padding. mmdetection's `valid_flags`: an anchor is valid when its
    cell lies within `ceil(pad / stride)` cells, `pad` the image size rounded up to
    `size_divisor` (the per-image `pad_shape`, whatever the batch is padded to). With
    `allowed_border >= 0`, `anchor_inside_flags` also drops anchors that cross the image
    (unpadded) by more than `allowed_border` pixels.
    """
    sizes = ops.cast(image_sizes, "float32")
    height, width = sizes[:, 0:1], sizes[:, 1:2]  # (B, 1)
    padded_h = ops.ceil(height / size_divisor) * size_divisor
    padded_w = ops.ceil(width / size_divisor) * size_divisor
    flags = []
    for level, boxes in anchors.items():
        stride = float(strides[level])
        cell_x = ops.round((boxes[:, 0] + boxes[:, 2]) * 0.5 / stride)[None, :]
        cell_y = ops.round((boxes[:, 1] + boxes[:, 3]) * 0.5 / stride)[None, :]
        flags.append((cell_x < ops.ceil(padded_w / stride))
                     & (cell_y < ops.ceil(padded_h / stride)))
    valid = ops.concatenate(flags, axis=1)
    if allowed_border >= 0:
        every = ops.concatenate(list(anchors.values()), axis=0)[None]  # (1, A, 4)
        border = float(allowed_border)
        valid = (valid & (every[..., 0] >= -border) & (every[..., 1] >= -border)
                 & (every[..., 2] < width + border) & (every[..., 3] < height + border))
    return valid


class RpnTargets(NamedTuple):
    """Sampled anchors of each image, (B, A) masks, and the (B, A, 4) regression targets."""

    positives: object
    negatives: object
    box_targets: object


def rpn_targets(anchors: dict, strides: dict, gt_boxes, gt_valid, image_sizes, *,
                pos_iou: float, neg_iou: float, min_pos_iou: float, num_samples: int,
                pos_fraction: float, size_divisor: int = 32, allowed_border: int = -1,
                seed=None) -> RpnTargets:
    """mmdetection's RPN targets for (B, M, 4) padded ground truth: valid anchors (see
    `anchor_valid_flags`) assigned with low-quality matches, then a balanced sample."""
    all_anchors = ops.concatenate(list(anchors.values()), axis=0)
    batch = ops.shape(gt_boxes)[0]
    anchors_b = ops.broadcast_to(all_anchors[None], (batch, *ops.shape(all_anchors)))
    valid = anchor_valid_flags(anchors, strides, image_sizes, size_divisor, allowed_border)
    labels, matched, _ = assign(anchors_b, gt_boxes, gt_valid, pos_iou=pos_iou,
                                neg_iou=neg_iou, min_pos_iou=min_pos_iou,
                                low_quality_matches=True,
                                box_valid=ops.broadcast_to(valid, ops.shape(anchors_b)[:2]))
    pos, neg = balanced_mask(labels, num_samples, pos_fraction, seed)
    targets = box_ops.encode(gather_rows(gt_boxes, matched), anchors_b)
    return RpnTargets(pos, neg, targets)


def sample_rois(rois, roi_valid, gt_boxes, gt_classes, gt_valid, *, iou: float,
                num_samples: int, pos_fraction: float, stds, seed=None,
                low_quality_matches: bool = False) -> RoiSample:
    """Assign `rois` (B, P, 4) at `iou`, add the ground truth, sample `num_samples`.

    As mmdetection's sampler with `add_gt_as_proposals`: the assigner sees the RoIs alone
    (`low_quality_matches`, with `min_pos_iou=iou`, as Mask R-CNN's R-CNN assigner), then
    each ground-truth box joins the candidates as a positive of its own object."""
    labels, matched, _ = assign(rois, gt_boxes, gt_valid, pos_iou=iou, neg_iou=iou,
                                min_pos_iou=iou, low_quality_matches=low_quality_matches,
                                box_valid=roi_valid)
    num_gt = ops.shape(gt_boxes)[1]
    own = ops.broadcast_to(ops.arange(num_gt, dtype="int32")[None], ops.shape(gt_valid))
    candidates = ops.concatenate([rois, gt_boxes], axis=1)
    labels = ops.concatenate([labels, ops.where(gt_valid, 1, -1)], axis=1)
    matched = ops.concatenate([matched, own], axis=1)
    from_gt = ops.concatenate([ops.zeros_like(roi_valid), gt_valid], axis=1)
    index, is_pos, is_sampled = sample_indices(labels, num_samples, pos_fraction, seed)
    sampled_rois = gather_rows(candidates, index)
    matched = gather_rows(matched, index)
    classes = ops.where(is_pos, gather_rows(gt_classes, matched), 0)
    box_targets = box_ops.encode(gather_rows(gt_boxes, matched), sampled_rois, stds)
    is_gt = gather_rows(from_gt, index) & is_sampled
    return RoiSample(sampled_rois, matched, classes, box_targets, is_pos, is_sampled, is_gt)
