"""The keras.applications-style API: constructors, shapes, heads, pyramid, saving, bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_res2net
from keras_res2net.summary import trainable_params

# `core` (also run on JAX): the tests that compute with the backend or save and load through
# it, one variant each (JAX compiles every op anew per input shape, so each costs minutes);
# argument checks, names, shapes and the other variants run once, on TensorFlow.
SMALL = dict(layers=(1, 1, 1, 1), base_width=8)  # fast: same code paths, fewer channels


def test_list_models_names_every_official_and_timm_variant():
    names = keras_res2net.list_models()
    assert len(names) == 18  # 13 ImageNet variants and the paper's 5 CIFAR-100 models
    assert {"res2net50_26w_4s", "res2net101_v1b_26w_4s", "dla60_res2next"} <= set(names)
    assert keras_res2net.get_variant("res2net50d").name == "res2net50_v1b_26w_4s"
    assert keras_res2net.get_variant("RES2NET101D").name == "res2net101_v1b_26w_4s"


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ValueError, match="Unknown Res2Net variant 'res2net42'.*res2net50_26w_4s"):
        keras_res2net.create_model("res2net42")


@pytest.mark.parametrize("constructor, variant", [
    (keras_res2net.Res2Net50, "res2net50_26w_4s"),
    (keras_res2net.Res2Net101V1b, "res2net101_v1b_26w_4s"),
    (keras_res2net.Res2NeXtDLA60, "dla60_res2next"),
])
def test_named_constructors_build_their_variant(constructor, variant):
    model = constructor()
    assert model.name == variant
    assert trainable_params(model) == keras_res2net.get_variant(variant).reference_params
    assert model.output_shape == (None, 1000)


def test_res2net152_is_v1_and_152v1b_is_deep_stem():
    v1 = keras_res2net.Res2Net152(include_top=False, **SMALL)
    v1b = keras_res2net.Res2Net152V1b(include_top=False, **SMALL)
    names_v1 = {layer.name for layer in v1.layers}
    names_v1b = {layer.name for layer in v1b.layers}
    assert "conv1" in names_v1 and "conv1_0" not in names_v1
    assert "conv1_0" in names_v1b and "layer2_0_downsample_0" in names_v1b


def test_knobs_change_width_and_scale():
    model = keras_res2net.Res2Net50(base_width=14, scale=8, include_top=False, pooling="avg",
                                    input_shape=(64, 64, 3))
    # planes 64 * 14 / 64 = 14 channels per split, 7 3x3 convs in every block
    assert model.get_layer("layer1_0_convs_6").kernel.shape == (3, 3, 14, 14)
    assert "layer1_0_convs_7" not in {layer.name for layer in model.layers}
    assert model.output_shape == (None, 2048)
    assert trainable_params(keras_res2net.Res2Net50(base_width=14, scale=8)) == 25_059_816


@pytest.mark.parametrize("pooling, shape", [(None, (None, 2, 2, 2048)), ("avg", (None, 2048)),
                                            ("max", (None, 2048))])
def test_pooling_options(pooling, shape):
    model = keras_res2net.Res2Net50(include_top=False, pooling=pooling, input_shape=(64, 64, 3),
                                    layers=(1, 1, 1, 1))
    assert model.output_shape == shape


@pytest.mark.core
def test_top_with_dynamic_input_size_and_logits():
    model = keras_res2net.Res2Net50(input_shape=(None, None, 3), classes=7,
                                    classifier_activation=None, **SMALL)
    for size in [(64, 64), (97, 131)]:
        logits = np.asarray(model(np.zeros((2, *size, 3), np.float32)))
        assert logits.shape == (2, 7)
    probabilities = keras_res2net.Res2Net50(classes=7, input_shape=(64, 64, 3), **SMALL)(
        np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32"))
    np.testing.assert_allclose(np.asarray(probabilities).sum(-1), 1.0, rtol=1e-5)


def test_input_tensor_is_used():
    inputs = keras.Input((64, 64, 3))
    model = keras_res2net.Res2Net50(input_tensor=inputs, include_top=False, **SMALL)
    assert model.inputs[0] is inputs


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(224, 224)), "height, width, channels"),
    (dict(input_shape=(16, 224, 3)), "too small"),
    (dict(pooling="mean", include_top=False), "pooling must be one of"),
    (dict(classifier_activation="sofmax"), "not a Keras activation"),
    (dict(classes=0), "classes must be a positive integer"),
    (dict(layers=(1, 1, 1)), "needs 4 entries"),
    (dict(weights="imagenet", base_width=8), "modified knobs"),
    (dict(weights="model.onnx"), "Unsupported weights"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_res2net.create_model("res2net50_26w_4s", **kwargs)


def test_dla_needs_multiples_of_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        keras_res2net.Res2NetDLA60(input_shape=(193, 257, 3))


@pytest.mark.core
def test_wrong_input_at_call_time_is_rejected():
    model = keras_res2net.Res2Net50(input_shape=(64, 64, 3), **SMALL)
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        model(np.zeros((1, 64, 64, 1), np.float32))


@pytest.mark.core
def test_pyramid_model_strides_channels_and_savable(tmp_path):
    model = keras_res2net.create_model("res2net50_v1b_26w_4s", features_only=True,
                                       input_shape=(None, None, 3), **SMALL)
    features = model(np.zeros((1, 96, 160, 3), np.float32))
    shapes = {level: tuple(value.shape) for level, value in features.items()}
    assert shapes == {"P2": (1, 24, 40, 256), "P3": (1, 12, 20, 512),
                      "P4": (1, 6, 10, 1024), "P5": (1, 3, 5, 2048)}
    path = tmp_path / "pyramid.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype("float32")
    for level in ("P2", "P5"):
        np.testing.assert_array_equal(np.asarray(model(images)[level]),
                                      np.asarray(loaded(images)[level]))


def test_dla_pyramid_levels():
    model = keras_res2net.create_model("dla60_res2net", features_only=True)
    features = model(np.zeros((1, 64, 96, 3), np.float32))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        "P2": (16, 24, 128), "P3": (8, 12, 256), "P4": (4, 6, 512), "P5": (2, 3, 1024)}


@pytest.mark.parametrize("variant", [
    pytest.param("res2net50_26w_4s", marks=pytest.mark.core), "res2next50", "dla60_res2net"])
def test_keras_file_round_trip_in_safe_mode(variant, tmp_path):
    overrides = {} if variant.startswith("dla") else SMALL
    model = keras_res2net.create_model(variant, input_shape=(64, 64, 3), classes=5, **overrides)
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(loaded(images)))
    weights_path = tmp_path / "model.weights.h5"
    model.save_weights(weights_path)
    fresh = keras_res2net.create_model(variant, input_shape=(64, 64, 3), classes=5,
                                       weights=str(weights_path), **overrides)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(fresh(images)))


def test_no_lambda_layers_anywhere():
    for variant in ("res2net50_v1b_26w_4s", "dla60_res2next"):
        model = keras_res2net.create_model(variant)
        assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Lambda)]


@pytest.mark.parametrize("variant", [pytest.param("res2net50_26w_4s", marks=pytest.mark.core),
                                     "res2next50"])
def test_fused_stage_convs_load_and_compute_the_same(variant, save_safetensors):
    from reference_data import ReferenceFixture, seeded_images

    from keras_res2net.models import build_res2net, resolve_spec

    fixture = ReferenceFixture(variant + "_reduced")
    path = save_safetensors(fixture.state_dict())
    spec = resolve_spec(variant, layers=fixture.meta["layers"])
    fused = build_res2net(spec, weights=path, fuse_stage_convs=True, input_shape=(64, 64, 3))
    separate = build_res2net(spec, weights=path, input_shape=(64, 64, 3))
    layer = fused.get_layer("layer2_0_convs")
    assert layer.strides == (2, 2) and layer.groups == 3 * spec.cardinality
    assert "layer2_0_convs" not in {layer.name for layer in separate.layers}
    images = seeded_images(2, 64, 64)
    np.testing.assert_allclose(np.asarray(fused(images)), np.asarray(separate(images)),
                               atol=1e-6)
