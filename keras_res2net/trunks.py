"""The two trunks that carry Res2Net blocks: ResNet-style stages and the DLA-60 tree.

Each takes an image tensor and returns `{"P2": stride 4, "P3": 8, "P4": 16, "P5": 32}`
(the keras-hub `pyramid_outputs` convention). Layer names mirror the reference modules.
"""

from __future__ import annotations

import math

from keras import layers

from keras_res2net.blocks import batch_norm, bottle2neck, conv, conv_bn_relu, max_pool_3x3_s2

RESNET_PLANES = (64, 128, 256, 512)
RESNET_EXPANSION = 4
DLA_EXPANSION = 2


def resnet_stem(x, deep_stem: bool):
    """v1: 7x7/2 conv. v1b: three 3x3 convs (32, 32, 64). Then BN, ReLU, 3x3/2 max pool."""
    if deep_stem:
        x = conv_bn_relu(x, 32, 3, stride=2, name="conv1_0", bn_name="conv1_1")
        x = conv_bn_relu(x, 32, 3, name="conv1_3", bn_name="conv1_4")
        x = conv(x, 64, 3, name="conv1_6")
    else:
        x = conv(x, 64, 7, stride=2, name="conv1")
    x = layers.ReLU(name="relu")(batch_norm(x, "bn1"))
    return max_pool_3x3_s2(x, name="maxpool")


def resnet_shortcut(x, out_channels: int, stride: int, avg_down: bool, name: str):
    """Projection shortcut: strided 1x1 conv (v1), or 2x2 average pool then 1x1 conv (v1b)."""
    if not avg_down:
        x = conv(x, out_channels, 1, stride=stride, name=f"{name}_0")
        return batch_norm(x, f"{name}_1")
    if stride > 1:
        # ceil_mode=True, count_include_pad=False: TF's "same" average pool does exactly that.
        x = layers.AveragePooling2D(stride, strides=stride, padding="same", name=f"{name}_0")(x)
    x = conv(x, out_channels, 1, name=f"{name}_1")
    return batch_norm(x, f"{name}_2")


def resnet_trunk(x, *, layers_per_stage, base_width: int, scale: int, cardinality: int,
                 deep_stem: bool, avg_down: bool, stage_pool: bool = True,
                 fuse_stage_convs: bool = False) -> dict:
    """Stem plus four stages of Bottle2neck blocks (official `res2net.py` / `res2net_v1b.py`)."""
    return bottle2neck_stages(
        resnet_stem(x, deep_stem), 64, RESNET_PLANES, layers_per_stage,
        expansion=RESNET_EXPANSION, base_width=base_width, scale=scale, cardinality=cardinality,
        avg_down=avg_down, stage_pool=stage_pool, fuse_stage_convs=fuse_stage_convs)


def bottle2neck_stages(x, in_channels: int, planes, layers_per_stage, *, expansion: int,
                       base_width: int, scale: int, cardinality: int, avg_down: bool = False,
                       stage_pool: bool = True, stage_conv_last: bool = False,
                       fuse_stage_convs: bool = False, first_level: int = 2) -> dict:
    """The ResNet-style stages after a stem (ImageNet and CIFAR trunks): each stage's first
    block strides 2 (but the first stage's) and projects its shortcut; returns each stage's
    output as `{"P<first_level>": ..., ...}`."""
    features = {}
    for stage, (stage_planes, blocks) in enumerate(zip(planes, layers_per_stage, strict=True)):
        width = int(math.floor(stage_planes * base_width / 64.0)) * cardinality
        out_channels = stage_planes * expansion
        for index in range(blocks):
            name = f"layer{stage + 1}_{index}"
            stride = 2 if (stage > 0 and index == 0) else 1
            needs_projection = stride != 1 or in_channels != out_channels
            shortcut = (resnet_shortcut(x, out_channels, stride, avg_down, f"{name}_downsample")
                        if needs_projection else x)
            x = bottle2neck(x, shortcut, width=width, scale=scale, cardinality=cardinality,
                            out_channels=out_channels, stride=stride, is_stage=needs_projection,
                            stage_pool=stage_pool, name=name, fuse_stage_convs=fuse_stage_convs,
                            stage_conv_last=stage_conv_last)
            in_channels = out_channels
        features[f"P{stage + first_level}"] = x
    return features


