"""The recipe: linear lr scaling, warm-up then cosine/step decay, decay off BN and biases."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_res2net.training import optim
from keras_res2net.training.config import TrainConfig, resolve_config


def _config(**kw):
    return resolve_config(TrainConfig(data="imagenet2012", **kw))


def test_reference_defaults_and_linear_scaling():
    config = _config()
    assert (config.epochs, config.batch_size, config.base_lr, config.weight_decay,
            config.momentum, config.image_size) == (100, 256, 0.1, 1e-4, 0.9, 224)
    assert optim.scaled_lr(0.1, 1024) == pytest.approx(0.4)


def test_cosine_with_linear_warmup():
    config = _config(batch_size=512, epochs=10, warmup_epochs=2.0)
    schedule = optim.make_schedule(config, steps_per_epoch=100)
    lr = [float(schedule(step)) for step in (0, 100, 200, 600, 999)]
    assert lr[0] == pytest.approx(0.0)
    assert lr[1] == pytest.approx(0.1, rel=1e-3)  # half-way through the warm-up
    assert lr[2] == pytest.approx(0.2, rel=1e-3)  # peak: 0.1 * 512 / 256
    assert lr[3] == pytest.approx(0.1, rel=1e-2)  # cosine half-way
    assert lr[4] < 1e-3


def test_step_decay():
    config = _config(schedule="step", epochs=9, warmup_epochs=0.0, step_epochs=(3, 6))
    schedule = optim.make_schedule(config, steps_per_epoch=10)
    assert [round(float(schedule(s)), 6) for s in (5, 35, 65)] == [0.1, 0.01, 0.001]


def test_weight_decay_skips_batchnorm_and_bias():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    config = _config(weight_decay=0.1)
    penalty = float(optim.l2_penalty(config, model.trainable_variables))
    kernels = [w for w in model.trainable_weights if len(w.shape) > 1]
    assert len(kernels) == 2
    expected = 0.05 * sum(float(np.sum(np.square(w.numpy()))) for w in kernels)
    assert penalty == pytest.approx(expected, rel=1e-5)
    adamw = optim.make_optimizer(_config(optimizer="adamw"), 10, model.trainable_variables)
    excluded = [v for v in model.trainable_variables if adamw._use_weight_decay(v) is False]
    assert len(excluded) == 4  # conv bias, BN gamma and beta, dense bias
