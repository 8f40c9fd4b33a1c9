"""The three heads of Mask R-CNN (mmdetection's RPNHead, Shared2FCBBoxHead, FCNMaskHead)."""

from __future__ import annotations

import keras
from keras import layers, ops

_SMALL = keras.initializers.RandomNormal(stddev=0.01)
_BOX = keras.initializers.RandomNormal(stddev=0.001)


class RPNHead(keras.layers.Layer):
    """A 3x3 conv + ReLU shared by all levels, then per-anchor objectness and box deltas.

    Returns `(scores, deltas)` per level flattened to (B, H*W*A) and (B, H*W*A, 4), in the
    anchor order of `anchors.level_anchors`.
    """

    def __init__(self, channels: int = 256, num_anchors: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.num_anchors = num_anchors
        self.conv = layers.Conv2D(channels, 3, padding="same", activation="relu",
                                  kernel_initializer=_SMALL, name="rpn_conv")
        self.cls = layers.Conv2D(num_anchors, 1, kernel_initializer=_SMALL, name="rpn_cls")
        self.reg = layers.Conv2D(4 * num_anchors, 1, kernel_initializer=_SMALL, name="rpn_reg")

    def call(self, features: dict):
        scores, deltas = {}, {}
        for level, x in features.items():
            x = self.conv(x)
            batch = ops.shape(x)[0]
            scores[level] = ops.reshape(self.cls(x), (batch, -1))
            deltas[level] = ops.reshape(self.reg(x), (batch, -1, 4))
        return scores, deltas

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels,
                "num_anchors": self.num_anchors}


class BoxHead(keras.layers.Layer):
    """Two shared FC layers, then class logits (background at 0) and class-specific deltas."""

    def __init__(self, num_classes: int, fc_dim: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.flatten = layers.Flatten()
        self.fc1 = layers.Dense(fc_dim, activation="relu", name="shared_fc1")
        self.fc2 = layers.Dense(fc_dim, activation="relu", name="shared_fc2")
        self.cls = layers.Dense(num_classes + 1, kernel_initializer=_SMALL, name="fc_cls")
        self.reg = layers.Dense(4 * num_classes, kernel_initializer=_BOX, name="fc_reg")

    def build(self, input_shape):
        features = 1
        for size in input_shape[2:]:
            features *= size
        self.fc1.build((None, features))
        self.fc2.build((None, self.fc_dim))
        self.cls.build((None, self.fc_dim))
        self.reg.build((None, self.fc_dim))

    def call(self, pooled):
        """(B, N, 7, 7, C) RoI features -> logits (B, N, K+1) and deltas (B, N, K, 4)."""
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (shape[0] * shape[1], -1))
        x = self.fc2(self.fc1(x))
        logits = ops.reshape(self.cls(x), (shape[0], shape[1], self.num_classes + 1))
        deltas = ops.reshape(self.reg(x), (shape[0], shape[1], self.num_classes, 4))
        return logits, deltas

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "fc_dim": self.fc_dim}


class MaskHead(keras.layers.Layer):
    """Four 3x3 convs, a 2x2 stride-2 deconv (14 -> 28) and per-class mask logits."""

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        init = keras.initializers.HeNormal()
        self.convs = [layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    kernel_initializer=init, name=f"mask_conv{i}")
                      for i in range(num_convs)]
        self.deconv = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                                             kernel_initializer=init, name="mask_deconv")
        self.logits = layers.Conv2D(num_classes, 1, name="mask_logits")

    def build(self, input_shape):
        shape = (None, *input_shape[2:])
        for conv in self.convs:
            conv.build(shape)
            shape = (*shape[:3], self.channels)
        self.deconv.build(shape)
        self.logits.build((None, 2 * shape[1], 2 * shape[2], self.channels))

    def call(self, pooled):
        """(B, N, 14, 14, C) -> (B, N, 28, 28, K) logits."""
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (shape[0] * shape[1], shape[2], shape[3], shape[4]))
        for conv in self.convs:
            x = conv(x)
        x = self.logits(self.deconv(x))
        return ops.reshape(x, (shape[0], shape[1], 2 * shape[2], 2 * shape[3],
                               self.num_classes))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "channels": self.channels, "num_convs": self.num_convs}
