"""Mask paste-back (grid_sample, align_corners=False) with hand-computed values."""

import numpy as np

from keras_res2net.detection.ops.masks import paste_mask, paste_masks


def test_uniform_mask_fills_its_box():
    probs = paste_mask(np.ones((2, 2)), [2, 2, 6, 6], 8, 8, threshold=None)
    # Pixel 2 samples mask coordinate -0.25: 0.75 of cell 0; pixel 1 samples -0.75: 0.25.
    w = np.array([0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0])
    np.testing.assert_allclose(probs, np.outer(w, w), atol=1e-6)
    binary = paste_mask(np.ones((2, 2)), [2, 2, 6, 6], 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:6] = 1
    np.testing.assert_array_equal(binary, expected)


def test_corner_cell_spreads_bilinearly():
    mask = np.array([[1.0, 0.0], [0.0, 0.0]])
    probs = paste_mask(mask, [0, 0, 4, 4], 4, 4, threshold=None)
    w = np.array([0.75, 0.75, 0.25, 0.0])  # weight of mask cell 0 at pixels 0..3
    np.testing.assert_allclose(probs, np.outer(w, w), atol=1e-6)


def test_paste_masks_batches():
    out = paste_masks(np.ones((2, 2, 2)), np.array([[0, 0, 2, 2], [2, 2, 4, 4]]), 4, 4)
    assert out.shape == (2, 4, 4) and out.dtype == np.uint8
    assert out[0, :2, :2].all() and out[0].sum() == 4 and out[1, 2:, 2:].all()
