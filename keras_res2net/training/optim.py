"""The reference's optimisation recipe: scaled learning rate, schedule, optimizer, decay.

- Learning rate: `base_lr` per 256 images, scaled linearly with the global batch size.
- Schedule: linear warm-up, then cosine decay to 0 (or step decay by `step_factor`).
- SGD (momentum 0.9, optional Nesterov) with the reference's *coupled* L2 weight decay,
  `weight_decay/2 * ||w||^2` added to the loss (PyTorch's SGD `weight_decay`); AdamW with
  Keras' decoupled decay. Either way BatchNorm parameters and biases (rank <= 1) are exempt.
- `AdamW` and `TorchSGD` evaluate a learning-rate schedule once per step
  (`LearningRateOncePerStep`), not once per variable as Keras' decoupled weight decay does.
- `TorchSGD`: PyTorch's SGD update rule (momentum buffer of gradients, coupled or decoupled
  weight decay), the optimizer of the mmdetection recipes (`DetectionTask.build_optimizer`).
"""

from __future__ import annotations

import threading

import keras
import tensorflow as tf
from keras import ops

from keras_res2net.training.config import TrainConfig


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: `base_lr` is the rate for 256 images."""
    return base_lr * global_batch / 256.0


@keras.saving.register_keras_serializable(package="keras_res2net")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then multiplied by `factor` at each boundary step."""

    def __init__(self, peak: float, warmup_steps: int, boundaries: list[int], factor: float):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.boundaries = list(boundaries)
        self.factor = factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        drops = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.boundaries] or [0.0])
        decayed = self.peak * tf.pow(self.factor, drops)
        warmup = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self) -> dict:
        return dict(peak=self.peak, warmup_steps=self.warmup_steps,
                    boundaries=self.boundaries, factor=self.factor)


def make_schedule(config: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule of `config` over `epochs * steps_per_epoch` steps."""
    peak = scaled_lr(config.base_lr, config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    if config.schedule == "step":
        boundaries = [epoch * steps_per_epoch for epoch in config.step_epochs]
        return WarmupStepDecay(peak, warmup, boundaries, config.step_factor)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total - warmup, 1), alpha=0.0,
        warmup_target=peak, warmup_steps=warmup)


WEIGHT_DECAY_FORMS = ("coupled", "decoupled")


class LearningRateOncePerStep:
    """Optimizer mixin: a learning-rate schedule is evaluated once per `apply`, not once
    per variable.

    Keras' decoupled weight decay reads `self.learning_rate` for every variable, and under a
    schedule each read builds the schedule's ops again: 189 copies in the synthetic HTC
    training step (4,500 of its 32,700 graph ops; 1.45 s a step on one CPU thread, 0.82 s
    without them). Inside `apply` the property returns the value computed at its start; the
    iteration counter the schedule reads only moves at the end of `apply`, so every read
    would have given that value. The value is thread-local because MirroredStrategy runs
    `apply` in one thread per replica; a read from another thread (a merge function)
    evaluates the schedule as Keras does.
    """

    @property
    def learning_rate(self):
        this_step = self.__dict__.get("_learning_rate_this_step")
        value = getattr(this_step, "value", None)
        return super().learning_rate if value is None else value

    @learning_rate.setter
    def learning_rate(self, value):
        super(LearningRateOncePerStep, type(self)).learning_rate.fset(self, value)

    def apply(self, grads, trainable_variables=None):
        # In `__dict__` directly: Keras' attribute tracking has nothing to track here.
        this_step = self.__dict__.setdefault("_learning_rate_this_step", threading.local())
        this_step.value = super().learning_rate
        try:
            return super().apply(grads, trainable_variables)
        finally:
            this_step.value = None


@keras.saving.register_keras_serializable(package="keras_res2net")
class AdamW(LearningRateOncePerStep, keras.optimizers.AdamW):
    """Keras' AdamW, its schedule evaluated once per step (`LearningRateOncePerStep`)."""


@keras.saving.register_keras_serializable(package="keras_res2net")
class TorchSGD(LearningRateOncePerStep, keras.optimizers.SGD):
    """SGD as PyTorch's `torch.optim.SGD` (what mmdetection trains with), step by step:

        g = grad + weight_decay * w          (decay="coupled": L2 added to the gradient)
        buf = momentum * buf + g             (the first step: buf = g)
        w = w - lr * buf                     (Nesterov: w - lr * (g + momentum * buf))

    Keras' own SGD differs twice: it keeps `lr * grad` in its momentum buffer (so a
    learning rate that changes, as in warm-up or a step decay, acts on the next steps
    late), and its `weight_decay` is decoupled, `w -= lr * weight_decay * w` outside the
    momentum, about `1 - momentum` (10x at 0.9) weaker at equilibrium than PyTorch's.
    `decay="decoupled"` keeps Keras' decay form (with PyTorch's momentum).
    `exclude_from_weight_decay` works for both forms.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float | None = None, decay: str = "coupled", **kwargs):
        if decay not in WEIGHT_DECAY_FORMS:
            raise ValueError(f"decay must be one of {WEIGHT_DECAY_FORMS}; got {decay!r}.")
        # The base class applies `weight_decay` decoupled before `update_step`; the coupled
        # form is applied in `update_step` instead.
        super().__init__(learning_rate=learning_rate, momentum=float(momentum),
                         nesterov=nesterov,
                         weight_decay=weight_decay if decay == "decoupled" else None,
                         **kwargs)
        self.decay = decay
        self.coupled_weight_decay = (weight_decay or 0.0) if decay == "coupled" else 0.0

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            gradient = gradient + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        if self.momentum == 0:
            self.assign_sub(variable, learning_rate * gradient)
            return
        buf = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buf, momentum * buf + gradient)
        step = gradient + momentum * buf if self.nesterov else buf
        self.assign_sub(variable, learning_rate * step)

    def get_config(self) -> dict:
        config = super().get_config()
        if self.decay == "coupled":
            config["weight_decay"] = self.coupled_weight_decay or None
        config["decay"] = self.decay
        return config


def is_decayed(variable) -> bool:
    """Weight decay applies to conv and dense kernels, not to BatchNorm or biases."""
    return len(variable.shape) > 1


def make_optimizer(config: TrainConfig, steps_per_epoch: int,
                   variables: list) -> keras.optimizers.Optimizer:
    """The optimizer of `config`, built for `variables` (so checkpoints restore its slots),
    wrapped in a `LossScaleOptimizer` under mixed_float16."""
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        optimizer = AdamW(learning_rate=schedule,
                          weight_decay=config.weight_decay)
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in variables if not is_decayed(v)])
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum,
                                         nesterov=config.nesterov)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def l2_penalty(config: TrainConfig, variables: list) -> tf.Tensor:
    """The coupled L2 term of the SGD recipe (zero for AdamW, which decays decoupled)."""
    if config.optimizer != "sgd" or not config.weight_decay:
        return tf.constant(0.0)
    decayed = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables
               if is_decayed(v)]
    return 0.5 * config.weight_decay * tf.add_n(decayed)
