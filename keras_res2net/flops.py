"""Count a model's multiply-accumulates (MACs) from its layers' static output shapes.

Convolutions and dense layers only (BatchNorm folds into the conv at inference; adds and pools
are negligible), the convention of the published GFLOPs figures for ResNets and Res2Nets.
"""

from __future__ import annotations

import math

import keras
from keras import layers


def _layer_macs(layer) -> int:
    if isinstance(layer, layers.Conv2D):
        out_shape = layer.output.shape
        kh, kw = layer.kernel_size
        in_channels = layer.input.shape[-1]
        return math.prod(out_shape[1:]) * kh * kw * in_channels // layer.groups
    if isinstance(layer, layers.Dense):
        return math.prod(layer.kernel.shape) * math.prod(layer.output.shape[1:-1] or [1])
    if isinstance(layer, keras.Model):
        return count_macs(layer)
    return 0


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates for one image; the model's input size must be static."""
    shape = model.inputs[0].shape
    if any(dim is None for dim in shape[1:]):
        raise ValueError(
            f"count_macs needs a static input size; {model.name} takes {tuple(shape)}. Build it "
            "with e.g. input_shape=(224, 224, 3).")
    return sum(_layer_macs(layer) for layer in model.layers)
