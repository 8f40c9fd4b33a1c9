"""Sample images for calibration (int8) and for checking artifacts.

`--calibration-data` is `digits` (the embedded scikit-learn digits, no download), a folder of
image files (searched recursively) or a TensorFlow Datasets name already prepared on disk
(`tfds.load(..., download=False)`; `name:split` picks a split). Images come back as uint8 RGB
in [0, 255] at the model's input size. Without calibration data, the check uses a fixed seeded
batch of random images, which is enough to compare float artifacts but says nothing about
accuracy.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SEED = 0


@dataclasses.dataclass
class SampleImages:
    calibration: np.ndarray  # representative images for int8 (uint8, NHWC)
    check: np.ndarray  # images the artifacts are checked on
    source: str


def describe_problem(spec: str | None) -> str | None:
    """Why `spec` cannot be used (checked before any work), or None if it looks usable."""
    if spec is None or spec == "digits":
        return None
    if os.path.isdir(spec):
        if not image_files(spec, limit=1):
            return (f"--calibration-data {spec}: the folder holds no images "
                    f"({', '.join(IMAGE_SUFFIXES)}).")
        return None
    if os.path.exists(spec):
        return f"--calibration-data {spec}: a file; give a folder of images, a TFDS name or digits."
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return (f"--calibration-data {spec}: not a folder, and tensorflow-datasets is not "
                "installed to read it as a TFDS name.")
    name = spec.split(":")[0]
    try:
        builder = tfds.builder(name)
    except Exception as err:  # tfds raises DatasetNotFoundError and others
        return (f"--calibration-data {spec}: neither a folder nor a known TFDS dataset "
                f"({type(err).__name__}). Use a folder of images or 'digits'.")
    if not builder.is_prepared():
        return (f"--calibration-data {spec}: TFDS dataset {name!r} is not prepared in "
                f"{builder.data_dir} and nothing is downloaded here; prepare it first "
                "(tfds build) or use a folder of images or 'digits'.")
    return None


def image_files(folder: str, limit: int | None = None) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.join(root, name))
                if limit and len(found) >= limit:
                    return found
    return found


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = [np.asarray(Image.fromarray(image).convert("RGB").resize(size[::-1], Image.BILINEAR))
           for image in images]
    return np.stack(out).astype(np.uint8)


def _from_folder(folder: str, size: tuple[int, int], limit: int) -> np.ndarray:
    from PIL import Image

    images = []
    for path in image_files(folder, limit=limit):
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB").resize(size[::-1], Image.BILINEAR)))
    return np.stack(images).astype(np.uint8)


def _from_tfds(spec: str, size: tuple[int, int], limit: int) -> np.ndarray:
    import tensorflow_datasets as tfds

    name, _, split = spec.partition(":")
    dataset = tfds.load(name, split=split or "train", download=False, shuffle_files=False)
    images = []
    for example in tfds.as_numpy(dataset.take(limit)):
        image = example["image"]
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
        images.append(image)
    return _resize(images, size)


def load_samples(spec: str | None, image_shape: tuple[int, int, int],
                 calibration_size: int = 200, check_size: int = 512,
                 seeded_size: int = 16) -> SampleImages:
    """Calibration and check images at `image_shape` (height, width, 3)."""
    size = tuple(image_shape[:2])
    if spec is None:
        rng = np.random.default_rng(SEED)
        images = rng.integers(0, 256, size=(seeded_size, *size, 3), dtype=np.uint8)
        return SampleImages(images, images, f"{seeded_size} seeded random images")
    if spec == "digits":
        from keras_res2net.datasets import load_digits

        splits = load_digits(image_size=size[0])
        train, val = splits.train_images, splits.val_images
        if size[0] != size[1]:
            train, val = _resize(train, size), _resize(val, size)
        # Calibrate on training images, check on the held-out ones.
        return SampleImages(train[:calibration_size], val[:check_size],
                            f"digits ({min(len(val), check_size)} held-out images)")
    if os.path.isdir(spec):
        images = _from_folder(spec, size, max(calibration_size, check_size))
    else:
        images = _from_tfds(spec, size, max(calibration_size, check_size))
    return SampleImages(images[:calibration_size], images[:check_size],
                        f"{spec} ({min(len(images), check_size)} images)")
