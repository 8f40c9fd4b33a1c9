"""Anchor generation against hand-computed boxes (mmdetection's AnchorGenerator)."""

import math

import numpy as np

from keras_res2net.detection.modeling.anchors import base_anchors, level_anchors

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
