"""Anchor generation against hand-computed boxes (mmdetection's AnchorGenerator)."""

import math

import numpy as np
import pytest

from keras_res2net.detection.modeling.anchors import (
    base_anchors,
    level_anchors,
    multilevel_anchors,
)
from keras_res2net.detection.targets import anchor_valid_flags

R = math.sqrt(2.0)


def test_base_anchors_stride4_scale8():
    # side 32; ratio = h / w with the area kept: (32 * sqrt2) x (32 / sqrt2) for 0.5.
    expected = [[-16 * R, -8 * R, 16 * R, 8 * R],
                [-16, -16, 16, 16],
                [-8 * R, -16 * R, 8 * R, 16 * R]]
    np.testing.assert_allclose(base_anchors(4, (8,), (0.5, 1.0, 2.0)), expected, rtol=1e-6)


def test_level_anchors_order_and_shift():
    anchors = np.asarray(level_anchors(2, 3, 4, (8,), (0.5, 1.0, 2.0)))
    assert anchors.shape == (2 * 3 * 3, 4)
    # Rows outer, columns next, ratios innermost: cell (y=1, x=2), ratio 1 is index 16,
    # centred on (x * stride, y * stride) = (8, 4).
    np.testing.assert_allclose(anchors[16], [8 - 16, 4 - 16, 8 + 16, 4 + 16])
    np.testing.assert_allclose(anchors[0], [-16 * R, -8 * R, 16 * R, 8 * R], rtol=1e-6)


def _mmdet_flags(feature_sizes, strides, num_base, image_size, size_divisor, allowed_border,
                 anchors):
    """A loop port of mmdetection's `AnchorGenerator.valid_flags` (per-image `pad_shape`)
    and `anchor_inside_flags` (`img_shape`, `allowed_border`)."""
    height, width = image_size
    pad_h = math.ceil(height / size_divisor) * size_divisor
    pad_w = math.ceil(width / size_divisor) * size_divisor
    flags = []
    for (feat_h, feat_w), stride in zip(feature_sizes, strides, strict=True):
        valid_h = min(math.ceil(pad_h / stride), feat_h)
        valid_w = min(math.ceil(pad_w / stride), feat_w)
        for y in range(feat_h):
            for x in range(feat_w):
                flags += [y < valid_h and x < valid_w] * num_base
    flags = np.array(flags)
    if allowed_border >= 0:
        flags &= ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
                  & (anchors[:, 2] < width + allowed_border)
                  & (anchors[:, 3] < height + allowed_border))
    return flags


@pytest.mark.parametrize("allowed_border", [-1, 0, 5])
def test_anchor_valid_flags_match_mmdetection(allowed_border):
    # A 160x128 batch: image 0 fills it, image 1 is 61x70 (padded to 64x96 on its own), so
    # the cells of its rows >= 64 px and columns >= 96 px lie on the batch padding.
    strides = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}
    shapes = {"P2": (40, 32), "P3": (20, 16), "P4": (10, 8), "P5": (5, 4), "P6": (3, 2)}
    anchors = multilevel_anchors(shapes, strides, (8,), (0.5, 1.0, 2.0))
    sizes = np.array([[160, 128], [61, 70]], np.float32)
    flags = np.asarray(anchor_valid_flags(anchors, strides, sizes, 32, allowed_border))
    every = np.concatenate([np.asarray(a) for a in anchors.values()])
    for image in range(2):
        expected = _mmdet_flags(list(shapes.values()), list(strides.values()), 3,
                                sizes[image], 32, allowed_border, every)
        np.testing.assert_array_equal(flags[image], expected)
    assert flags[0].all() if allowed_border < 0 else not flags[0].all()
    assert not flags[1].all() and flags[1].any()


@pytest.mark.parametrize("experiment", ["mask_rcnn_res2net50_fpn_synthetic",
                                        "cascade_rcnn_res2net50_fpn_synthetic"])
def test_rpn_loss_never_samples_invalid_anchors(experiment):
    """Objectness logits of +100 on the anchors mmdetection leaves out, 0 elsewhere, and no
    objects: only valid anchors are sampled (as negatives, log 2 each), and the sum is
    divided by mmdetection's avg_factor, max(positives, 1) + max(negatives, 1) per image."""
    from keras_res2net.detection.configs import get_experiment
    from keras_res2net.detection.task import DetectionTask

    config = get_experiment(experiment)
    strides = config.model.anchors.strides
    shapes = {"P2": (16, 16), "P3": (8, 8), "P4": (4, 4), "P5": (2, 2), "P6": (1, 1)}
    anchors = multilevel_anchors(shapes, strides, config.model.anchors.scales,
                                 config.model.anchors.ratios)
    every = np.concatenate([np.asarray(a) for a in anchors.values()])
    sizes = np.array([[64, 64], [20, 30]], np.float32)  # image 1: its own padding 32x32
    num_base = len(config.model.anchors.scales) * len(config.model.anchors.ratios)
    valid = np.stack([_mmdet_flags(list(shapes.values()), list(strides.values()), num_base,
                                   size, 32, config.model.rpn.allowed_border, every)
                      for size in sizes])
    assert not valid.all()
    logits = np.where(valid, 0.0, 100.0).astype(np.float32)
    split = np.cumsum([h * w * num_base for h, w in shapes.values()])[:-1]
    scores = dict(zip(shapes, np.split(logits, split, axis=1), strict=True))
    deltas = {lv: np.zeros((*s.shape, 4), np.float32) for lv, s in scores.items()}
    gt = (np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.int32), np.zeros((2, 3), bool))
    losses = DetectionTask(config)._rpn_losses(scores, deltas, anchors, gt, sizes)
    negatives = np.minimum(valid.sum(1), config.model.rpn.num_samples).sum()
    np.testing.assert_allclose(float(losses["rpn_cls_loss"]),
                               np.log(2.0) * negatives / (negatives + 2), rtol=1e-5)
    assert float(losses["rpn_box_loss"]) == 0.0
