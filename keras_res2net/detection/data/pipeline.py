"""The tf.data input pipeline: decode, resize to fit, random flip, pad to a multiple of 32.

mmdetection's transforms: the image is resized (bilinear) by the largest factor that fits
`max_size` (long side, short side) keeping the aspect ratio; masks follow with OpenCV's
nearest neighbour (`mmdet_rules.resize_nearest`), boxes are scaled and clipped to the
image; training flips horizontally with probability 0.5; images are padded bottom/right to
a multiple of `size_divisor`. Ground truth is padded to `max_instances` rows (class 0 =
padding); "image_sizes" keeps each image's resized (height, width), so the model can zero
the padding after normalising and clip boxes per image as mmdetection does. An optional
semantic label map (example key "semantic", (H, W) uint8) follows the masks (nearest
neighbour, flip) and is padded with
`SEMANTIC_IGNORE` (mmdetection's `seg_pad_val=255`), in the image and in the batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_res2net.detection.data.coco import SEMANTIC_IGNORE, CocoDataset
from keras_res2net.detection.data.mmdet_rules import clip_boxes, resize_nearest


def _has_semantic(dataset: CocoDataset) -> bool:
    return bool(dataset.records) and dataset.records[0].semantic_path is not None


def _generator(dataset: CocoDataset, max_instances: int):
    semantic = _has_semantic(dataset)

    def generate():
        for record in dataset.records:
            if len(record.classes) > max_instances:
                raise ValueError(
                    f"image {record.image_id} ({record.path.name}) has {len(record.classes)} "
                    f"objects, more than max_instances={max_instances}; raise "
                    "DataConfig.max_instances.")
            example = {"image": record.load_image(), "boxes": record.boxes,
                       "classes": record.classes, "masks": record.load_masks(),
                       "image_id": np.int64(record.image_id)}
            if semantic:
                example["semantic"] = record.load_semantic()
            yield example
    return generate


_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "classes": tf.TensorSpec([None], tf.int32),
    "masks": tf.TensorSpec([None, None, None], tf.uint8),
    "image_id": tf.TensorSpec([], tf.int64),
}
_SEMANTIC_SPEC = tf.TensorSpec([None, None], tf.uint8)


def resized_size(shape, max_size):
    """(height, width) after mmcv's `imrescale` to fit `max_size` (long side, short side):
    the largest factor that fits, computed in float64, sides rounded half up
    (`int(side * factor + 0.5)`)."""
    shape = tf.cast(shape, tf.float64)
    long_side, short_side = tf.reduce_max(shape), tf.reduce_min(shape)
    factor = tf.minimum(float(max_size[0]) / long_side, float(max_size[1]) / short_side)
    return tf.cast(tf.floor(shape * factor + 0.5), tf.int32)


def resize_and_pad(example: dict, max_size, size_divisor: int, flip) -> dict:
    """Resize to fit `max_size` (long, short), optionally flip, pad; see the module doc."""
    image = example["image"]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = resized_size(tf.shape(image)[:2], max_size)
    scales = tf.cast(new_size, tf.float32) / shape  # (h_scale, w_scale)
    # Bilinear, then rounded to integer levels: mmcv resizes uint8 images to uint8.
    image = tf.image.resize(tf.cast(image, tf.float32), new_size, method="bilinear")
    image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
    # A blank channel, dropped after padding: resize and pad need at least one.
    masks = tf.transpose(example["masks"], [1, 2, 0])
    blank = tf.zeros(tf.concat([tf.shape(masks)[:2], [1]], axis=0), masks.dtype)
    masks = tf.concat([masks, blank], axis=-1)
    masks = resize_nearest(masks, new_size)
    boxes = example["boxes"] * tf.stack([scales[1], scales[0], scales[1], scales[0]])
    boxes = clip_boxes(boxes, new_size)
    semantic = example.get("semantic")
    if semantic is not None:
        semantic = resize_nearest(semantic, new_size)
    if flip is not None:
        width = tf.cast(new_size[1], tf.float32)
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        masks = tf.cond(flip, lambda: masks[:, ::-1], lambda: masks)
        if semantic is not None:
            semantic = tf.cond(flip, lambda: semantic[:, ::-1], lambda: semantic)
        boxes = tf.cond(flip, lambda: tf.stack([width - boxes[:, 2], boxes[:, 1],
                                                width - boxes[:, 0], boxes[:, 3]], axis=-1),
                        lambda: boxes)
    padded = tf.cast(tf.math.ceil(tf.cast(new_size, tf.float32) / size_divisor),
                     tf.int32) * size_divisor
    image = tf.image.pad_to_bounding_box(image, 0, 0, padded[0], padded[1])
    masks = tf.image.pad_to_bounding_box(masks, 0, 0, padded[0], padded[1])
    out = {"images": image, "boxes": boxes, "classes": example["classes"],
           "masks": tf.transpose(masks[..., :-1], [2, 0, 1]), "image_ids": example["image_id"],
           "scales": scales, "original_sizes": tf.cast(shape, tf.int32),
           "image_sizes": tf.cast(new_size, tf.float32)}
    if semantic is not None:
        out["semantic"] = tf.pad(semantic, [[0, padded[0] - new_size[0]],
                                            [0, padded[1] - new_size[1]]],
                                 constant_values=SEMANTIC_IGNORE)
    return out


def raw_dataset(dataset: CocoDataset, max_instances: int = 100) -> tf.data.Dataset:
    """Decoded examples `{"image", "boxes", "classes", "masks", "image_id"}` of a COCO set,
    plus "semantic" when its records have semantic maps."""
    signature = dict(_SIGNATURE)
    if _has_semantic(dataset):
        signature["semantic"] = _SEMANTIC_SPEC
    return tf.data.Dataset.from_generator(_generator(dataset, max_instances),
                                          output_signature=signature)


def build_dataset(dataset: CocoDataset | tf.data.Dataset, *, batch_size: int,
                  max_size=(1333, 800), size_divisor: int = 32, max_instances: int = 100,
                  training: bool = False, cache: bool = False,
                  seed: int | None = None) -> tf.data.Dataset:
    """Batches of `{"images", "boxes", "classes", "masks", "image_ids", "scales",
    "original_sizes", "image_sizes"}` (and "semantic" (B, Hp, Wp) uint8 when the examples
    have semantic maps); training shuffles, flips and repeats forever.

    `dataset` is a loaded COCO JSON set, or any tf.data.Dataset of raw examples in
    `raw_dataset`'s format (e.g. `tfds_coco.load`)."""
    if isinstance(dataset, tf.data.Dataset):
        data, size = dataset, 1000
    else:
        data, size = raw_dataset(dataset, max_instances), len(dataset.records)
    if cache:
        data = data.cache()
    if training:
        data = data.shuffle(min(size, 1000), seed=seed).repeat()

    def transform(example):
        flip = tf.random.uniform([], seed=seed) < 0.5 if training else None
        return resize_and_pad(example, max_size, size_divisor, flip)

    data = data.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    padded_shapes = {"images": [None, None, 3], "boxes": [max_instances, 4],
                     "classes": [max_instances], "masks": [max_instances, None, None],
                     "image_ids": [], "scales": [2], "original_sizes": [2],
                     "image_sizes": [2]}
    if "semantic" in data.element_spec:
        padded_shapes["semantic"] = [None, None]
    padding_values = {key: tf.constant(SEMANTIC_IGNORE if key == "semantic" else 0, spec.dtype)
                      for key, spec in data.element_spec.items()}
    data = data.padded_batch(batch_size, padded_shapes=padded_shapes,
                             padding_values=padding_values, drop_remainder=training)
    return data.prefetch(tf.data.AUTOTUNE)
