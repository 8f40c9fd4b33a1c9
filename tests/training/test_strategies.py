"""The same custom loop runs under one_device and mirrored (one CPU replica here), and its
steps are the plain GradientTape steps of the recipe: the trained weights equal a reference
computed without tf.distribute on the same batches from the same start."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.training import Trainer, optim
from keras_res2net.training.data import train_dataset


def _reference_weights(trainer: Trainer, start: list, steps: int) -> list:
    """`steps` eager steps on a copy of the model: the loss and update the recipe documents
    (cross-entropy on logits + coupled L2, SGD with the schedule), no strategy, no tf.function."""
    config = trainer.config
    model = keras.models.clone_model(trainer.model)
    model.set_weights(start)
    variables = model.trainable_variables
    optimizer = optim.make_optimizer(config, trainer.steps_per_epoch, variables)
    batches = iter(train_dataset(trainer.source, config, None, epoch=0))
    for _ in range(steps):
        images, labels = next(batches)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
                labels, logits, from_logits=True))
            loss += optim.l2_penalty(config, variables)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    return [np.array(v) for v in variables]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_loop_under_strategy(tmp_path, tiny_config, strategy):
    # No random crop or flip: the reference's pipeline yields exactly the trainer's batches.
    config = tiny_config(tmp_path, strategy=strategy, epochs=1, steps_per_epoch=2, flip=False,
                         crop_scale_min=1.0)
    trainer = Trainer(config)
    expected = {"one_device": tf.distribute.OneDeviceStrategy,
                "mirrored": tf.distribute.MirroredStrategy}[strategy]
    assert isinstance(trainer.strategy, expected)
    before = [np.array(v) for v in trainer.model.trainable_variables]
    start = [w.copy() for w in trainer.model.get_weights()]
    result = trainer.train()
    assert int(trainer.step.numpy()) == 2 and result.images == 359
    after = [np.array(v) for v in trainer.model.trainable_variables]
    # Gradients were applied: every trainable weight moved (BatchNorm statistics, which a
    # forward pass alone changes, are not trainable and not counted here).
    unmoved = [v.path for v, a, b in zip(trainer.model.trainable_variables, before, after,
                                         strict=True) if np.array_equal(a, b)]
    assert not unmoved, unmoved
    # ...and they are the reference's steps.
    reference = _reference_weights(trainer, start, steps=2)
    for variable, got, want in zip(trainer.model.trainable_variables, after, reference,
                                   strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=variable.path)
    assert os.path.exists(os.path.join(tmp_path, "model.keras"))
