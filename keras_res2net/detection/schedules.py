"""mmdetection's learning-rate schedule: linear warm-up, then step decay by 10x."""

from __future__ import annotations

import keras
from keras import ops


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`base * factor(step)`: warm-up from `warmup_ratio` to 1 over `warmup_steps`, times
    0.1 after each boundary in `decay_steps`."""

    def __init__(self, base: float, warmup_steps: int, warmup_ratio: float, decay_steps):
        self.base = float(base)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.decay_steps = tuple(int(s) for s in decay_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step / max(self.warmup_steps, 1), 1.0)
        warmup = self.warmup_ratio + (1.0 - self.warmup_ratio) * progress
        drops = sum(ops.cast(step >= boundary, "float32") for boundary in self.decay_steps)
        return self.base * warmup * ops.power(0.1, drops)

    def get_config(self) -> dict:
        return {"base": self.base, "warmup_steps": self.warmup_steps,
                "warmup_ratio": self.warmup_ratio, "decay_steps": list(self.decay_steps)}
