"""The Res2Net bottleneck (Bottle2neck), written once for every variant.

Layer names are the reference's module paths with dots turned into underscores
(`layer2.0.convs.1` -> `layer2_0_convs_1`), which is what lets checkpoints map by name.
Padding is explicit wherever PyTorch's symmetric padding differs from Keras' "same"
(strided convs and pools), so outputs match the reference at any input size.
"""

from __future__ import annotations

from keras import layers

BN_EPSILON = 1e-5  # PyTorch BatchNorm2d default
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1, expressed the Keras way


def batch_norm(x, name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def conv(x, filters: int, kernel_size: int, name: str, stride: int = 1, groups: int = 1,
         use_bias: bool = False):
    """A convolution padded like PyTorch's `padding=kernel_size // 2`."""
    pad = kernel_size // 2
    if stride > 1 and pad:
        # Keras "same" pads bottom/right only at stride 2; PyTorch pads both sides.
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(filters, kernel_size, strides=stride, padding=padding, groups=groups,
                         use_bias=use_bias, name=name)(x)


def avg_pool_3x3_count_pad(x, stride: int, name: str):
    """PyTorch `AvgPool2d(3, stride, padding=1)`: the zero padding counts in the average."""
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return layers.AveragePooling2D(3, strides=stride, padding="valid", name=name)(x)


def bottle2neck(x, shortcut, *, width: int, scale: int, cardinality: int, out_channels: int,
                stride: int, is_stage: bool, stage_pool: bool, name: str,
                fuse_stage_convs: bool = False, stage_conv_last: bool = False):
    """Res2Net block: 1x1 conv, split into `scale` groups, hierarchical 3x3 convs, 1x1 conv.

    `is_stage` marks the first block of a stage: its 3x3 convs see independent splits (so they
    can run as one grouped conv, `fuse_stage_convs=True`) and the last split is average-pooled;
    otherwise each split adds the previous conv's output before its own conv. The last split
    passes through unchanged and is concatenated last, as in the reference code.
    `stage_pool=False` is mmdetection's variant, which skips the pool when the stage block has
    stride 1. `shortcut` is the residual input. Separate convs are the default: on TensorFlow/CPU
    Keras runs grouped convs through a per-call XLA function, measured slower here
    (benchmarks/inference.py); both forms give the same numbers.
    `stage_conv_last=True` gives the stage block's last split its own 3x3 conv instead of the
    pool (all `scale` splits convolved): the CIFAR Res2NeXt-29 (see `keras_res2net.cifar`).
    """
    out = conv(x, width * scale, 1, name=f"{name}_conv1")
    out = layers.ReLU(name=f"{name}_relu1")(batch_norm(out, f"{name}_bn1"))
    num_convs = scale if (is_stage and stage_conv_last and scale > 1) else max(1, scale - 1)

    if is_stage and fuse_stage_convs:
        # Independent splits: one grouped conv + one BN equal `num_convs` separate ones.
        head = out if scale == 1 else out[..., : num_convs * width]
        branches = conv(head, num_convs * width, 3, stride=stride,
                        groups=num_convs * cardinality, name=f"{name}_convs")
        branches = [layers.ReLU(name=f"{name}_relu_convs")(batch_norm(branches, f"{name}_bns"))]
    else:
        branches = []
        sp = None
        for i in range(num_convs):
            split = out if scale == 1 else out[..., i * width:(i + 1) * width]
            if is_stage or sp is None:
                sp = split
            else:
                sp = layers.Add(name=f"{name}_add_{i}")([sp, split])
            sp = conv(sp, width, 3, stride=stride, groups=cardinality, name=f"{name}_convs_{i}")
            sp = layers.ReLU(name=f"{name}_relu_convs_{i}")(batch_norm(sp, f"{name}_bns_{i}"))
            branches.append(sp)
    if num_convs < scale:
        last = out[..., num_convs * width:]
        if is_stage and (stage_pool or stride > 1):
            last = avg_pool_3x3_count_pad(last, stride, name=f"{name}_pool")
        branches.append(last)

    out = branches[0] if len(branches) == 1 else layers.Concatenate(name=f"{name}_cat")(branches)
    out = conv(out, out_channels, 1, name=f"{name}_conv3")
    out = batch_norm(out, f"{name}_bn3")
    out = layers.Add(name=f"{name}_add")([out, shortcut])
    return layers.ReLU(name=f"{name}_out")(out)


def conv_bn_relu(x, filters: int, kernel_size: int, name: str, bn_name: str, stride: int = 1,
                 relu_name: str | None = None):
    """Conv + BN + ReLU with explicit layer names (the stems and DLA's conv levels)."""
    x = conv(x, filters, kernel_size, stride=stride, name=name)
    x = batch_norm(x, bn_name)
    return layers.ReLU(name=relu_name or f"{name}_relu")(x)


def max_pool_3x3_s2(x, name: str):
    """PyTorch `MaxPool2d(3, 2, padding=1)` after a ReLU: zero padding equals -inf padding."""
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)
