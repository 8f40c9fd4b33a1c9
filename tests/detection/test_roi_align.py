"""RoIAlign against a loop-by-loop NumPy port of mmcv's `roi_align(aligned=True)` kernel."""

import numpy as np
import pytest

from keras_res2net.detection.modeling.roi_align import (
    crop_masks,
    multilevel_roi_align,
    roi_levels,
)


def _bilinear(feature, y, x):
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def reference_roi_align(feature, roi, scale, out, samples):
    """mmcv's kernel; `samples=0` is its adaptive `ceil(bin size)` samples per axis."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in roi)
    bin_h, bin_w = (y2 - y1) / out, (x2 - x1) / out
    grid_h = samples or max(int(np.ceil(bin_h)), 0)
    grid_w = samples or max(int(np.ceil(bin_w)), 0)
    result = np.zeros((out, out, feature.shape[2]))
    for ph in range(out):
        for pw in range(out):
            acc = 0.0
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    acc = acc + _bilinear(feature, y, x)
            result[ph, pw] = acc / max(grid_h * grid_w, 1)
    return result


def test_levels_follow_the_fpn_rule():
    sides = np.array([10.0, 56.0, 111.9, 112.0, 224.0, 448.0, 2000.0])
    # mmdetection's map_roi_levels: floor(log2(scale / 56 + 1e-6)), clipped to 0..3
    rois = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)[None]
    np.testing.assert_array_equal(roi_levels(rois, 2, 5), [[2, 2, 2, 3, 4, 5, 5]])


@pytest.mark.parametrize("samples", [0, 1, 2])
def test_multilevel_matches_reference(samples):
    rng = np.random.default_rng(0)
    features = {"P2": rng.normal(size=(2, 16, 24, 3)).astype(np.float32),
                "P3": rng.normal(size=(2, 8, 12, 3)).astype(np.float32),
                "P4": rng.normal(size=(2, 4, 6, 3)).astype(np.float32),
                "P5": rng.normal(size=(2, 2, 3, 3)).astype(np.float32)}
    rois = np.array([[[0, 0, 96, 64],        # the whole image, at the border (P3)
                      [90, 60, 96, 64],      # tiny box in the bottom-right corner (P2)
                      [-20, -10, 30, 20],    # partly outside the image (P2)
                      [10.3, 7.7, 10.9, 8.1],  # sub-pixel box
                      [0, 0, 240, 250]],     # larger than the image: P4, mostly outside
                     [[5, 5, 50, 40], [0, 0, 0, 0], [1, 2, 3, 4], [60, 0, 96, 64],
                      [200, 0, 700, 500]]], np.float32)  # P5 ... wholly outside
    pooled = np.asarray(multilevel_roi_align(features, rois, output_size=7,
                                             sampling_ratio=samples))
    assert pooled.shape == (2, 5, 7, 7, 3) and pooled.dtype == np.float32
    levels = np.asarray(roi_levels(rois, 2, 5))
    for b in range(2):
        for r in range(5):
            level = int(levels[b, r])
            expected = reference_roi_align(features[f"P{level}"][b], rois[b, r],
                                           2.0**-level, 7, samples)
            np.testing.assert_allclose(pooled[b, r], expected, atol=1e-5,
                                       err_msg=f"image {b} roi {r} level {level}")


def test_crop_masks_picks_the_matched_mask():
    masks = np.zeros((1, 2, 32, 32), np.uint8)
    masks[0, 0, 8:24, 8:24] = 1
    masks[0, 1, :, :16] = 1
    boxes = np.array([[[8, 8, 24, 24], [0, 0, 32, 32]]], np.float32)
    crops = np.asarray(crop_masks(masks, boxes, np.array([[0, 1]]), output_size=4))
    np.testing.assert_allclose(crops[0, 0], np.ones((4, 4)))
    np.testing.assert_allclose(crops[0, 1], np.tile([1.0, 1.0, 0.0, 0.0], (4, 1)))


def test_mask_targets_sample_adaptively_as_mmdetection():
    """mmdetection crops mask targets with `roi_align(..., sampling_ratio=0)`: large boxes
    average ceil(bin size)^2 samples per bin, which a fixed 2x2 grid does not match."""
    rng = np.random.default_rng(3)
    masks = (rng.random((2, 3, 48, 64)) < 0.5).astype(np.uint8)
    boxes = np.array([[[2.5, 3.0, 60.0, 45.0], [10.0, 10.0, 14.0, 30.0], [0, 0, 64, 48]],
                      [[30.2, 1.7, 41.9, 47.0], [5.0, 5.0, 6.0, 6.0], [-4, -4, 70, 20]]],
                     np.float32)
    gt_index = np.array([[0, 2, 1], [1, 0, 2]])
    crops = np.asarray(crop_masks(masks, boxes, gt_index, output_size=7))
    fixed = np.asarray(crop_masks(masks, boxes, gt_index, output_size=7, sampling_ratio=2))
    for b in range(2):
        for r in range(3):
            mask = masks[b, gt_index[b, r]].astype(np.float64)[..., None]
            expected = reference_roi_align(mask, boxes[b, r], 1.0, 7, 0)[..., 0]
            np.testing.assert_allclose(crops[b, r], expected, atol=1e-5)
    assert np.abs(crops - fixed).max() > 0.1


def test_adaptive_sampling_counts_differ_per_roi():
    """A tall thin RoI takes many samples along y and one along x: a fixed grid differs."""
    rng = np.random.default_rng(1)
    feature = rng.normal(size=(1, 40, 40, 2)).astype(np.float32)
    rois = np.array([[[4.0, 2.0, 9.0, 150.0], [30.0, 30.0, 31.0, 31.0]]], np.float32)
    pooled = np.asarray(multilevel_roi_align({"P2": feature}, rois, output_size=7))
    fixed = np.asarray(multilevel_roi_align({"P2": feature}, rois, output_size=7,
                                            sampling_ratio=2))
    for r in range(2):
        expected = reference_roi_align(feature[0], rois[0, r], 0.25, 7, 0)
        np.testing.assert_allclose(pooled[0, r], expected, atol=1e-5)
    assert np.abs(pooled[0, 0] - fixed[0, 0]).max() > 1e-3


def test_adaptive_grid_equals_pooling_finer_then_averaging():
    """HTC's semantic RoI features: 14x14 adaptive then 2x2 average == 7x7, adaptive_grid=14."""
    rng = np.random.default_rng(2)
    feature = rng.normal(size=(1, 30, 30, 3)).astype(np.float32)
    rois = np.array([[[3.0, 5.0, 170.0, 90.0], [10.0, 10.0, 40.0, 200.0],
                      [0.0, 0.0, 13.0, 13.0]]], np.float32)
    fine = np.asarray(multilevel_roi_align({"P3": feature}, rois, output_size=14))
    coarse = np.asarray(multilevel_roi_align({"P3": feature}, rois, output_size=7,
                                             adaptive_grid=14))
    averaged = fine.reshape(1, 3, 7, 2, 7, 2, 3).mean(axis=(3, 5))
    np.testing.assert_allclose(coarse, averaged, atol=1e-5)
    plain = np.asarray(multilevel_roi_align({"P3": feature}, rois, output_size=7))
    assert np.abs(plain - averaged).max() > 1e-4  # the count rule matters