def _dla_block(x, shortcut, out_channels: int, stride: int, base_width: int, scale: int,
               cardinality: int, fuse_stage_convs: bool, name: str):
    """DlaBottle2neck: the same block with expansion 2; only stride > 1 makes it a stage block."""
    width = int(math.floor(out_channels * base_width / 64)) * cardinality // DLA_EXPANSION
    return bottle2neck(x, shortcut, width=width, scale=scale, cardinality=cardinality,
                       out_channels=out_channels, stride=stride, is_stage=stride > 1,
                       stage_pool=True, name=name, fuse_stage_convs=fuse_stage_convs)


def _dla_tree(x, *, levels: int, in_channels: int, out_channels: int, stride: int,
              level_root: bool, root_dim: int, children: list, name: str, block_args: dict):
    """DlaTree: `levels` recursions of two children aggregated by a 1x1-conv root."""
    root_dim = root_dim or 2 * out_channels
    if level_root:
        root_dim += in_channels
    children = list(children)
    bottom = x
    if stride > 1 and (levels == 1 or level_root):
        bottom = layers.MaxPooling2D(stride, strides=stride, name=f"{name}_downsample")(x)
    if level_root:
        children.append(bottom)
    if levels == 1:
        shortcut = bottom
        if in_channels != out_channels:
            shortcut = batch_norm(conv(bottom, out_channels, 1, name=f"{name}_project_0"),
                                  f"{name}_project_1")
        x1 = _dla_block(x, shortcut, out_channels, stride, name=f"{name}_tree1", **block_args)
        x2 = _dla_block(x1, x1, out_channels, 1, name=f"{name}_tree2", **block_args)
        root = layers.Concatenate(name=f"{name}_root_cat")([x2, x1, *children])
        root = batch_norm(conv(root, out_channels, 1, name=f"{name}_root_conv"),
                          f"{name}_root_bn")
        return layers.ReLU(name=f"{name}_root_relu")(root)
    x1 = _dla_tree(x, levels=levels - 1, in_channels=in_channels, out_channels=out_channels,
                   stride=stride, level_root=False, root_dim=0, children=[],
                   name=f"{name}_tree1", block_args=block_args)
    children.append(x1)
    return _dla_tree(x1, levels=levels - 1, in_channels=out_channels, out_channels=out_channels,
                     stride=1, level_root=False, root_dim=root_dim + out_channels,
                     children=children, name=f"{name}_tree2", block_args=block_args)


def dla_trunk(x, *, levels, channels, base_width: int, scale: int, cardinality: int,
              fuse_stage_convs: bool = False) -> dict:
    """DLA-60 with Res2Net blocks (timm `dla60_res2net` / `dla60_res2next`)."""
    x = conv_bn_relu(x, channels[0], 7, name="base_layer_0", bn_name="base_layer_1")
    x = conv_bn_relu(x, channels[0], 3, name="level0_0", bn_name="level0_1")
    x = conv_bn_relu(x, channels[1], 3, stride=2, name="level1_0", bn_name="level1_1")
    block_args = dict(base_width=base_width, scale=scale, cardinality=cardinality,
                      fuse_stage_convs=fuse_stage_convs)
    features = {}
    for level in range(2, 6):
        x = _dla_tree(x, levels=levels[level], in_channels=channels[level - 1],
                      out_channels=channels[level], stride=2, level_root=level > 2,
                      root_dim=0, children=[], name=f"level{level}", block_args=block_args)
        features[f"P{level}"] = x
    return features
