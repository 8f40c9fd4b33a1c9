"""`LearningRateOncePerStep`: the schedule runs once per step, and the updates stay Keras'."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.detection.schedules import WarmupStepDecay
from keras_res2net.training.optim import AdamW, TorchSGD

STEPS = 6


class CountingSchedule(WarmupStepDecay):
    """The detection schedule (warm-up, then a drop), counting how often it is evaluated."""

    def __init__(self):
        super().__init__(0.05, warmup_steps=3, warmup_ratio=0.1, decay_steps=(4,))
        self.calls = 0

    def __call__(self, step):
        self.calls += 1
        return super().__call__(step)


def _variables(seed: int = 0) -> list[keras.Variable]:
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=shape).astype(np.float32))
            for shape in ((3, 4), (4,), (2, 2, 3))]


def _train(optimizer, variables, compiled: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=v.shape).astype(np.float32) for v in variables]
             for _ in range(STEPS)]

    def step(step_grads):
        optimizer.apply(step_grads, variables)

    run = tf.function(step) if compiled else step
    for step_grads in grads:
        run([tf.constant(g) for g in step_grads])
    return [np.asarray(v) for v in variables]


def _traced_schedule_calls(make_optimizer) -> int:
    schedule = CountingSchedule()
    optimizer = make_optimizer(schedule)
    variables = _variables()
    optimizer.build(variables)
    schedule.calls = 0
    grads = [tf.zeros(v.shape) for v in variables]
    tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function()
    return schedule.calls


@pytest.mark.parametrize("make_optimizer", [
    lambda s: AdamW(s, weight_decay=1e-2),
    lambda s: TorchSGD(s, momentum=0.9, weight_decay=1e-2, decay="decoupled"),
], ids=["adamw", "torch_sgd_decoupled"])
def test_a_traced_step_evaluates_the_schedule_once(make_optimizer):
    assert _traced_schedule_calls(make_optimizer) == 1
    # Keras' own AdamW evaluates it again for every decayed variable: the difference above.
    keras_calls = _traced_schedule_calls(lambda s: keras.optimizers.AdamW(s, weight_decay=1e-2))
    assert keras_calls > 3


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_updates_equal_keras_adamw_step_by_step(compiled):
    ours = _train(AdamW(CountingSchedule(), weight_decay=1e-2), _variables(), compiled)
    reference = _train(keras.optimizers.AdamW(CountingSchedule(), weight_decay=1e-2),
                       _variables(), compiled)
    start = [np.asarray(v) for v in _variables()]
    for got, want, before in zip(ours, reference, start, strict=True):
        assert not np.allclose(got, before)  # the steps moved the weights
        np.testing.assert_array_equal(got, want)


def test_serializes_and_keeps_a_settable_learning_rate():
    optimizer = AdamW(0.01, weight_decay=1e-3)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(clone, AdamW)
    assert clone.weight_decay == pytest.approx(1e-3)
    clone.learning_rate = 0.5
    assert float(clone.learning_rate) == pytest.approx(0.5)
