"""HTC's semantic branch: the fused semantic head, its loss and its RoI features."""

import keras
import numpy as np
import pytest

from keras_res2net.detection.losses import semantic_loss
from keras_res2net.detection.modeling.semantic import (
    FusedSemanticHead,
    resize_bilinear,
    semantic_roi_features,
)

# A 96x160 (non-square) padded image: P2 24x40 ... P6 2x3 (FPN's stride-2 pool of P5 3x5).
SIZES = {"P2": (24, 40), "P3": (12, 20), "P4": (6, 10), "P5": (3, 5), "P6": (2, 3)}


def _features(channels: int = 8, batch: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {lv: rng.normal(size=(batch, *hw, channels)).astype(np.float32)
            for lv, hw in SIZES.items()}


@pytest.mark.core
def test_head_outputs_at_the_fusion_level():
    head = FusedSemanticHead(num_classes=5, channels=8, num_convs=2)
    logits, feature = head(_features())
    assert tuple(logits.shape) == (2, 12, 20, 5) and tuple(feature.shape) == (2, 12, 20, 8)
    assert float(keras.ops.min(feature)) >= 0.0  # conv_embedding ends with a ReLU
    assert len(head.laterals) == 5 and len(head.trainable_weights) == 2 * (5 + 2 + 2)
    logits, feature = FusedSemanticHead(num_classes=5, channels=8, num_convs=0,
                                        fusion_level="P2")(_features())
    assert tuple(logits.shape) == (2, 24, 40, 5) and tuple(feature.shape) == (2, 24, 40, 8)


def _conv1x1(layer, x, relu: bool):
    kernel, bias = (np.asarray(w) for w in layer.weights)
    y = x @ kernel[0, 0] + bias
    return np.maximum(y, 0.0) if relu else y


def test_head_is_mmdetections_fused_semantic_head():
    """Without 3x3 convs the head is all 1x1 convs: check it against NumPy, with each level
    resized (align_corners=True) before its lateral, and logits taken beside the embedding."""
    import tensorflow as tf

    features = _features()
    head = FusedSemanticHead(num_classes=5, channels=8, num_convs=0)
    logits, feature = (np.asarray(t) for t in head(features))
    fused = 0.0
    for level, x in features.items():
        if level != "P3":
            x = tf.compat.v1.image.resize_bilinear(x, SIZES["P3"], align_corners=True).numpy()
        fused = fused + _conv1x1(head.laterals[level], x, relu=True)
    np.testing.assert_allclose(logits, _conv1x1(head.conv_logits, fused, False), atol=1e-4)
    np.testing.assert_allclose(feature, _conv1x1(head.conv_embedding, fused, True), atol=1e-4)


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_matches_tensorflow_with_run_time_sizes(align_corners):
    import tensorflow as tf

    x = np.random.default_rng(1).normal(size=(2, 7, 11, 3)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3]),
                                  tf.TensorSpec([2], tf.int32)])
    def resize(images, size):
        return resize_bilinear(images, (size[0], size[1]), align_corners)

    for size in [(3, 5), (14, 22), (7, 11)]:
        if align_corners:
            expected = tf.compat.v1.image.resize_bilinear(x, size, align_corners=True)
        else:
            expected = tf.image.resize(x, size, "bilinear")
        np.testing.assert_allclose(resize(x, tf.constant(size)), expected, atol=1e-5)


