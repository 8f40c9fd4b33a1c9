"""Saliency data sets and their tf.data pipelines.

A `SaliencySet` is either generated scenes (`synthetic_set`: `scenes.make_scenes` of a seed,
held in memory) or a checked folder (`folder_set`: `folder.read_folder`, decoded on the fly).
Both give `raw()`, a dataset of what is cheap to shuffle (arrays, or file paths), and
`decode`, which turns one raw record into (uint8 RGB image, float32 mask of 0 and 1, both at
the file's size); masks are binarised at 0.5 here.

`train_dataset` is one epoch's shuffled, augmented batches for one input pipeline, repeated:
a random resized crop (area `crop_scale_min`..1, aspect 3/4..4/3) applied to the image and
its mask together, resized to `image_size`, and a random horizontal flip. The shuffle order
and every draw depend only on (seed, epoch, input pipeline, position in the stream)
(`training.data.pipeline.example_key`), so seeded runs see the same batches and a resumed
run the batches an uninterrupted one would. `eval_images` gives the images resized to
`image_size` (batched) and `eval_masks` the masks at their own size, in the same order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_res2net.imagenet import preprocess_input
from keras_res2net.saliency import folder as folder_lib
from keras_res2net.saliency.scenes import make_scenes
from keras_res2net.training.data.pipeline import example_key, random_resized_crop

AUTOTUNE = tf.data.AUTOTUNE
SYNTHETIC_VAL_SEED_OFFSET = 1_000_003  # the held-out stream: another seed, not other indices


@dataclasses.dataclass
class SaliencySet:
    name: str
    count: int
    raw: Callable[[], tf.data.Dataset]
    decode: Callable  # raw record -> (uint8 image (H, W, 3), float32 mask (H, W, 1))
    cacheable: bool = False  # small enough to keep decoded in memory


def _decode_file(image_path, mask_path):
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3,
                               expand_animations=False)
    mask = tf.io.decode_image(tf.io.read_file(mask_path), channels=1, expand_animations=False)
    return image, tf.cast(mask >= 128, tf.float32)  # binarised at 0.5


def _decode_arrays(image, mask):
    return image, tf.cast(mask[..., None] >= 128, tf.float32)


def synthetic_set(seed: int, count: int, size: int, name: str | None = None) -> SaliencySet:
    """`count` generated scenes of stream `seed`, at `size` pixels."""
    images, masks = make_scenes(seed, count, size)
    return SaliencySet(name or f"synthetic (seed {seed}, {count} scenes of {size} px)", count,
                       lambda: tf.data.Dataset.from_tensor_slices((images, masks)),
                       _decode_arrays, cacheable=True)


def folder_set(checked: folder_lib.SaliencyFolder) -> SaliencySet:
    """The usable pairs of a checked folder (`folder.read_folder`)."""
    images = [pair.image for pair in checked.pairs]
    masks = [pair.mask for pair in checked.pairs]
    return SaliencySet(f"{checked.name} ({len(images)} images)", len(images),
                       lambda: tf.data.Dataset.from_tensor_slices((images, masks)),
                       _decode_file)


def augment(image, mask, image_size: int, crop_scale_min: float, flip: bool,
            stream_seed: int, position):
    """One training example: the same random resized crop and flip on image and mask;
    returns (normalised image, soft mask in [0, 1]), both `image_size` square."""
    stacked = tf.concat([tf.cast(image, tf.float32), mask * 255.0], axis=-1)
    stacked = random_resized_crop(stacked, image_size, crop_scale_min,
                                  example_key(stream_seed, position, 0))
    if flip:
        stacked = tf.image.stateless_random_flip_left_right(
            stacked, example_key(stream_seed, position, 1))
    image = tf.clip_by_value(stacked[..., :3], 0.0, 255.0)
    return preprocess_input(image), tf.clip_by_value(stacked[..., 3:] / 255.0, 0.0, 1.0)


def train_dataset(data: SaliencySet, *, image_size: int, batch_size: int, seed: int,
                  epoch: int, context: tf.distribute.InputContext | None = None,
                  skip_batches: int = 0, crop_scale_min: float = 0.5,
                  flip: bool = True) -> tf.data.Dataset:
    """Epoch `epoch`'s per-replica batches (`batch_size` each), repeated, the first
    `skip_batches` left out; see the module docstring."""
    context = context or tf.distribute.InputContext()
    epoch_seed = seed * 1000 + epoch
    stream_seed = epoch_seed * 1024 + context.input_pipeline_id
    ds = data.raw().shard(context.num_input_pipelines, context.input_pipeline_id)
    ds = ds.shuffle(min(data.count, 4096), seed=epoch_seed, reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate()  # positions before the skip: they key the draws
    ds = ds.skip(skip_batches * batch_size)

    def parse(position, record):
        image, mask = data.decode(*record)
        return augment(image, mask, image_size, crop_scale_min, flip, stream_seed, position)

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_images(data: SaliencySet, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Every image, in order, resized to `image_size` (bilinear) and normalised, batched."""
    def parse(*record):
        image, _ = data.decode(*record)
        resized = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
        return preprocess_input(resized)

    return data.raw().map(parse, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(
        AUTOTUNE)


def eval_masks(data: SaliencySet):
    """Every mask, in order, at its own size: (H, W) float32 arrays of 0 and 1."""
    masks = data.raw().map(lambda *record: data.decode(*record)[1][..., 0],
                           num_parallel_calls=AUTOTUNE)
    for mask in masks.prefetch(AUTOTUNE).as_numpy_iterator():
        yield np.asarray(mask)
