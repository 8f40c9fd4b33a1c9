"""DSS, the salient-object network of the Res2Net paper, on any Res2Net pyramid backbone.

The paper (Gao et al., TPAMI 2021, Sec. 4.9, Table 9) takes DSS (Hou et al., "Deeply
Supervised Salient Object Detection with Short Connections", TPAMI 2019) and replaces its
backbone with ResNet-50 and Res2Net-50, all else unchanged. DSS's own ResNet configuration
(`resnet/train_resnet.prototxt` of github.com/houqb/DSS) is what is built here:

- five side outputs on the backbone's stride-2 stem output and its four stages (`side2` on
  P1 ... `side6` on P5), each two ReLU convolutions with bias (3x3/128, 5x5/256, 5x5/256,
  5x5/512, 7x7/512) and a 1x1 convolution to one score channel;
- short connections: deeper scores, bilinearly upsampled, are concatenated with a side's own
  score and mixed by a 1x1 convolution: side4 and side3 take side6 and side5, side2 takes
  side5, side4, side6 and side3 (the connected maps of side4 and side3); side5 and side6 take
  none;
- every side map upsampled to the input resolution (`UpSampling2D` bilinear, DSS's fixed
  bilinear deconvolution), and `fuse`, a 1x1 convolution over the five (initialised to 0.2
  each, as DSS does);
- deep supervision: the loss is applied to all five side maps and to `fuse` (`losses.py`).

Outputs are logits at the input resolution, in float32. `saliency_model` returns the
training model (a dict of the six maps); `inference_model` the same weights with `fuse`
alone, which is what is saved, predicted with and exported. The backbone is the project's
Res2Net (`models.create_model`, any variant and knobs), tapped by `models.feature_levels`;
`scale=1, base_width=64` on `res2net50_26w_4s` is ResNet-50, the paper's comparison.
Height and width must be multiples of 32 (every level then upsamples exactly).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from keras_res2net.models import create_model, feature_levels

SIDES = ("side2", "side3", "side4", "side5", "side6")
SIDE_LEVELS = {"side2": "P1", "side3": "P2", "side4": "P3", "side5": "P4", "side6": "P5"}
SIDE_STRIDES = {"side2": 2, "side3": 4, "side4": 8, "side5": 16, "side6": 32}
SIDE_KERNELS = {"side2": 3, "side3": 5, "side4": 5, "side5": 5, "side6": 7}
DSS_CHANNELS = (128, 256, 256, 512, 512)  # side2..side6, DSS's ResNet configuration
# Which deeper maps each side takes (in DSS's concatenation order, after its own score).
SHORT_CONNECTIONS = {
    "side4": ("side6", "side5"),
    "side3": ("side6", "side5"),
    "side2": ("side5", "side4", "side6", "side3"),
}
FUSE_ORDER = ("side6", "side2", "side3", "side4", "side5")  # DSS's `concat-upscore` order
FUSE_INIT = 0.2
OUTPUTS = ("fuse", *SIDES)


def _check_size(image_size: int) -> None:
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image size {image_size}: the saliency network needs a multiple of "
                         "32 (its side outputs upsample by 2..32 exactly).")


def _side_score(feature, channels: int, kernel: int, name: str):
    x = layers.Conv2D(channels, kernel, padding="same", activation="relu",
                      name=f"{name}_conv1")(feature)
    x = layers.Conv2D(channels, kernel, padding="same", activation="relu",
                      name=f"{name}_conv2")(x)
    return layers.Conv2D(1, 1, dtype="float32", name=f"{name}_score")(x)


def _upsample(x, factor: int, name: str):
    return layers.UpSampling2D(factor, interpolation="bilinear", dtype="float32", name=name)(x)


def dss_head(features: dict, side_channels: Sequence[int] = DSS_CHANNELS) -> dict:
    """The DSS decoder on `features` ({"P1": stride 2, ..., "P5": stride 32}): the full
    resolution logits of `fuse` and of each side ({"fuse", "side2", ..., "side6"})."""
    if len(side_channels) != len(SIDES) or min(side_channels) < 1:
        raise ValueError(f"side_channels needs {len(SIDES)} positive widths (side2..side6); "
                         f"got {tuple(side_channels)!r}.")
    scores = {side: _side_score(features[SIDE_LEVELS[side]], channels, SIDE_KERNELS[side], side)
              for side, channels in zip(SIDES, side_channels, strict=True)}
    refined = {"side6": scores["side6"], "side5": scores["side5"]}
    for side in ("side4", "side3", "side2"):  # deepest first: side2 reads side4's and side3's
        inputs = [scores[side]] + [
            _upsample(refined[deeper], SIDE_STRIDES[deeper] // SIDE_STRIDES[side],
                      f"{deeper}_to_{side}") for deeper in SHORT_CONNECTIONS[side]]
        mixed = layers.Concatenate(dtype="float32", name=f"{side}_concat")(inputs)
        refined[side] = layers.Conv2D(1, 1, dtype="float32", name=f"{side}_short")(mixed)
    full = {side: _upsample(refined[side], SIDE_STRIDES[side], f"{side}_up") for side in SIDES}
    stacked = layers.Concatenate(dtype="float32", name="fuse_concat")(
        [full[side] for side in FUSE_ORDER])
    fuse = layers.Conv2D(1, 1, dtype="float32", name="fuse",
                         kernel_initializer=keras.initializers.Constant(FUSE_INIT))(stacked)
    return {"fuse": fuse, **{side: full[side] for side in SIDES}}


def saliency_model(variant: str = "res2net50_26w_4s", *, image_size: int = 224,
                   weights: str | None = None, side_channels: Sequence[int] = DSS_CHANNELS,
                   layers_per_stage: Sequence[int] | None = None, base_width: int | None = None,
                   scale: int | None = None, name: str | None = None) -> keras.Model:
    """The DSS training model on the Res2Net `variant` (knobs as `create_model`'s):
    images normalised by `preprocess_input` (N, size, size, 3) -> the dict of full-resolution
    logits `OUTPUTS`. `weights`: the backbone's checkpoint (.weights.h5 from
    `keras_res2net.convert`, or a PyTorch checkpoint), or None for random initialisation."""
    _check_size(image_size)
    backbone = create_model(variant, include_top=False, weights=weights,
                            input_shape=(image_size, image_size, 3),
                            layers=tuple(layers_per_stage) if layers_per_stage else None,
                            base_width=base_width, scale=scale)
    levels = feature_levels(backbone)
    features = {level: backbone.get_layer(levels[level]).output for level in SIDE_LEVELS.values()}
    outputs = dss_head(features, side_channels)
    return keras.Model(backbone.input, outputs, name=name or f"dss_{backbone.name}")


def inference_model(model: keras.Model) -> keras.Model:
    """`model` (from `saliency_model`) with its `fuse` logits as the only output (the same
    layers and weights): (N, H, W, 3) normalised images -> (N, H, W, 1) logits."""
    return keras.Model(model.inputs[0], model.get_layer("fuse").output, name=model.name)
