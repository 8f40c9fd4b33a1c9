"""Feature pyramid decoder (mmdetection's FPN with `num_outs=5`, no normalisation).

Laterals (1x1) on P2..P5, top-down nearest-neighbour upsampling and addition, a 3x3 output
conv per level, and P6 as a stride-2 max pool (kernel 1) of the P5 output.
"""

from __future__ import annotations

import keras
from keras import layers, ops


class FPN(keras.layers.Layer):
    """Maps `{"P2": ..., "P5": ...}` backbone features to `{"P2": ..., "P6": ...}`."""

    def __init__(self, channels: int = 256, levels=("P2", "P3", "P4", "P5"),
                 extra_pool_level: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.levels = tuple(levels)
        self.extra_pool_level = extra_pool_level
        # mmdetection's FPN init_cfg: Xavier (Glorot) uniform on every conv, zero biases.
        init = keras.initializers.GlorotUniform()
        self.laterals = {lv: layers.Conv2D(channels, 1, kernel_initializer=init,
                                           name=f"lateral_{lv}") for lv in self.levels}
        self.outputs_convs = {lv: layers.Conv2D(channels, 3, padding="same",
                                                kernel_initializer=init, name=f"output_{lv}")
                              for lv in self.levels}
        self.upsample = layers.UpSampling2D(2, interpolation="nearest")
        self.pool = layers.MaxPooling2D(1, strides=2)

    def call(self, features: dict) -> dict:
        laterals = {lv: self.laterals[lv](features[lv]) for lv in self.levels}
        for upper, lower in zip(self.levels[:0:-1], self.levels[-2::-1], strict=True):
            up = self.upsample(laterals[upper])
            up = up[:, : ops.shape(laterals[lower])[1], : ops.shape(laterals[lower])[2]]
            laterals[lower] = laterals[lower] + up
        outputs = {lv: self.outputs_convs[lv](laterals[lv]) for lv in self.levels}
        if self.extra_pool_level:
            top = int(self.levels[-1][1:])
            outputs[f"P{top + 1}"] = self.pool(outputs[self.levels[-1]])
        return outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels, "levels": list(self.levels),
                "extra_pool_level": self.extra_pool_level}
