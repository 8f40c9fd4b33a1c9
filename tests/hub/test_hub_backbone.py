"""The keras-hub bridge: Res2NetBackbone is a FeaturePyramidBackbone keras-hub's RetinaNet uses.

Tiny variants (one block per stage, base width 8) at 64x64 keep the module well under a minute
on two CPU cores; the code paths are those of the full-size models.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import keras_hub  # no importorskip: `hub` is part of the `test` extra, a missing one must fail
import numpy as np
import pytest
from reference_data import ReferenceFixture, projection, seeded_images

import keras_res2net
from keras_res2net.hub import Res2NetBackbone, image_normalization, pyramid_channels

TINY = dict(layers=(1, 1, 1, 1), base_width=8)
SIZE = 64
NUM_CLASSES = 3


def tiny_backbone(variant: str = "res2net50_v1b_26w_4s", **kwargs) -> Res2NetBackbone:
    kwargs = {**TINY, **kwargs} if not variant.startswith("dla") else kwargs
    return Res2NetBackbone(variant, **kwargs)


def pyramid_of(backbone: keras.Model) -> keras.Model:
    return keras.Model(backbone.inputs, backbone.pyramid_outputs)


def numpy_tree(outputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


@pytest.mark.parametrize("variant, overrides", [
    ("res2net50_v1b_26w_4s", TINY),
    ("dla60_res2net", dict(layers=(1, 1, 1, 1, 1, 1), base_width=8)),
])
def test_backbone_is_a_feature_pyramid_backbone_equal_to_pyramid_model(tmp_path, variant,
                                                                     overrides):
    reference = keras_res2net.create_model(variant, features_only=True, **overrides)
    path = str(tmp_path / "trunk.weights.h5")
    # Perturb BatchNorm statistics so that equal outputs mean loaded weights, not equal init.
    rng = np.random.default_rng(0)
    for weight in reference.weights:
        if "moving" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    reference.save_weights(path)

    backbone = Res2NetBackbone(variant, weights=path, **overrides)
    assert isinstance(backbone, keras_hub.models.FeaturePyramidBackbone)
    assert isinstance(backbone, keras_hub.models.Backbone)
    assert list(backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    channels = pyramid_channels(backbone.spec)
    expected_channels = ((128, 256, 512, 1024) if variant.startswith("dla")
                         else (256, 512, 1024, 2048))
    assert tuple(channels.values()) == expected_channels

    images = seeded_images(2, SIZE, SIZE, seed=1)
    ours = numpy_tree(reference(images, training=False))
    theirs = numpy_tree(pyramid_of(backbone)(images, training=False))
    for level, stride in zip(("P2", "P3", "P4", "P5"), (4, 8, 16, 32), strict=True):
        assert backbone.pyramid_outputs[level].shape[-1] == channels[level]
        assert theirs[level].shape == (2, SIZE // stride, SIZE // stride, channels[level])
        np.testing.assert_allclose(theirs[level], ours[level], rtol=1e-5, atol=1e-5)
    # The model's own output (graph mode, as keras-hub tasks run it) is P5.
    np.testing.assert_allclose(backbone.predict(images, verbose=0), ours["P5"],
                               rtol=1e-5, atol=1e-5)
    # Same weight names and values, all of them (fresh layers would hold moving_var == 1).
    assert [w.path for w in backbone.weights] == [w.path for w in reference.weights]
    for mine, theirs_weight in zip(backbone.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs_weight))


def test_config_round_trip_rebuilds_the_same_architecture():
    backbone = tiny_backbone(scale=2, image_shape=(SIZE, SIZE, 3), name="r2n")
    config = backbone.get_config()
    assert config["layers"] == [1, 1, 1, 1] and config["scale"] == 2
    assert "weights" not in config  # a saved model carries its weights, not a path
    rebuilt = Res2NetBackbone.from_config(config)
    assert type(rebuilt) is Res2NetBackbone
    assert rebuilt.get_config() == config
    assert [w.path for w in rebuilt.weights] == [w.path for w in backbone.weights]
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in backbone.weights]
    assert rebuilt.name == "r2n" and rebuilt.image_shape == (SIZE, SIZE, 3)


def test_mmdetection_checkpoint_gives_the_reference_pyramid_and_survives_the_config(
        save_safetensors):
    """An mmdetection checkpoint (PyTorch-measured fixture) builds mmdetection's layout, whose
    missing layer1 pool the config must record, or a reload would silently change P2..P5."""
    fixture = ReferenceFixture("mmdet_res2net_v1b_reduced")
    meta = fixture.meta
    tensors = {meta["key_map"][key]: value for key, value in fixture.state_dict().items()
               if key in meta["key_map"]}
    backbone = Res2NetBackbone(meta["variant"], layers=meta["layers"],
                               weights=save_safetensors(tensors))
    assert backbone.get_config()["stage_pool"] is False
    height, width = meta["sizes"][0]
    images = seeded_images(2, height, width)
    features = numpy_tree(pyramid_of(backbone)(images, training=False))
    for level, reference in fixture.outputs(height, width).items():
        summary = features[level] @ projection(features[level].shape[-1])
        assert np.abs(summary - reference).max() < 1e-4, level

    rebuilt = Res2NetBackbone.from_config(backbone.get_config())
    rebuilt.set_weights(backbone.get_weights())
    again = numpy_tree(pyramid_of(rebuilt)(images, training=False))
    np.testing.assert_allclose(again["P2"], features["P2"], rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="Unknown Res2Net variant"):
        Res2NetBackbone("res2net42")
    with pytest.raises(ValueError, match="layers for res2net50_v1b_26w_4s needs 4 entries"):
        Res2NetBackbone(layers=(1, 1))
    with pytest.raises(ValueError, match="modified knobs"):  # no table weights for a tiny model
        Res2NetBackbone(weights="imagenet", **TINY)


def test_backbone_saves_to_keras_and_loads_with_safe_mode(tmp_path):
    backbone = tiny_backbone(dtype="float32")
    images = seeded_images(1, SIZE, SIZE, seed=2)
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is Res2NetBackbone
    assert list(loaded.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    np.testing.assert_allclose(numpy_tree(loaded(images, training=False)),
                               numpy_tree(backbone(images, training=False)), rtol=1e-6, atol=1e-6)


def test_image_normalization_matches_preprocess_input():
    converter = keras_hub.layers.RetinaNetImageConverter(**image_normalization())
    images = np.random.default_rng(3).uniform(0, 255, (2, 40, 48, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(converter(images)),
                               keras.ops.convert_to_numpy(keras_res2net.preprocess_input(images)),
                               rtol=1e-5, atol=1e-5)


def test_dtype_policy_reaches_every_layer():
    backbone = tiny_backbone(dtype="mixed_float16")
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.dtype_policy.name == "mixed_float16" for layer in convs)
    assert backbone.pyramid_outputs["P5"].dtype == "float16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def detection_data(batch: int = 2) -> tuple[np.ndarray, dict]:
    """Images in [0, 255] with one or two bright boxes (yxyx pixels), labels padded with -1."""
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 40, (batch, SIZE, SIZE, 3)).astype("float32")
    boxes = np.full((batch, 2, 4), -1.0, "float32")
    labels = np.full((batch, 2), -1, "int32")
    layouts = [[(12, 12, 44, 44, 1)], [(4, 4, 28, 28, 0), (28, 36, 60, 60, 2)]]
    for index in range(batch):
        for slot, (y0, x0, y1, x1, label) in enumerate(layouts[index % 2]):
            images[index, y0:y1, x0:x1] = 200.0 + 20 * label
            boxes[index, slot] = (y0, x0, y1, x1)
            labels[index, slot] = label
    return images, {"boxes": boxes, "labels": labels}


def retinanet(backbone: Res2NetBackbone):
    """keras-hub's RetinaNet on our backbone, with keras-hub's own preprocessor and anchors."""
    models = keras_hub.models
    fpn = models.RetinaNetBackbone(image_encoder=backbone, min_level=3, max_level=5,
                                   use_p5=False, image_shape=(SIZE, SIZE, 3))
    anchors = keras_hub.layers.AnchorGenerator("yxyx", min_level=3, max_level=5, num_scales=1,
                                               aspect_ratios=[1.0], anchor_size=4)
    converter = keras_hub.layers.RetinaNetImageConverter(image_size=(SIZE, SIZE),
                                                         **image_normalization())
    preprocessor = models.RetinaNetObjectDetectorPreprocessor(image_converter=converter)
    return models.RetinaNetObjectDetector(backbone=fpn, anchor_generator=anchors,
                                          num_classes=NUM_CLASSES, bounding_box_format="yxyx",
                                          pre_logits_num_conv_layers=1,
                                          preprocessor=preprocessor)


@pytest.mark.slow
def test_retinanet_trains_predicts_and_saves_on_the_backbone(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = tiny_backbone(image_shape=(SIZE, SIZE, 3))
    detector = retinanet(backbone)
    # keras-hub's defaults (Adam 5e-5, Huber box and focal class losses). Eager: the same
    # train_step and compute_loss, without 20-30 s of graph tracing and XLA on two CPU cores
    # (the backbone's graph mode is covered above).
    detector.compile(run_eagerly=True)
    images, targets = detection_data()

    stem = backbone.get_layer("conv1_0").kernel
    before_stem = keras.ops.convert_to_numpy(stem).copy()
    before_head = [keras.ops.convert_to_numpy(w).copy() for w in detector.box_head.weights]
    history = detector.fit(images, targets, batch_size=2, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert np.abs(keras.ops.convert_to_numpy(stem) - before_stem).max() > 0
    assert any(np.abs(keras.ops.convert_to_numpy(w) - b).max() > 0
               for w, b in zip(detector.box_head.weights, before_head, strict=True))

    # keras-hub 0.32 initialises the *box* head's bias to the focal prior (-4.6), so untrained
    # deltas shrink every anchor to under a pixel and NMS keeps nothing. Zero deltas decode to
    # the anchors themselves: with no score threshold, every image must get detections.
    for weight in detector.box_head.prediction_layer.weights:
        weight.assign(np.zeros(weight.shape, "float32"))
    detector.prediction_decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="yxyx", from_logits=True, confidence_threshold=0.0,
        max_detections=10)
    predictions = detector.predict(images, verbose=0)
    assert predictions["boxes"].shape == (2, 10, 4)
    assert predictions["confidence"].shape == (2, 10)
    assert predictions["labels"].shape == (2, 10)
    assert predictions["num_detections"].shape == (2,)
    for index, count in enumerate(predictions["num_detections"]):
        assert 0 < count <= 10
        boxes = predictions["boxes"][index, :count]
        assert np.all(boxes[:, 2:] > boxes[:, :2])  # yxyx with positive area
        assert np.all((predictions["labels"][index, :count] >= 0)
                      & (predictions["labels"][index, :count] < NUM_CLASSES))
        assert np.all((predictions["confidence"][index, :count] > 0)
                      & (predictions["confidence"][index, :count] <= 1))
        assert np.all(predictions["labels"][index, count:] == -1)  # keras-hub's padding

    path = str(tmp_path / "retinanet.keras")
    detector.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.backbone.image_encoder, Res2NetBackbone)
    x = detector.preprocessor.image_converter(images)  # the heads' raw outputs, undecoded
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)["cls_logits"]),
                               keras.ops.convert_to_numpy(detector(x)["cls_logits"]),
                               rtol=1e-5, atol=1e-5)


def test_importing_keras_res2net_does_not_import_keras_hub():
    code = textwrap.dedent("""
        import sys
        import keras_res2net
        assert "keras_hub" not in sys.modules, "keras_res2net imported keras_hub"
        print("ok")
    """)
    # Keras' numpy backend: what keras_res2net imports does not depend on the backend, and
    # the child skips TensorFlow's start-up (6 s instead of 16 s on 2 loaded cores).
    env = {**os.environ, "KERAS_BACKEND": "numpy", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_missing_keras_hub_names_the_extra(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub -> ImportError
    monkeypatch.setitem(sys.modules, "keras_hub.models", None)
    monkeypatch.delitem(sys.modules, "keras_res2net.hub")
    with pytest.raises(ImportError, match=r"pip install 'keras-res2net\[hub\]'"):
        importlib.import_module("keras_res2net.hub")
