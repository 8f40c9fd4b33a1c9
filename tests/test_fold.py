"""`fold_batchnorm`: BN folded into the conv before it, same logits, and its users."""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest
from PIL import Image

import keras_res2net
from keras_res2net.fold import fold_batchnorm, plan_batchnorm_folds

TINY = dict(layers=(1, 1, 1, 1), base_width=8, input_shape=(32, 32, 3), classes=10)


def randomise_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial statistics and affine terms, so that folding them is really tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0.0, 0.2, n))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n))


def tiny_res2net(**knobs) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras_res2net.create_model("res2net50_26w_4s", **{**TINY, **knobs})
    randomise_batchnorm(model)
    return model


def images(n: int = 2, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, size, size, 3)).astype("float32")


def batchnorms(model: keras.Model) -> int:
    count = 0
    for layer in model.layers:
        count += isinstance(layer, keras.layers.BatchNormalization)
        if isinstance(layer, keras.Model):
            count += batchnorms(layer)
    return count


@pytest.mark.core
def test_fold_keeps_logits_and_round_trips(tmp_path):
    """Grouped stage convs and plain ones: no BN left, logits within 1e-5, and the folded model
    saves and loads with safe_mode=True to the same outputs."""
    model = tiny_res2net(classifier_activation=None, fuse_stage_convs=True)
    folded = fold_batchnorm(model)
    assert batchnorms(model) == 17 and batchnorms(folded) == 0
    assert any(getattr(layer, "groups", 1) > 1 and layer.use_bias for layer in folded.layers)
    x = images()
    expected = np.asarray(model(x, training=False))
    got = np.asarray(folded(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.abs(expected).max() > 0.1  # logits that carry signal, not ~0
    path = tmp_path / "folded.keras"
    folded.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)), got, atol=1e-6, rtol=0)


@pytest.mark.core
def test_unfoldable_batchnorm_is_kept_and_counted():
    """Only a BN that is its conv's one reader folds; nested models fold too; NumPy formula."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    a = keras.layers.BatchNormalization(name="a_bn")(a)  # folds
    b = keras.layers.Conv2D(4, 1, name="b")(inputs)
    b_bn = keras.layers.BatchNormalization(name="b_bn")(b)  # kept: b is also read by the concat
    cat = keras.layers.Concatenate(name="cat")([a, b, b_bn])
    cat = keras.layers.BatchNormalization(name="cat_bn")(cat)  # kept: after a concat
    d = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="d")(cat)
    d = keras.layers.BatchNormalization(name="d_bn")(d)  # folds
    inner = keras.Model(inputs, d, name="inner")
    outer_in = keras.Input((8, 8, 3))
    outer = keras.Model(outer_in, keras.layers.ReLU(name="relu")(inner(outer_in)), name="outer")
    randomise_batchnorm(inner)

    plan = plan_batchnorm_folds(outer)
    assert plan.folds == {"a": "a_bn", "d": "d_bn"}
    assert plan.kept == {"b_bn": "conv output read elsewhere", "cat_bn": "not after a convolution"}
    messages = []
    folded = fold_batchnorm(outer, log=messages.append)
    assert messages == ["outer: folded 2 of 4 BatchNorm layers into the convolution before "
                        "them; kept 1 (conv output read elsewhere), 1 (not after a convolution)."]
    assert batchnorms(folded) == 2
    x = images(3, 8)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(outer(x)), atol=1e-5, rtol=0)

    # The folded depthwise kernel is the formula's: W[..., c, m] * gamma / sqrt(var + eps).
    d_bn = inner.get_layer("d_bn")
    scale = (np.asarray(d_bn.gamma) / np.sqrt(np.asarray(d_bn.moving_variance) + d_bn.epsilon))
    kernel = np.asarray(inner.get_layer("d").kernel) * scale.reshape(12, 2)
    (folded_inner,) = [layer for layer in folded.layers if isinstance(layer, keras.Model)]
    np.testing.assert_allclose(np.asarray(folded_inner.get_layer("d").kernel), kernel,
                               rtol=1e-6)
    assert np.any(np.asarray(outer.get_layer("inner").get_layer("d").kernel) != kernel)


@pytest.mark.core
def test_training_model_is_refused_unless_allowed():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="a")(inputs)
    x = keras.layers.Conv2D(4, 3, name="b")(keras.layers.BatchNormalization(name="a_bn")(x))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization(name="b_bn")(x))
    model = keras.Model(inputs, x, name="small")
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="'small' is compiled for training and 2 of its BatchNorm"):
        fold_batchnorm(model)
    assert batchnorms(fold_batchnorm(model, allow_training=True)) == 0
    for layer in model.layers:  # frozen statistics: nothing left to update, folding is fine
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    assert batchnorms(fold_batchnorm(model)) == 0


@pytest.mark.core
def test_model_without_batchnorm_is_returned_unchanged_with_a_warning():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs), name="plain")
    with pytest.warns(UserWarning, match="'plain' has no BatchNormalization layer; returning"):
        assert fold_batchnorm(model) is model


def test_predict_runs_the_folded_model(tmp_path, monkeypatch):
    """predict folds by default, and its scores equal the unfolded model's."""
    from keras_res2net import fold, predict

    model = tiny_res2net()
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    rng = np.random.default_rng(0)
    image_path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image_path)
    used = []

    def spy(*args, **kwargs):
        used.append(fold_batchnorm(*args, **kwargs))
        return used[-1]

    monkeypatch.setattr(fold, "fold_batchnorm", spy)
    folded = predict.predict([str(image_path)], path, None, top=3)
    plain = predict.predict([str(image_path)], path, None, top=3, fold=False)
    assert len(used) == 1 and batchnorms(used[0]) == 0
    assert [c for c, _, _ in folded[0]] == [c for c, _, _ in plain[0]]
    np.testing.assert_allclose([s for *_, s in folded[0]], [s for *_, s in plain[0]], atol=1e-6)


