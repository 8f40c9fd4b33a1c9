"""Preprocessing, class decoding and the MAC counter."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_res2net
from keras_res2net.flops import count_macs
from keras_res2net.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes


@pytest.mark.core  # keras.ops on each backend; the rest is NumPy or static shapes
def test_preprocess_input_is_timm_normalisation():
    images = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    out = np.asarray(keras_res2net.preprocess_input(images))
    expected = (np.array([0, 128, 255]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)


def test_decode_predictions_top_classes():
    assert len(imagenet_classes()) == 1000 and imagenet_classes()[0] == ("n01440764", "tench")
    scores = np.zeros((2, 1000), np.float32)
    scores[0, 1], scores[0, 0] = 0.9, 0.1
    scores[1, 999] = 1.0
    decoded = keras_res2net.decode_predictions(scores, top=2)
    assert decoded[0] == [("n01443537", "goldfish", pytest.approx(0.9)),
                          ("n01440764", "tench", pytest.approx(0.1))]
    assert decoded[1][0][1] == "toilet_tissue"
    with pytest.raises(ValueError, match=r"\(batch, 1000\)"):
        keras_res2net.decode_predictions(np.zeros((2, 10)))


def test_count_macs_on_a_hand_sized_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)          # 8*8*4 * 3*3*3 = 6912
    x = keras.layers.Conv2D(4, 3, strides=2, groups=2, padding="same")(x)  # 4*4*4*3*3*2 = 1152
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)                              # 40
    assert count_macs(keras.Model(inputs, outputs)) == 6912 + 1152 + 40


def test_count_macs_matches_published_figures():
    # The count is deterministic, so it is pinned exactly (any change to the counter or the
    # architecture shows); the published figures, for comparison: the paper's 4.2 and 8.1
    # GFLOPs (multiply-adds) for Res2Net-50 / -101 26w x 4s, the README table's 4.26 / 8.07.
    assert count_macs(keras_res2net.Res2Net50(input_shape=(224, 224, 3))) == 4_255_166_464
    assert count_macs(keras_res2net.Res2Net101(input_shape=(224, 224, 3))) == 8_066_974_464


def test_count_macs_needs_static_size():
    with pytest.raises(ValueError, match="static input size"):
        count_macs(keras_res2net.Res2Net50(include_top=False, layers=(1, 1, 1, 1)))
