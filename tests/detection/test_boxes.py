"""Box encoding, decoding and IoU with hand-computed values."""

import math

import numpy as np

from keras_res2net.detection.ops import boxes as box_ops


def test_encode_by_hand():
    anchor = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    box = np.array([[5.0, 5.0, 25.0, 15.0]], np.float32)
    # Centres (5, 5) -> (15, 10), size 10x10 -> 20x10.
    np.testing.assert_allclose(box_ops.encode(box, anchor), [[1.0, 0.5, math.log(2.0), 0.0]],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(box_ops.encode(box, anchor, (0.1, 0.1, 0.2, 0.2)),
                               [[10.0, 5.0, math.log(2.0) / 0.2, 0.0]], rtol=1e-5, atol=1e-6)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (64, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 300, (64, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 500, (64, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 300, (64, 2))], 1).astype(np.float32)
    stds = (0.1, 0.1, 0.2, 0.2)
    decoded = box_ops.decode(box_ops.encode(boxes, anchors, stds), anchors, stds)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-4, atol=1e-2)


def test_pairwise_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_ops.pairwise_iou(a, b),
                               [[1 / 3, 0, 1], [0, 0, 0.04]], rtol=1e-6)


def test_clip():
    np.testing.assert_allclose(box_ops.clip(np.array([[-5.0, 3, 120, 70]]), 64.0, 100.0),
                               [[0, 3, 100, 64]])