def test_adaptive_sampling_in_chunks_equals_one_pass(monkeypatch):
    """The ragged samples are interpolated a chunk at a time: any chunk size, same result,
    under tf.function too, and gradients reach the features."""
    import tensorflow as tf

    from keras_res2net.detection.modeling import roi_align

    rng = np.random.default_rng(3)
    feature = tf.constant(rng.normal(size=(1, 20, 24, 3)).astype(np.float32))
    rois = np.array([[[1.0, 2.0, 60.0, 70.0], [10.0, 5.0, 90.0, 20.0], [0, 0, 0, 0]]],
                    np.float32)
    whole = np.asarray(multilevel_roi_align({"P2": feature}, rois, output_size=7))
    monkeypatch.setattr(roi_align, "SAMPLE_CHUNK", 7)
    pool = tf.function(lambda f: multilevel_roi_align({"P2": f}, rois, output_size=7))
    np.testing.assert_allclose(np.asarray(pool(feature)), whole, atol=1e-6)
    for r in range(3):
        expected = reference_roi_align(np.asarray(feature)[0], rois[0, r], 0.25, 7, 0)
        np.testing.assert_allclose(whole[0, r], expected, atol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(feature)
        total = tf.reduce_sum(pool(feature))
    assert float(tf.reduce_sum(tf.abs(tape.gradient(total, feature)))) > 0.0
