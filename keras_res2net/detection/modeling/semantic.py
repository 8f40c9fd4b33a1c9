"""HTC's semantic branch: mmdetection's FusedSemanticHead and RoI pooling of its feature.

Every FPN level (P2..P6) is resized to the fusion level's size (bilinear with
`align_corners=True`, as mmdetection), passed through its own 1x1 conv + ReLU, and summed;
`num_convs` 3x3 convs + ReLU follow. From there a 1x1 conv gives per-pixel class logits and,
in parallel, a 1x1 conv + ReLU the semantic feature, whose RoI features (one level, stride 8)
HTC adds to the box and mask RoI features. Resizing is written with `keras.ops` gathers, not
`keras.ops.image.resize`, which refuses sizes that are only known at run time (`tf.function`
over images of varying size) and has no `align_corners`.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from keras_res2net.detection.modeling.heads import kaiming_fan_out
from keras_res2net.detection.modeling.roi_align import multilevel_roi_align

# mmdetection: Kaiming normal, fan_out, for every conv of the head (conv_logits included);
# `kaiming_fan_out()` makes a new initializer per layer, so equal-shaped convs differ.


def _resize_axis(x, axis: int, out_size, align_corners: bool):
    """Linear interpolation of (B, H, W, C) `x` along `axis` (1 or 2) to `out_size` samples."""
    in_size = ops.shape(x)[axis]
    in_f, out_f = ops.cast(in_size, "float32"), ops.cast(out_size, "float32")
    positions = ops.cast(ops.arange(out_size), "float32")
    if align_corners:  # first and last samples sit on the first and last input pixels
        source = positions * (in_f - 1.0) / ops.maximum(out_f - 1.0, 1.0)
    else:  # pixel centres, as PyTorch and tf.image.resize (no antialiasing)
        source = ops.maximum((positions + 0.5) * in_f / out_f - 0.5, 0.0)
    low = ops.minimum(ops.floor(source), in_f - 1.0)
    frac = source - low
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, ops.cast(in_size, "int32") - 1)
    frac = ops.cast(ops.reshape(frac, (1, -1, 1, 1) if axis == 1 else (1, 1, -1, 1)), x.dtype)
    return ops.take(x, low, axis=axis) * (1.0 - frac) + ops.take(x, high, axis=axis) * frac


def resize_bilinear(images, size, align_corners: bool = True):
    """Bilinear resize of (B, H, W, C) `images` to `size` (height, width), which may be
    tensors known only at run time; `align_corners` as PyTorch's `F.interpolate`."""
    images = _resize_axis(images, 1, size[0], align_corners)
    return _resize_axis(images, 2, size[1], align_corners)


class FusedSemanticHead(keras.layers.Layer):
    """Maps the FPN's `{"P2": ..., "P6": ...}` to `(logits, semantic_feature)` at the
    fusion level's size: (B, h, w, num_classes) and (B, h, w, channels)."""

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4,
                 fusion_level: str = "P3", levels=("P2", "P3", "P4", "P5", "P6"),
                 align_corners: bool = True, **kwargs):
        super().__init__(**kwargs)
        if fusion_level not in levels:
            raise ValueError(f"fusion_level {fusion_level!r} is not one of {list(levels)}.")
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.fusion_level = fusion_level
        self.levels = tuple(levels)
        self.align_corners = align_corners
        self.laterals = {lv: layers.Conv2D(channels, 1, activation="relu",
                                           kernel_initializer=kaiming_fan_out(),
                                           name=f"lateral_{lv}")
                         for lv in self.levels}
        self.convs = [layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    kernel_initializer=kaiming_fan_out(), name=f"semantic_conv{i}")
                      for i in range(num_convs)]
        self.conv_embedding = layers.Conv2D(channels, 1, activation="relu",
                                            kernel_initializer=kaiming_fan_out(),
                                            name="conv_embedding")
        self.conv_logits = layers.Conv2D(num_classes, 1, kernel_initializer=kaiming_fan_out(),
                                         name="conv_logits")

    def call(self, features: dict):
        fused = features[self.fusion_level]
        size = (ops.shape(fused)[1], ops.shape(fused)[2])
        x = self.laterals[self.fusion_level](fused)
        for level in self.levels:
            if level != self.fusion_level:  # resized first, then its lateral, as mmdetection
                resized = resize_bilinear(features[level], size, self.align_corners)
                x = x + self.laterals[level](resized)
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(x), self.conv_embedding(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "channels": self.channels, "num_convs": self.num_convs,
                "fusion_level": self.fusion_level, "levels": list(self.levels),
                "align_corners": self.align_corners}


def semantic_roi_features(semantic_feature, rois, output_size: int, stride: int = 8,
                          sampling_ratio: int = 0, adaptive_grid: int | None = None):
    """RoIAlign of (B, N, 4) xyxy RoIs (padded-image pixels) from the single (B, h, w, C)
    semantic feature map of `stride`: (B, N, S, S, C) float32 (mmdetection's
    `semantic_roi_extractor`, one level, `featmap_strides=[8]`). `sampling_ratio` and
    `adaptive_grid` as in `roi_align.roi_align_flat`."""
    level = int(round(math.log2(stride)))
    if stride < 1 or 2**level != stride:
        raise ValueError(f"stride must be a power of two; got {stride}.")
    return multilevel_roi_align({f"P{level}": semantic_feature}, rois,
                                output_size=output_size, sampling_ratio=sampling_ratio,
                                adaptive_grid=adaptive_grid)
