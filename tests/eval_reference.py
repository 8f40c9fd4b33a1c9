"""An independent reference of timm's evaluation transform (PIL + torchvision's size rules).

timm evaluates with torchvision: `Resize(floor(input_size / crop_pct))` (shorter side to that,
longer side `int(short * long / short_side)`, PIL bilinear, which antialiases when it shrinks)
and `CenterCrop(input_size)` (offsets `int(round((size - crop) / 2))`). Written out here
without keras_res2net's code, for the tests of predict, the training pipeline and the
keras-hub image converter.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def reference_eval(pixels: np.ndarray, input_size: int, crop_pct: float) -> np.ndarray:
    """timm's eval transform of an RGB uint8 image, as uint8 (input_size, input_size, 3)."""
    height, width = pixels.shape[:2]
    short = math.floor(input_size / crop_pct)
    if width <= height:
        size = (short, int(short * height / width))
    else:
        size = (int(short * width / height), short)
    resized = Image.fromarray(pixels).resize(size, Image.BILINEAR)  # (width, height)
    top = int(round((size[1] - input_size) / 2.0))
    left = int(round((size[0] - input_size) / 2.0))
    return np.asarray(resized.crop((left, top, left + input_size, top + input_size)))


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB uint8 image: random colours upsampled (no single-pixel noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 6 + 2, width // 6 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
