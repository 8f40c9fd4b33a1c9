"""`--deterministic` refuses, before the first step, a train step it cannot make repeat:
ops without a deterministic kernel (named, per device) and stateful random draws.

Broken on purpose: without the trainer's `determinism.check_step` call the task below trains
its step (no error) and writes a checkpoint.
"""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf
from loopback import op_determinism_restored

from keras_res2net.training import determinism
from keras_res2net.training import trainer as trainer_lib


def test_ops_without_a_deterministic_kernel_are_named_per_device():
    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            crops = tf.image.crop_and_resize(images, [[0.0, 0.0, 1.0, 1.0]], [0], (2, 2))
            loss = tf.reduce_sum(crops * tf.random.uniform(tf.shape(crops)))
        return tape.gradient(loss, images)

    types = determinism.op_types(step.get_concrete_function(tf.TensorSpec((1, 4, 4, 1))))
    assert determinism.nondeterministic_ops(types, gpu=False) == ["RandomUniform"]
    assert determinism.nondeterministic_ops(types, gpu=True) == [
        "CropAndResizeGradBoxes", "CropAndResizeGradImage", "RandomUniform"]


class NoisyTask(trainer_lib.Task):
    """A one-weight regression whose step adds noise from a stateful random op."""

    global_batch_size = 2

    def build_model(self):
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])

    def build_optimizer(self, model):
        return keras.optimizers.SGD(0.1)

    def train_dataset(self, context, epoch, skip):
        return tf.data.Dataset.from_tensors(([[1.0], [2.0]], [[1.0], [2.0]])).repeat()

    def train_step(self, inputs, model, optimizer, num_replicas):
        features, targets = inputs
        with tf.GradientTape() as tape:
            noisy = features + tf.random.uniform(tf.shape(features))
            loss = tf.reduce_mean((model(noisy) - targets) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {"loss": loss}

    def export(self, model, path):
        model.save_weights(path)


def test_trainer_refuses_a_stateful_random_step_before_training(tmp_path):
    with op_determinism_restored():
        trainer = trainer_lib.Trainer(NoisyTask(), tmp_path, tf.distribute.get_strategy(),
                                      steps_per_epoch=2, total_steps=2, deterministic=True)
        with pytest.raises(ValueError, match=r"^--deterministic: the train step uses "
                           r"RandomUniform \(stateful random draws, in no checkpoint\)"):
            trainer.train()
    assert int(trainer.step.numpy()) == 0
    assert not (tmp_path / trainer_lib.CHECKPOINTS).exists()  # nothing saved
