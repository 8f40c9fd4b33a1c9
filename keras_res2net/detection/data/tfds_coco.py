"""TFDS `coco/2017` as raw detection examples for the input pipeline.

TFDS stores boxes as normalised (ymin, xmin, ymax, xmax) and labels as 0-based indices into
its 80 names; this converts them to pixel xyxy boxes and classes 1..80, leaves crowd
objects out (mmdetection ignores them in training) and carries no masks (the pipeline gives
such examples empty mask crops): TFDS COCO has no instance masks, so it feeds Faster R-CNN;
Mask R-CNN needs the COCO JSON files.
"""

from __future__ import annotations

import tensorflow as tf


def to_example(features: dict) -> dict:
    """One TFDS COCO example -> `{"image", "boxes", "classes", "image_id"}` (no masks)."""
    image = features["image"]
    objects = features["objects"]
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    keep = tf.logical_not(tf.cast(objects["is_crowd"], tf.bool))
    bbox = tf.boolean_mask(tf.cast(objects["bbox"], tf.float32), keep)
    boxes = tf.stack([bbox[:, 1] * size[1], bbox[:, 0] * size[0],
                      bbox[:, 3] * size[1], bbox[:, 2] * size[0]], axis=-1)
    classes = tf.cast(tf.boolean_mask(objects["label"], keep), tf.int32) + 1
    return {"image": tf.cast(image, tf.uint8), "boxes": boxes, "classes": classes,
            "image_id": tf.cast(features["image/id"], tf.int64)}


def load(split: str, data_dir: str | None = None, name: str = "coco/2017",
         download: bool = False) -> tf.data.Dataset:
    """Raw examples of a TFDS COCO split; fails fast when the data is not prepared."""
    import tensorflow_datasets as tfds

    try:
        data = tfds.load(name, split=split, data_dir=data_dir, download=download,
                         shuffle_files=False)
    except (AssertionError, FileNotFoundError) as error:
        raise FileNotFoundError(
            f"TFDS {name} is not prepared in {data_dir or 'the default data_dir'}: run "
            f"`tfds build {name} --data_dir ...` (or pass download=True) first.") from error
    return data.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
