"""The heads of the two-stage detectors (mmdetection's RPNHead, Shared2FCBBoxHead, FCNMaskHead).

The cascades reuse them: `BoxHead(class_agnostic=True)` regresses one box per RoI, and
`MaskHead(with_conv_res=True)` is HTC's mask head, which adds a 1x1-conv projection of the
previous stage's mask features to its input (mask information flow).
"""

from __future__ import annotations

import keras
from keras import layers, ops


def normal_init(stddev: float):
    """mmdetection's `normal_init(std=...)` for the RPN convs and the box classifier (0.01)
    and regressor (0.001). A new initializer per layer: one shared, unseeded Keras
    initializer draws the same values for every layer of the same shape (the three cascade
    stages' classifiers would start equal) and is seeded at import time, out of reach of
    `keras.utils.set_random_seed`."""
    return keras.initializers.RandomNormal(stddev=stddev)


def kaiming_fan_out():
    """PyTorch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: an untruncated
    normal of variance 2 / fan_out, what mmdetection's FCNMaskHead and HTCMaskHead give every
    conv (mmcv ConvModule), the deconv, `conv_logits` and `conv_res`. For a transposed conv,
    PyTorch's fan_out and Keras' both count the input channels times the kernel area."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


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
                                  kernel_initializer=normal_init(0.01), name="rpn_conv")
        self.cls = layers.Conv2D(num_anchors, 1, kernel_initializer=normal_init(0.01),
                                 name="rpn_cls")
        self.reg = layers.Conv2D(4 * num_anchors, 1, kernel_initializer=normal_init(0.01),
                                 name="rpn_reg")

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
    """Two shared FC layers, then class logits (background at 0) and box deltas.

    Deltas are class-specific (B, N, K, 4) by default; `class_agnostic=True` gives one box
    per RoI, (B, N, 1, 4), as every Cascade R-CNN stage uses.
    """

    def __init__(self, num_classes: int, fc_dim: int = 1024, class_agnostic: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.class_agnostic = class_agnostic
        self.box_classes = 1 if class_agnostic else num_classes
        self.fc1 = layers.Dense(fc_dim, activation="relu", name="shared_fc1")
        self.fc2 = layers.Dense(fc_dim, activation="relu", name="shared_fc2")
        self.cls = layers.Dense(num_classes + 1, kernel_initializer=normal_init(0.01),
                                name="fc_cls")
        self.reg = layers.Dense(4 * self.box_classes, kernel_initializer=normal_init(0.001),
                                name="fc_reg")

    def build(self, input_shape):
        features = 1
        for size in input_shape[2:]:
            features *= size
        self.fc1.build((None, features))
        self.fc2.build((None, self.fc_dim))
        self.cls.build((None, self.fc_dim))
        self.reg.build((None, self.fc_dim))

    def call(self, pooled):
        """(B, N, 7, 7, C) RoI features -> logits (B, N, K+1) and deltas (B, N, K or 1, 4)."""
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (shape[0] * shape[1], -1))
        x = self.fc2(self.fc1(x))
        logits = ops.reshape(self.cls(x), (shape[0], shape[1], self.num_classes + 1))
        deltas = ops.reshape(self.reg(x), (shape[0], shape[1], self.box_classes, 4))
        return logits, deltas

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "fc_dim": self.fc_dim,
                "class_agnostic": self.class_agnostic}


class MaskHead(keras.layers.Layer):
    """Four 3x3 convs, a 2x2 stride-2 deconv (14 -> 28) and per-class mask logits.

    With `with_conv_res=True` (HTC's stages after the first) `call` also takes `residual`,
    the previous stage's mask features, adds their 1x1 conv + ReLU to the input, and
    `return_features=True` returns the features after the convs for the next stage.
    """

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4,
                 with_conv_res: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.with_conv_res = with_conv_res
        init = kaiming_fan_out()
        self.conv_res = None  # made in `build`: it maps to the RoI features' width
        self.convs = [layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    kernel_initializer=init, name=f"mask_conv{i}")
                      for i in range(num_convs)]
        self.deconv = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                                             kernel_initializer=init, name="mask_deconv")
        self.logits = layers.Conv2D(num_classes, 1, kernel_initializer=kaiming_fan_out(),
                                    name="mask_logits")

    def build(self, input_shape):
        shape = (None, *input_shape[2:])
        if self.with_conv_res:
            self.conv_res = layers.Conv2D(shape[-1], 1, activation="relu",
                                          kernel_initializer=kaiming_fan_out(),
                                          name="mask_conv_res")
            self.conv_res.build((*shape[:3], self.channels))
        for conv in self.convs:
            conv.build(shape)
            shape = (*shape[:3], self.channels)
        self.deconv.build(shape)
        self.logits.build((None, 2 * shape[1], 2 * shape[2], self.channels))

    def features(self, pooled, residual=None):
        """The convs' output (B, N, 14, 14, C'): what HTC passes to the next stage's head."""
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (shape[0] * shape[1], shape[2], shape[3], shape[4]))
        if residual is not None:
            if self.conv_res is None:
                raise ValueError(f"{self.name} was built without with_conv_res; it takes no "
                                 "residual mask features.")
            x = x + self.conv_res(ops.reshape(residual, (-1, shape[2], shape[3],
                                                         self.channels)))
        for conv in self.convs:
            x = conv(x)
        return ops.reshape(x, (shape[0], shape[1], shape[2], shape[3], self.channels))

    def call(self, pooled, residual=None, return_features: bool = False):
        """(B, N, 14, 14, C) -> (B, N, 28, 28, K) logits [and the features, see `features`]."""
        features = self.features(pooled, residual)
        shape = ops.shape(features)
        x = ops.reshape(features, (shape[0] * shape[1], shape[2], shape[3], self.channels))
        x = self.logits(self.deconv(x))
        logits = ops.reshape(x, (shape[0], shape[1], 2 * shape[2], 2 * shape[3],
                                 self.num_classes))
        return (logits, features) if return_features else logits

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "channels": self.channels, "num_convs": self.num_convs,
                "with_conv_res": self.with_conv_res}