def test_head_runs_on_images_of_varying_size_in_one_tf_function():
    import tensorflow as tf

    head = FusedSemanticHead(num_classes=5, channels=8, num_convs=1)
    spec = {lv: tf.TensorSpec([None, None, None, 8]) for lv in SIZES}
    run = tf.function(head.__call__, input_signature=[spec])
    assert tuple(run(_features())[0].shape) == (2, 12, 20, 5)
    small = {lv: x[:, : max(h // 2, 1), : max(w // 2, 1)]
             for (lv, x), (h, w) in zip(_features().items(), SIZES.values(), strict=True)}
    assert tuple(run(small)[0].shape) == (2, 6, 10, 5)


def test_gradients_reach_every_lateral_conv():
    import tensorflow as tf

    head = FusedSemanticHead(num_classes=5, channels=8, num_convs=2)
    features = _features()
    head(features)
    with tf.GradientTape() as tape:
        logits, feature = head(features)
        loss = tf.reduce_sum(logits**2) + tf.reduce_sum(feature**2)
    grads = tape.gradient(loss, head.trainable_variables)
    names = [v.path for v in head.trainable_variables]
    for level in SIZES:
        assert any(f"lateral_{level}" in name for name in names), level
    for name, grad in zip(names, grads, strict=True):
        assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0, name


def test_get_config_round_trip():
    head = FusedSemanticHead(num_classes=7, channels=8, num_convs=3, fusion_level="P4",
                             align_corners=False, name="semantic")
    clone = FusedSemanticHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    assert (clone.num_classes, clone.fusion_level, clone.levels) == (7, "P4", tuple(SIZES))
    features = _features()
    head(features)
    clone(features)
    clone.set_weights(head.get_weights())
    np.testing.assert_allclose(clone(features)[0], head(features)[0], atol=1e-6)
    with pytest.raises(ValueError, match="fusion_level 'P7'"):
        FusedSemanticHead(num_classes=3, fusion_level="P7")


@pytest.mark.core
def test_semantic_loss_by_hand():
    log3, log2 = np.log(3.0), np.log(2.0)
    logits = np.array([[[[0, 0, 0], [log3, 0, 0]],
                        [[100, 0, 0], [0, log2, log2]]]], np.float32)
    labels = np.array([[[1, 0], [255, 2]]], np.uint8)
    # -log(1/3), -log(3/5), ignored (0), -log(2/5): averaged over all four pixels, as
    # mmdetection (avg_non_ignore=False); over the three valid pixels with avg_non_ignore.
    total = np.log(3) + np.log(5 / 3) + np.log(5 / 2)
    np.testing.assert_allclose(float(semantic_loss(logits, labels)), total / 4, rtol=1e-5)
    np.testing.assert_allclose(float(semantic_loss(logits, labels, avg_non_ignore=True)),
                               total / 3, rtol=1e-5)
    other = np.array([[[1, 0], [0, 2]]], np.uint8)  # ignore class 1; (1, 0) is now ~certain
    np.testing.assert_allclose(float(semantic_loss(logits, other, ignore_index=1)),
                               (np.log(5 / 3) + 0.0 + np.log(5 / 2)) / 4, rtol=1e-5)


def test_semantic_loss_without_valid_pixels_is_zero_with_finite_gradients():
    import tensorflow as tf

    logits = tf.Variable(np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = semantic_loss(logits, np.full((2, 32, 32), 255, np.uint8))
    grad = tape.gradient(loss, logits)
    assert float(loss) == 0.0
    assert np.isfinite(grad.numpy()).all() and not grad.numpy().any()


@pytest.mark.core
def test_semantic_loss_takes_every_eighth_label():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(2, 32, 48)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 255
    logits = rng.normal(size=(2, 4, 6, 4)).astype(np.float32)
    picked = labels[:, ::8, ::8].astype(np.int64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = picked != 255
    nll = -np.take_along_axis(log_probs, np.where(valid, picked, 0)[..., None], -1)[..., 0]
    expected = np.where(valid, nll, 0.0).mean()
    np.testing.assert_allclose(float(semantic_loss(logits, labels)), expected, rtol=1e-5)


@pytest.mark.core
def test_semantic_roi_features():
    constant = np.full((2, 12, 20, 4), 3.5, np.float32)
    rois = np.array([[[0, 0, 160, 96], [10, 20, 50, 40], [100.5, 3.2, 101.7, 90]],
                     [[5, 5, 6, 6], [0, 0, 80, 48], [150, 80, 160, 96]]], np.float32)
    for size in (7, 14):
        pooled = np.asarray(semantic_roi_features(constant, rois, size))
        assert pooled.shape == (2, 3, size, size, 4)
        np.testing.assert_allclose(pooled, 3.5, rtol=1e-6)
    # Stride 8: on a map whose value is its column, a RoI over columns 2..6 (pixels 16..48,
    # aligned: 1.5..5.5) averages to 3.5.
    columns = np.broadcast_to(np.arange(20, dtype=np.float32)[None, None, :, None],
                              (1, 12, 20, 1))
    pooled = semantic_roi_features(columns, np.array([[[16, 16, 48, 48]]], np.float32), 7)
    np.testing.assert_allclose(float(np.mean(pooled)), 3.5, rtol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        semantic_roi_features(constant, rois, 7, stride=6)


def test_box_size_pooling_equals_mmdetections_mask_size_pool_then_average():
    """mmdetection pools semantic RoI features at 14 and average-pools them to 7 for the box
    branch: the same as pooling at 7 with twice the sampling ratio."""
    feature = np.random.default_rng(3).normal(size=(1, 12, 20, 2)).astype(np.float32)
    rois = np.array([[[3, 7, 90, 60], [40.5, 10, 70.2, 95]]], np.float32)
    fine = np.asarray(semantic_roi_features(feature, rois, 14, sampling_ratio=1))
    averaged = fine.reshape(1, 2, 7, 2, 7, 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(semantic_roi_features(feature, rois, 7, sampling_ratio=2),
                               averaged, atol=1e-5)