def test_export_graph_loses_batchnorm_arithmetic():
    """The exported SavedModel graph (what `savedmodel`/`keras` ship) loses every BN op; the
    TFLite converter folds BN itself, so its op list is all convs + residual adds either way."""
    import tensorflow as tf

    from keras_res2net.export import source, tflite

    model = tiny_res2net()

    def graph_ops(serving) -> collections.Counter:
        function = tf.function(lambda x: serving.model(x, training=False)).get_concrete_function(
            tf.TensorSpec((1, 32, 32, 3), tf.float32))
        return collections.Counter(op.type for op in function.graph.get_operations())

    plain = source.serving_model(model)
    folded = source.serving_model(model, fold=True)
    assert batchnorms(plain.model) == 25 and batchnorms(folded.model) == 0
    before, after = graph_ops(plain), graph_ops(folded)
    bn_ops = ("Mul", "Rsqrt", "Sub", "FusedBatchNormV3")
    assert sum(before[op] for op in bn_ops) >= 25 and sum(after[op] for op in bn_ops) == 0
    assert after["BiasAdd"] == before["BiasAdd"] + 25  # one bias per conv
    assert after["AddV2"] <= 4  # at most the 4 residual adds (before: 2 per BN more)
    x = images()
    assert folded.reference_model is model  # the artifacts are checked against the unfolded
    np.testing.assert_allclose(np.asarray(folded.model(x)["probabilities"]),
                               np.asarray(model(x)), atol=1e-5)
    ops, _ = tflite.analyze(tflite.convert(folded))
    assert "MUL" not in ops and ops["ADD"] == 4 and ops["CONV_2D"] == 25


def test_hub_backbone_folds_for_inference_and_reloads_folded(tmp_path):
    """Res2NetBackbone(fold_batchnorm=True): same pyramid as the unfolded backbone with the
    same weights, no BN, and a saved one reloads (safe_mode) as the same folded model."""
    from keras_res2net.hub import Res2NetBackbone

    knobs = dict(layers=(1, 1, 1, 1), base_width=8)
    trunk = tiny_res2net(include_top=False, input_shape=(None, None, 3))
    weights = str(tmp_path / "trunk.weights.h5")
    trunk.save_weights(weights)
    plain = Res2NetBackbone("res2net50_26w_4s", weights=weights, **knobs)
    folded = Res2NetBackbone("res2net50_26w_4s", weights=weights, fold_batchnorm=True, **knobs)
    assert batchnorms(plain) == 25 and batchnorms(folded) == 0
    x = images(1, 64)
    expected = keras.Model(plain.inputs, plain.pyramid_outputs)(x)
    got = keras.Model(folded.inputs, folded.pyramid_outputs)(x)
    for level in ("P2", "P3", "P4", "P5"):
        np.testing.assert_allclose(np.asarray(got[level]), np.asarray(expected[level]),
                                   atol=1e-5, rtol=0)
    path = tmp_path / "folded_backbone.keras"
    folded.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.fold_batchnorm and batchnorms(loaded) == 0
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(got["P5"]), atol=1e-6, rtol=0)
