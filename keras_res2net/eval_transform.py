"""The reference's evaluation transform, as sizes: one geometry for PIL, tf.data and Keras.

timm evaluates a checkpoint with `transforms_imagenet_eval`: torchvision's `Resize(s)` with
`s = floor(input_size / crop_pct)` (the shorter side becomes `s`, the longer
`int(s * long / short)`), then `CenterCrop(input_size)` (offset `int(round((size - crop) / 2))`
on each axis). `predict` (PIL), the training recipe's eval pipeline (tf.image) and the keras-hub
image converter (keras.ops) all take their sizes and offsets from `eval_geometry`, so they crop
the same window; they differ only in the resampling library (PIL and antialiased tf.image
bilinear agree to about one grey level).
"""

from __future__ import annotations

import dataclasses
import math

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclasses.dataclass(frozen=True)
class EvalGeometry:
    """Resize the image to (`height`, `width`), then crop `size` x `size` at (`top`, `left`)."""

    height: int
    width: int
    top: int
    left: int
    size: int


def check_settings(input_size: int, crop_pct: float, interpolation: str = "bilinear") -> None:
    """Raise ValueError naming the bad setting (input size, crop fraction, interpolation)."""
    if not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input size must be a positive integer; got {input_size!r}.")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop fraction (crop_pct) must be in (0, 1]; got {crop_pct!r}.")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; "
                         f"got {interpolation!r}.")


def resize_size(input_size: int, crop_pct: float) -> int:
    """The shorter side before the centre crop: timm's `floor(input_size / crop_pct)` (256 for
    224 at 0.875). The 1e-6 only guards fractions like 32/36 against float round-down."""
    return max(input_size, math.floor(input_size / crop_pct + 1e-6))


def eval_geometry(height: int, width: int, input_size: int, crop_pct: float) -> EvalGeometry:
    """Where an image of `height` x `width` is resized to and cropped from (torchvision's
    `Resize(int)` and `CenterCrop` rules)."""
    short = resize_size(input_size, crop_pct)
    if width <= height:
        new_width, new_height = short, int(short * height / width)
    else:
        new_height, new_width = short, int(short * width / height)
    top = int(round((new_height - input_size) / 2.0))
    left = int(round((new_width - input_size) / 2.0))
    return EvalGeometry(new_height, new_width, top, left, input_size)


def center_crop_tf(images, size: int, crop_pct: float, interpolation: str = "bilinear"):
    """`eval_geometry` on TensorFlow tensors of any (also unknown) height and width: one image
    (h, w, c) or a batch (n, h, w, c), in a tf.data map or a tf.function. Antialiased like PIL;
    float32 out. TensorFlow-only (the training data pipeline and keras-hub's tf.data path)."""
    import tensorflow as tf

    short = resize_size(size, crop_pct)
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]

    def longer(long_side, short_side):  # torchvision: int(short * long / short_side)
        return tf.cast(tf.math.floor(short * tf.cast(long_side, tf.float64)
                                     / tf.cast(short_side, tf.float64)), tf.int32)

    portrait = width <= height
    new_height = tf.where(portrait, longer(height, width), short)
    new_width = tf.where(portrait, short, longer(width, height))
    images = tf.image.resize(images, tf.stack([new_height, new_width]), method=interpolation,
                             antialias=interpolation != "nearest")
    # torchvision: int(round((new - size) / 2)), round half to even as Python's round.
    top = tf.cast(tf.math.round(tf.cast(new_height - size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.math.round(tf.cast(new_width - size, tf.float64) / 2.0), tf.int32)
    return tf.image.crop_to_bounding_box(images, top, left, size, size)


def center_crop_ops(images, size: int, crop_pct: float, interpolation: str = "bilinear"):
    """`eval_geometry` with keras.ops on images of known height and width (eager, any
    backend): (h, w, c) or (n, h, w, c), float32 out, antialiased like PIL."""
    from keras import ops

    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    box = eval_geometry(int(shape[-3]), int(shape[-2]), size, crop_pct)
    images = ops.image.resize(images, (box.height, box.width), interpolation=interpolation,
                              antialias=interpolation != "nearest")
    return images[..., box.top:box.top + size, box.left:box.left + size, :]
