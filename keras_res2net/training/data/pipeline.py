"""tf.data pipelines: the reference's train augmentation and eval transform, per replica.

Train: random-resized crop (JPEGs are cropped while decoding with `decode_and_crop_jpeg`),
optional horizontal flip, `preprocess_input` normalisation, one-hot labels, optional
mixup/cutmix. Eval: the reference's transform (`eval_transform.eval_geometry`): resize the
shorter side to `floor(size / eval_crop_fraction)` (256 for 224) with the variant's
interpolation, antialiased like PIL, and centre-crop `size`. Both shard by
`tf.distribute.InputContext` and batch per replica.
Eval data is padded with masked records so every replica runs the same number of batches.
"""

from __future__ import annotations

import math

import tensorflow as tf

from keras_res2net.eval_transform import center_crop_tf
from keras_res2net.imagenet import preprocess_input
from keras_res2net.training.config import TrainConfig
from keras_res2net.training.data.sources import Source
from keras_res2net.variants import pretrained_config

AUTOTUNE = tf.data.AUTOTUNE
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop


def _as_rgb(image: tf.Tensor) -> tf.Tensor:
    if image.shape.rank == 3 and image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    return image


def _crop_window(shape: tf.Tensor, scale_min: float,
                 key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=key,
        min_object_covered=0.0, aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=(scale_min, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    return begin, size


def random_resized_crop(image: tf.Tensor, size: int, scale_min: float,
                        key: tf.Tensor) -> tf.Tensor:
    """Random crop of `scale_min`..100% of the area, resized to `size` (float32, 0..255);
    the window is a stateless draw keyed by `key` (shape [2], int64)."""
    if image.dtype == tf.string:
        def jpeg():
            begin, crop = _crop_window(tf.image.extract_jpeg_shape(image), scale_min, key)
            window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
            return tf.image.decode_and_crop_jpeg(image, window, channels=3)

        def other():
            decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
            begin, crop = _crop_window(tf.shape(decoded), scale_min, key)
            return tf.slice(decoded, begin, crop)

        cropped = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    else:
        image = _as_rgb(image)
        begin, crop = _crop_window(tf.shape(image), scale_min, key)
        cropped = tf.slice(image, begin, crop)
    return tf.image.resize(cropped, (size, size), method="bilinear")


def example_key(seed: int, position: tf.Tensor, draw: int) -> tf.Tensor:
    """The stateless seed of one random draw (`draw`) for the example at `position` of a
    seeded stream. Draws keyed by position, not taken from a stateful generator, are the
    same on every run and on resume, whatever order a parallel map runs its elements in
    (a stateful op there draws in thread order)."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(position, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, draw)


def center_crop(image: tf.Tensor, size: int, crop_fraction: float,
                interpolation: str = "bilinear") -> tf.Tensor:
    """timm's eval transform (`eval_transform.center_crop_tf`): shorter side to
    `floor(size / crop_fraction)`, centre `size` crop; float32, 0..255."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return center_crop_tf(_as_rgb(image), size, crop_fraction, interpolation)


def _mix(images, labels, alpha: float, cutmix: bool, key: tf.Tensor):
    keys = tf.random.experimental.stateless_split(key, 4)
    gamma_a = tf.random.stateless_gamma([], keys[0], alpha)
    gamma_b = tf.random.stateless_gamma([], keys[1], alpha)
    lam = gamma_a / (gamma_a + gamma_b)
    other_images, other_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])
    if not cutmix:
        return lam * images + (1 - lam) * other_images, lam * labels + (1 - lam) * other_labels
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    cy = tf.random.stateless_uniform([], keys[2], 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], keys[3], 0, width, dtype=tf.int32)
    y0, y1 = tf.maximum(cy - cut_h // 2, 0), tf.minimum(cy + cut_h // 2, height)
    x0, x1 = tf.maximum(cx - cut_w // 2, 0), tf.minimum(cx + cut_w // 2, width)
    rows = tf.logical_and(tf.range(height) >= y0, tf.range(height) < y1)
    cols = tf.logical_and(tf.range(width) >= x0, tf.range(width) < x1)
    box = tf.logical_and(rows[:, None], cols[None, :])[None, :, :, None]
    mixed = tf.where(box, other_images, images)
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
    return mixed, (1 - area) * labels + area * other_labels


def mixup_cutmix(images, labels, mixup_alpha: float, cutmix_alpha: float, key: tf.Tensor):
    """Mix a batch with its reverse (one-hot labels); with both on, pick one per batch.
    Every draw is stateless, keyed by `key` (the batch's)."""
    choice, mix = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return tf.cond(tf.random.stateless_uniform([], choice) < 0.5,
                       lambda: _mix(images, labels, mixup_alpha, False, mix),
                       lambda: _mix(images, labels, cutmix_alpha, True, mix))
    if mixup_alpha > 0:
        return _mix(images, labels, mixup_alpha, False, mix)
    return _mix(images, labels, cutmix_alpha, True, mix)


def train_dataset(source: Source, config: TrainConfig,
                  context: tf.distribute.InputContext | None, epoch: int,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch's shuffled, augmented batches (per replica), repeated.

    The shuffle order and every augmentation draw depend only on (seed, epoch, input
    pipeline, position in the stream), so the same seed gives the same batches in every run,
    and a resumed run skips the `skip_batches` it already trained on and sees the same data
    as an uninterrupted one.
    """
    context = context or tf.distribute.InputContext()
    per_replica = context.get_per_replica_batch_size(config.batch_size)
    seed = config.seed * 1000 + epoch
    stream_seed = seed * 1024 + context.input_pipeline_id  # one stream per input pipeline
    ds = source.records(source.splits[0], seed)
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate()  # positions before the skip: they key the draws
    ds = ds.skip(skip_batches * per_replica)
    size, num_classes = config.image_size, source.num_classes

    def parse(position, record):
        image, label = record
        image = random_resized_crop(image, size, config.crop_scale_min,
                                    example_key(stream_seed, position, 0))
        if config.flip:
            image = tf.image.stateless_random_flip_left_right(
                image, example_key(stream_seed, position, 1))
        return position, preprocess_input(image), tf.one_hot(label, num_classes)

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(per_replica, drop_remainder=True)
    mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0

    def finish(positions, images, labels):
        if not mixing:
            return images, labels
        key = example_key(stream_seed, positions[0], 2)  # the batch's first example keys it
        return mixup_cutmix(images, labels, config.mixup_alpha, config.cutmix_alpha, key)

    ds = ds.map(finish, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(source: Source, config: TrainConfig,
                 context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    """The validation split as (images, labels, valid) batches per replica, padded so that
    every replica runs the same number of batches (`valid` is 0 on padding)."""
    context = context or tf.distribute.InputContext()
    per_replica = context.get_per_replica_batch_size(config.batch_size)
    split = source.splits[1]
    count = source.num_examples[split]
    padded = math.ceil(count / config.batch_size) * config.batch_size
    ds = source.records(split, None).map(lambda x, y: (x, y, 1.0))
    if padded > count:
        filler = source.records(split, None).take(1).map(lambda x, y: (x, y, 0.0))
        ds = ds.concatenate(filler.repeat(padded - count))
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    size, fraction = config.image_size, config.eval_crop_fraction
    interpolation = pretrained_config(config.model).interpolation

    def parse(image, label, valid):
        return preprocess_input(center_crop(image, size, fraction, interpolation)), label, valid

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE)
    return ds.batch(per_replica).prefetch(AUTOTUNE)


def eval_steps(source: Source, config: TrainConfig) -> int:
    """Batches per replica in one pass over the (padded) validation split."""
    return math.ceil(source.num_examples[source.splits[1]] / config.batch_size)
