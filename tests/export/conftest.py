"""Fixtures for the export tests: tiny Res2Nets saved as .keras files, built once per session.

`tiny_model_path`: random weights, softmax head, 32x32 inputs (float formats only need the
artifact to compute what the model computes). `digits_model_path`: the same architecture
trained for a few epochs on the embedded digits (logits head), so the int8 check measures
agreement on real images with a model that really classifies them.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import keras_res2net
from keras_res2net.datasets import load_digits

TINY = dict(layers=(1, 1, 1, 1), base_width=8, input_shape=(32, 32, 3), classes=10)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    keras.utils.set_random_seed(0)
    model = keras_res2net.create_model("res2net50_26w_4s", **TINY)
    path = os.path.join(tmp_path_factory.mktemp("models"), "tiny.keras")
    model.save(path)
    return path


@pytest.fixture(scope="session")
def digits_model_path(tmp_path_factory) -> str:
    """Seeded as the learning tests are (`RES2NET_LEARNING_SEED`, default 0), so the int8
    agreement bound can be set from its spread over seeds (tools/learning_spread.py)."""
    keras.utils.set_random_seed(int(os.environ.get("RES2NET_LEARNING_SEED", "0")))
    digits = load_digits(image_size=32)
    model = keras_res2net.create_model("res2net50_26w_4s", classifier_activation=None, **TINY)
    # The learning rate decays to 0 over the run: a model that ends on a large step keeps
    # near-ties that int8 rounding flips (the exporter's own int8 check needs 99% agreement).
    steps = 3 * (len(digits.train_labels) // 64 + 1)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    images = np.asarray(keras_res2net.preprocess_input(digits.train_images))
    model.fit(images, digits.train_labels, epochs=3, batch_size=64, verbose=0)
    val = np.asarray(keras_res2net.preprocess_input(digits.val_images))
    _, accuracy = model.evaluate(val, digits.val_labels, verbose=0)
    assert accuracy > 0.8, f"the digits fixture did not learn (val accuracy {accuracy:.2f})"
    path = os.path.join(tmp_path_factory.mktemp("models"), "digits.keras")
    model.save(path)
    return path
