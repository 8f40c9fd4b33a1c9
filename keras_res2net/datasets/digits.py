"""scikit-learn's 1,797 real 8x8 handwritten digit scans as small RGB images, no download.

The project's embedded default data: training, export calibration and tests use it. Images are
upscaled (bilinear) to `image_size` and returned as uint8 RGB in [0, 255], the same convention as
decoded JPEGs, so `keras_res2net.preprocess_input` applies unchanged. The held-out split is
stratified and fixed by `seed`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DigitsSplits:
    train_images: np.ndarray  # (n, size, size, 3) uint8
    train_labels: np.ndarray  # (n,) int32 in 0..9
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int = 10


def _upscale(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(np.round(image * 255.0 / 16.0).astype(np.uint8), mode="L")
        out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return np.repeat(out[..., None], 3, axis=-1)


def load_digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> DigitsSplits:
    """Stratified train/validation split of the digits, as uint8 RGB `image_size` squares."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError("The digits dataset needs scikit-learn: pip install "
                          "'keras-res2net[data]'.") from err
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}.")
    raw = sklearn_digits()
    images = _upscale(raw.images, image_size)
    labels = raw.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        val_mask[members[: int(round(len(members) * val_fraction))]] = True
    return DigitsSplits(images[~val_mask], labels[~val_mask], images[val_mask], labels[val_mask])
