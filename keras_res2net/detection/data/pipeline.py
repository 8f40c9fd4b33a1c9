"""The tf.data input pipeline: decode, resize to fit, random flip, pad to a multiple of 32.

A COCO set enters as light per-image records (`record_dataset`: file path, boxes, classes,
each instance's compressed RLE), shuffled as records; decoding (`decode_image`, RLE by
TensorFlow ops) and resizing run in `Dataset.map(num_parallel_calls=AUTOTUNE)`. Instance masks
are carried cropped to their boxes at `mask_crop_size` (`instance_masks`, Model Garden's
representation), never as full-image masks.

mmdetection's transforms: the image is resized (bilinear) by the largest factor that fits
mmdetection's transforms: the image is resized (bilinear) by the largest factor that fits
`max_size` (long side, short side) keeping the aspect ratio; boxes are scaled and clipped to
the image (the mask crops are box-relative, cut from the original-resolution masks at the
clipped box, so only a flip touches them); training flips horizontally with probability 0.5;
images are padded bottom/right to a multiple of `size_divisor` and training batches hold only
landscape or only portrait images (mmdetection's `AspectRatioBatchSampler`). Images stay uint8
in the pipeline: the model normalises them and then zeroes the padding ("image_sizes"), which
is mmdetection's normalise-then-pad-with-zeros. Ground truth is padded to `max_instances` rows
(class 0 = padding). An optional semantic label map (example key "semantic", (H, W) uint8) is
resized with OpenCV's nearest neighbour (`mmdet_rules.resize_nearest`), flipped and padded with
`SEMANTIC_IGNORE` (mmdetection's `seg_pad_val=255`), in the image and in the batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_res2net.detection.data.coco import SEMANTIC_IGNORE, CocoDataset
from keras_res2net.detection.data.instance_masks import (
    MASK_CROP_SIZE,
    crop_masks_to_boxes,
    crop_rles_to_boxes,
)
from keras_res2net.detection.data.mmdet_rules import clip_boxes, resize_nearest


def _has_semantic(dataset: CocoDataset) -> bool:
    return bool(dataset.records) and dataset.records[0].semantic_path is not None


_RECORD_SIGNATURE = {
    "image_path": tf.TensorSpec([], tf.string),
    "image_size": tf.TensorSpec([2], tf.int32),  # (height, width) of the annotation file
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "classes": tf.TensorSpec([None], tf.int32),
    "mask_rles": tf.TensorSpec([None], tf.string),
    "image_id": tf.TensorSpec([], tf.int64),
}


def record_dataset(dataset: CocoDataset, max_instances: int = 100) -> tf.data.Dataset:
    """Undecoded per-image records of a COCO set (`decode_record` decodes one), plus
    "semantic_path" when its records have semantic maps. Checks every image's object count
    against `max_instances` now, before any decoding."""
    for record in dataset.records:
        if len(record.classes) > max_instances:
            raise ValueError(
                f"image {record.image_id} ({record.path.name}) has {len(record.classes)} "
                f"objects, more than max_instances={max_instances}; raise "
                "DataConfig.max_instances.")
    semantic = _has_semantic(dataset)
    signature = dict(_RECORD_SIGNATURE)
    if semantic:
        signature["semantic_path"] = tf.TensorSpec([], tf.string)

    def generate():
        for record in dataset.records:
            out = {"image_path": str(record.path),
                   "image_size": np.array([record.height, record.width], np.int32),
                   "boxes": record.boxes, "classes": record.classes,
                   "mask_rles": np.array(record.mask_rles(), dtype=object).reshape(-1),
                   "image_id": np.int64(record.image_id)}
            if semantic:
                out["semantic_path"] = str(record.semantic_path)
            yield out
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _read_label_map(path) -> np.ndarray:
    # PIL, not tf.io.decode_png: a palette PNG must give its indices, not its colours.
    path = np.asarray(path).item()  # bytes, in a tf.data graph or eagerly
    with Image.open(path.decode()) as label_map:
        return np.asarray(label_map, dtype=np.uint8)


def decode_image(path) -> tf.Tensor:
    """(H, W, 3) uint8 image of a file (JPEG, PNG, GIF, BMP; 16-bit scaled to 8 bits).

    JPEGs with the accurate integer IDCT (libjpeg's ISLOW, as PIL and OpenCV decode):
    TensorFlow's default fast IDCT differs from them by up to 5 levels."""
    contents = tf.io.read_file(path)
    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                                   expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def decode_record(record: dict, mask_crop_size: int = MASK_CROP_SIZE) -> dict:
    """A `record_dataset` record -> `{"image", "boxes", "classes", "mask_crops", "image_id"}`
    (and "semantic"): the raw example `resize_and_pad` takes."""
    height, width = record["image_size"][0], record["image_size"][1]
    # Clipped before cropping, so each crop covers exactly its (clipped) box: clipping again
    # after the resize (mmdetection's order) then moves a box by rounding at most.
    boxes = clip_boxes(tf.convert_to_tensor(record["boxes"], tf.float32), [height, width])
    example = {"image": decode_image(record["image_path"]), "boxes": boxes,
               "classes": record["classes"], "image_id": record["image_id"],
               "mask_crops": crop_rles_to_boxes(record["mask_rles"], boxes, height,
                                                width, mask_crop_size)}
    if "semantic_path" in record:
        semantic = tf.numpy_function(_read_label_map, [record["semantic_path"]], tf.uint8)
        semantic.set_shape([None, None])
        example["semantic"] = semantic
    return example


def resized_size(shape, max_size):
    """(height, width) after mmcv's `imrescale` to fit `max_size` (long side, short side):
    the largest factor that fits, computed in float64, sides rounded half up
    (`int(side * factor + 0.5)`)."""
    shape = tf.cast(shape, tf.float64)
    long_side, short_side = tf.reduce_max(shape), tf.reduce_min(shape)
    factor = tf.minimum(float(max_size[0]) / long_side, float(max_size[1]) / short_side)
    return tf.cast(tf.floor(shape * factor + 0.5), tf.int32)


def resize_and_pad(example: dict, max_size, size_divisor: int, flip,
                   mask_crop_size: int = MASK_CROP_SIZE) -> dict:
    """Resize to fit `max_size` (long, short), optionally flip, pad; see the module doc.

    The example's masks are "mask_crops" (N, S, S) over its boxes, or full (N, H, W) "masks"
    (cropped here, at `mask_crop_size`), or absent (empty crops)."""
    image = example["image"]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = resized_size(tf.shape(image)[:2], max_size)
    scales = tf.cast(new_size, tf.float32) / shape  # (h_scale, w_scale)
    # Bilinear, then rounded to integer levels: mmcv resizes uint8 images to uint8.
    image = tf.round(tf.clip_by_value(
        tf.image.resize(tf.cast(image, tf.float32), new_size, method="bilinear"), 0.0, 255.0))
    image = tf.cast(image, tf.uint8)
    if "mask_crops" in example:
        crops = tf.convert_to_tensor(example["mask_crops"])
    elif "masks" in example:  # cropped at the clipped box (see `decode_record`)
        example = dict(example, boxes=clip_boxes(tf.cast(example["boxes"], tf.float32),
                                                 tf.shape(example["image"])[:2]))
        crops = crop_masks_to_boxes(example["masks"], example["boxes"], mask_crop_size)
    else:
        crops = tf.zeros([tf.shape(example["classes"])[0], mask_crop_size, mask_crop_size],
                         tf.uint8)
    boxes = example["boxes"] * tf.stack([scales[1], scales[0], scales[1], scales[0]])
    boxes = clip_boxes(boxes, new_size)
    semantic = example.get("semantic")
    if semantic is not None:
        semantic = resize_nearest(semantic, new_size)
    if flip is not None:
        width = tf.cast(new_size[1], tf.float32)
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        crops = tf.cond(flip, lambda: crops[:, :, ::-1], lambda: crops)
        if semantic is not None:
            semantic = tf.cond(flip, lambda: semantic[:, ::-1], lambda: semantic)
        boxes = tf.cond(flip, lambda: tf.stack([width - boxes[:, 2], boxes[:, 1],
                                                width - boxes[:, 0], boxes[:, 3]], axis=-1),
                        lambda: boxes)
    padded = tf.cast(tf.math.ceil(tf.cast(new_size, tf.float32) / size_divisor),
                     tf.int32) * size_divisor
    image = tf.image.pad_to_bounding_box(image, 0, 0, padded[0], padded[1])
    out = {"images": image, "boxes": boxes, "classes": example["classes"],
           "mask_crops": crops, "image_ids": example["image_id"],
           "scales": scales, "original_sizes": tf.cast(shape, tf.int32),
           "image_sizes": tf.cast(new_size, tf.float32)}
    if semantic is not None:
        out["semantic"] = tf.pad(semantic, [[0, padded[0] - new_size[0]],
                                            [0, padded[1] - new_size[1]]],
                                 constant_values=SEMANTIC_IGNORE)
    return out


def raw_dataset(dataset: CocoDataset, max_instances: int = 100,
                mask_crop_size: int = MASK_CROP_SIZE) -> tf.data.Dataset:
    """Decoded examples `{"image", "boxes", "classes", "mask_crops", "image_id"}` of a COCO
    set (plus "semantic" when its records have semantic maps), decoded in parallel."""
    return record_dataset(dataset, max_instances).map(
        lambda record: decode_record(record, mask_crop_size),
        num_parallel_calls=tf.data.AUTOTUNE)


def orientation(example: dict) -> tf.Tensor:
    """1 for a portrait image (width < height), else 0: mmdetection's aspect-ratio groups."""
    size = example["original_sizes"]
    return tf.cast(size[1] < size[0], tf.int64)


def build_dataset(dataset: CocoDataset | tf.data.Dataset, *, batch_size: int,
                  max_size=(1333, 800), size_divisor: int = 32, max_instances: int = 100,
                  training: bool = False, cache: bool = False,
                  seed: int | None = None, mask_crop_size: int = MASK_CROP_SIZE,
                  group_by_aspect_ratio: bool = True,
                  flip: bool | None = None) -> tf.data.Dataset:
    """Batches of `{"images", "boxes", "classes", "mask_crops", "image_ids", "scales",
    "original_sizes", "image_sizes"}` (and "semantic" (B, Hp, Wp) uint8 when the examples
    have semantic maps); training shuffles, flips (unless `flip=False`; `flip` defaults to
    `training`), repeats forever and (with `group_by_aspect_ratio`) batches landscape and
    portrait images apart.

    `dataset` is a loaded COCO JSON set, its `record_dataset`, or any tf.data.Dataset of raw
    examples in `raw_dataset`'s format (e.g. `tfds_coco.load`). Records are shuffled before
    they are decoded, unless `cache` keeps the decoded examples in memory."""
    if isinstance(dataset, tf.data.Dataset):
        data, size = dataset, None
    else:
        data, size = record_dataset(dataset, max_instances), len(dataset.records)
    undecoded = "image_path" in data.element_spec
    if undecoded and cache:
        data = data.map(lambda r: decode_record(r, mask_crop_size),
                        num_parallel_calls=tf.data.AUTOTUNE)
        undecoded = False
    if cache:
        data = data.cache()
    if training:
        buffer = 10_000 if undecoded else 1000  # records are small, decoded images are not
        data = data.shuffle(min(size or buffer, buffer), seed=seed).repeat()

    # Each example's flip is a stateless draw keyed by (seed, its position in the stream), so
    # a seeded pipeline flips the same examples on every run and resume; a stateful
    # `tf.random.uniform` in the parallel map below draws in whatever order its threads run.
    flip_seed = seed if seed is not None else int(np.random.randint(2**31))
    flips = training if flip is None else flip

    def transform(position, example):
        if undecoded:
            example = decode_record(example, mask_crop_size)
        flip_this = None
        if flips:
            key = tf.stack([tf.constant(flip_seed, tf.int64), position])
            flip_this = tf.random.stateless_uniform([], seed=key) < 0.5
        return resize_and_pad(example, max_size, size_divisor, flip_this, mask_crop_size)

    data = data.enumerate().map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    padded_shapes = {"images": [None, None, 3], "boxes": [max_instances, 4],
                     "classes": [max_instances], "mask_crops": [max_instances, None, None],
                     "image_ids": [], "scales": [2], "original_sizes": [2],
                     "image_sizes": [2]}
    if "semantic" in data.element_spec:
        padded_shapes["semantic"] = [None, None]
    padding_values = {key: tf.constant(SEMANTIC_IGNORE if key == "semantic" else 0, spec.dtype)
                      for key, spec in data.element_spec.items()}

    def batch(window: tf.data.Dataset) -> tf.data.Dataset:
        return window.padded_batch(batch_size, padded_shapes=padded_shapes,
                                   padding_values=padding_values, drop_remainder=training)

    if training and group_by_aspect_ratio:
        data = data.group_by_window(orientation, lambda _, window: batch(window),
                                    window_size=batch_size)
    else:
        data = batch(data)
    return data.prefetch(tf.data.AUTOTUNE)
