"""The reference's ImageNet preprocessing and class names.

`preprocess_input` takes RGB images in [0, 255] (any float or integer dtype, channels last)
and applies timm's normalisation: scale to [0, 1], subtract (0.485, 0.456, 0.406), divide by
(0.229, 0.224, 0.225). It uses keras.ops, so it works on NumPy arrays and on any backend.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE = 256  # shorter side, bilinear (see `variants.pretrained_config` per variant)
EVAL_CROP = 224


def preprocess_input(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Normalise RGB images in [0, 255] the way the reference checkpoints were trained
    (`mean`/`std` per channel on [0, 1]; `pretrained_config(name)` has each variant's)."""
    images = ops.cast(images, "float32") / 255.0
    mean = ops.convert_to_tensor(np.array(mean, dtype="float32"))
    std = ops.convert_to_tensor(np.array(std, dtype="float32"))
    return (images - mean) / std


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """(wordnet id, label) for the 1000 ImageNet-1k classes, in the checkpoints' order."""
    text = resources.files("keras_res2net").joinpath("data/imagenet_classes.json").read_text()
    return [tuple(entry) for entry in json.loads(text)]


def decode_predictions(predictions, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Top-`top` (wordnet id, label, score) per row of a (batch, 1000) prediction array."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[1] != 1000:
        raise ValueError("decode_predictions expects an array of shape (batch, 1000); got "
                         f"{predictions.shape}.")
    classes = imagenet_classes()
    results = []
    for row in predictions:
        best = np.argsort(row)[::-1][:top]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results
