"""The evaluation transform against an independent PIL reference of timm's
(`tests/eval_reference.py`): the training pipeline (tf.image) must agree with it to PIL's
uint8 rounding, `predict.load_eval_image` (PIL) exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from eval_reference import reference_eval, smooth_image
from PIL import Image

from keras_res2net import predict
from keras_res2net.eval_transform import eval_geometry
from keras_res2net.training.data.pipeline import center_crop
from keras_res2net.variants import PretrainedConfig


@pytest.mark.parametrize("height, width, input_size, crop_pct, resized, top_left", [
    (300, 400, 224, 0.875, (256, 341), (16, 58)),  # timm's 224/256; 341.33 truncated
    # floor(64 / 0.9) = 71; int(71 * 150 / 101) = 105; round(3.5) = 4 and round(20.5) = 20
    # (round half to even, as torchvision's Python round).
    (101, 150, 64, 0.9, (71, 105), (4, 20)),
    (150, 101, 64, 0.9, (105, 71), (20, 4)),
    (40, 40, 32, 1.0, (32, 32), (0, 0)),
])
def test_geometry_follows_torchvision(height, width, input_size, crop_pct, resized, top_left):
    box = eval_geometry(height, width, input_size, crop_pct)
    assert (box.height, box.width) == resized and (box.top, box.left) == top_left


@pytest.mark.parametrize("height, width, input_size, crop_pct", [
    (90, 120, 32, 0.875),   # shrink, landscape
    (131, 70, 32, 0.9),     # shrink, portrait, half-pixel offsets
    (20, 30, 32, 0.875),    # enlarge
    (48, 48, 48, 1.0),      # already the size
])
def test_training_eval_transform_equals_the_pil_reference(height, width, input_size, crop_pct):
    pixels = smooth_image(height, width, seed=height)
    expected = reference_eval(pixels, input_size, crop_pct).astype(np.float32)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    for source in (tf.constant(pixels), tf.constant(png.getvalue())):  # decoded, and bytes
        got = center_crop(source, input_size, crop_pct).numpy()
        assert got.shape == (input_size, input_size, 3)
        # PIL rounds its result to uint8; tf.image keeps float32: at most one grey level apart.
        assert np.abs(got - expected).max() <= 1.0
        assert np.abs(got - expected).mean() < 0.4
    # Inside tf.data (graph mode, unknown image size), as the eval pipeline runs it.
    dataset = tf.data.Dataset.from_tensors(pixels).map(
        lambda image: center_crop(image, input_size, crop_pct))
    np.testing.assert_allclose(next(iter(dataset)).numpy(), got, atol=1e-4)


def test_predict_eval_image_is_the_pil_reference(tmp_path):
    pixels = smooth_image(131, 70, seed=1)
    path = str(tmp_path / "image.png")
    Image.fromarray(pixels).save(path)
    got = predict.load_eval_image(path, PretrainedConfig(input_size=32, crop_pct=0.9))
    np.testing.assert_array_equal(got, reference_eval(pixels, 32, 0.9))
