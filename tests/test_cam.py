"""Class activation maps: the Grad-CAM(++) arithmetic against a NumPy closed form (TensorFlow
and JAX), localisation by a trained Res2Net, keras.applications' ResNet-50, and the CLI."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import layers

from keras_res2net import cam
from keras_res2net.blocks import batch_norm, bottle2neck, conv, conv_bn_relu

COLOURS = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 220]], np.float32)


def shapes_dataset(count: int, seed: int, size: int = 32):
    """One filled square or disc (radius 4-6 px) on a plain grey background at a random
    position; the class is its colour. Returns images in [-1, 1], labels, object masks."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(COLOURS), count)
    images = np.empty((count, size, size, 3), np.float32)
    masks = np.zeros((count, size, size), bool)
    rows, cols = np.mgrid[:size, :size]
    for i in range(count):
        images[i] = rng.uniform(60, 190)
        radius = rng.integers(4, 7)
        cy, cx = rng.integers(radius, size - radius, 2)
        if rng.random() < 0.5:
            mask = (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius)
        else:
            mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
        images[i][mask] = COLOURS[labels[i]]
        masks[i] = mask
    return images / 127.5 - 1, labels, masks


def tiny_res2net(classes: int) -> keras.Model:
    """Three stages of one Res2Net block (width 4, scale 4; 32, 64, 128 channels) at strides
    1, 2, 4 on 32x32 images, as in the CIFAR trunk: the last stage is 8x8."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = conv_bn_relu(inputs, 16, 3, name="conv1", bn_name="bn1", relu_name="relu")
    for stage, (channels, stride) in enumerate([(32, 1), (64, 2), (128, 2)]):
        name = f"layer{stage + 1}_0"
        shortcut = batch_norm(conv(x, channels, 1, stride=stride, name=f"{name}_downsample_0"),
                              f"{name}_downsample_1")
        x = bottle2neck(x, shortcut, width=4, scale=4, cardinality=1, out_channels=channels,
                        stride=stride, is_stage=True, stage_pool=True, name=name)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(classes, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name="tiny_res2net")


@pytest.mark.core
@pytest.mark.parametrize("plus", [False, True])
def test_maps_equal_the_closed_form_on_conv_pool_dense(plus):
    # Conv -> global average pool -> softmax Dense: d logit_c / dA_k(i, j) = W[k, c] / (h w),
    # so both weightings have a NumPy closed form. Runs on the JAX backend too (`make test-jax`).
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    features = layers.Conv2D(6, 3, strides=2, padding="same", name="features")(inputs)
    pooled = layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, layers.Dense(4, activation="softmax", name="fc")(pooled))
    images = np.random.default_rng(0).normal(size=(3, 12, 12, 3)).astype("float32")

    result = cam.class_activation_maps(model, images, class_index=2, plus=plus)
    a = np.asarray(keras.Model(inputs, features)(images), np.float64)  # (3, 6, 6, 6)
    g = np.broadcast_to(np.asarray(model.get_layer("fc").kernel)[:, 2] / 36.0, a.shape)
    if plus:
        alpha = g ** 2 / (2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    else:
        weights = g.mean(axis=(1, 2))
    expected = np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0)
    small = keras.ops.convert_to_numpy(keras.ops.image.resize(
        expected[..., None].astype("float32"), (12, 12), interpolation="bilinear"))[..., 0]
    small = small / small.max(axis=(1, 2), keepdims=True)
    assert result.maps.shape == (3, 12, 12) and result.layer == "features"
    np.testing.assert_allclose(result.maps, small, atol=1e-5)
    assert result.maps.max() == pytest.approx(1.0) and result.maps.min() >= 0
    np.testing.assert_array_equal(result.classes, [2, 2, 2])


@pytest.mark.slow
def test_trained_res2net_maps_peak_inside_the_object():
    keras.utils.set_random_seed(0)
    images, labels, _ = shapes_dataset(512, seed=0)
    model = tiny_res2net(classes=3)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=32, epochs=2, verbose=0)  # 32 steps
    test_images, test_labels, masks = shapes_dataset(96, seed=1)
    for plus in (False, True):
        result = cam.class_activation_maps(model, test_images, plus=plus)
        assert result.layer == "layer3_0_out" and result.maps.shape == (96, 32, 32)
        assert np.mean(result.classes == test_labels) >= 0.95
        peaks = result.maps.reshape(96, -1).argmax(axis=1)
        inside = masks.reshape(96, -1)[np.arange(96), peaks].mean()
        # Measured: 0.98 (Grad-CAM and ++); a peak placed at random lands on the object ~10%.
        assert inside >= 0.9, (plus, inside)
    # An earlier stage by name: 16x16 there, still upsampled to the image.
    assert cam.grad_cam(model, test_images[:2], layer="layer2").shape == (2, 32, 32)


def test_keras_applications_resnet50_works_unchanged():
    # The paper's comparison network. Untrained, so class 3's classifier weights are set
    # positive: its Grad-CAM on the last stage is then sum_k W[k, 3] A_k (normalised), which
    # NumPy checks; an earlier stage picked by name gets a map of the right size.
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    fc = model.get_layer("predictions")
    kernel = np.asarray(fc.kernel).copy()
    kernel[:, 3] = np.random.default_rng(1).uniform(0.1, 1.0, kernel.shape[0])
    fc.kernel.assign(kernel)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")

    result = cam.class_activation_maps(model, images, class_index=3)
    assert result.layer == "conv5_block3_out" and result.maps.shape == (2, 64, 64)
    last = model.get_layer("conv5_block3_out")
    features = np.asarray(keras.Model(model.input, last.output)(images), np.float64)
    expected = np.einsum("nhwk,k->nhw", features, kernel[:, 3])
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(
        expected[..., None].astype("float32"), (64, 64), interpolation="bilinear"))[..., 0]
    np.testing.assert_allclose(result.maps, resized / resized.max(axis=(1, 2), keepdims=True),
                               atol=1e-4)
    assert result.maps.std() > 0.05  # not a constant map
    earlier = cam.class_activation_maps(model, images, class_index=3, layer="conv4")
    assert earlier.layer == "conv4_block6_out" and earlier.maps.shape == (2, 64, 64)
    assert 0 <= earlier.maps.min() and earlier.maps.max() <= 1


def test_bad_layer_and_class_are_clear():
    model = tiny_res2net(classes=3)
    images = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="'layer9' is no stage.*Valid stages: layer1, layer2, "
                                         "layer3"):
        cam.grad_cam(model, images, layer="layer9")
    with pytest.raises(ValueError, match="'avg_pool' has no 4-D output"):
        cam.grad_cam(model, images, layer="avg_pool")
    with pytest.raises(ValueError, match="--class 3 is out of range.*3 classes \\(0..2\\)"):
        cam.grad_cam(model, images, class_index=3)
    with pytest.raises(ValueError, match="skip connection crosses it"):
        cam.grad_cam(model, images, layer="layer2_0_relu1")


def test_cli_writes_png_and_npy_and_fails_cleanly(tmp_path, capsys):
    from PIL import Image

    keras.utils.set_random_seed(0)
    model_path = str(tmp_path / "tiny.keras")
    tiny_res2net(classes=3).save(model_path)
    images, _, _ = shapes_dataset(2, seed=3)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"shape{i}.png"))
        Image.fromarray(np.round((image + 1) * 127.5).astype(np.uint8)).save(paths[-1])
    out = tmp_path / "maps"

    assert cam.main([*paths, "--model", model_path, "--out_dir", str(out), "--class", "1"]) == 0
    assert sorted(os.listdir(out)) == ["shape0_gradcam.npy", "shape0_gradcam.png",
                                       "shape1_gradcam.npy", "shape1_gradcam.png"]
    raw = np.load(out / "shape0_gradcam.npy")
    assert raw.shape == (32, 32) and raw.dtype == np.float32 and 0 <= raw.min() <= raw.max() <= 1
    with Image.open(out / "shape0_gradcam.png") as blended:
        assert blended.size == (32, 32) and blended.mode == "RGB"
    assert "class 1" in capsys.readouterr().out

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    cases = [([str(bad)], "broken.png: not an image"),
             (["--class", "7"], "--class 7 is out of range: tiny_res2net has 3 classes"),
             (["--layer", "stage9"], "Valid stages: layer1, layer2, layer3")]
    for extra, message in cases:
        fresh = tmp_path / f"out_{len(message)}"
        argv = [*paths, *extra] if extra[0].startswith("--") else extra
        code = cam.main([*argv, "--model", model_path, "--out_dir", str(fresh)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not fresh.exists() or not os.listdir(fresh)  # nothing half-written
