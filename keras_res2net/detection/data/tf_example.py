"""Model Garden-style TFRecords of `tf.train.Example`s: a writer and a decoder.

The keys are those of the Model Garden's `create_coco_tf_record.py` / `TfExampleDecoder`:
`image/encoded`, `image/height`, `image/width`, `image/source_id`, normalised
`image/object/bbox/{xmin,ymin,xmax,ymax}`, `image/object/class/label`,
`image/object/is_crowd` and PNG-encoded `image/object/mask`. The decoder yields the raw
examples the input pipeline takes, with crowd objects left out as in training and each mask
decoded and cropped to its box one at a time (`instance_masks`), never all at full size.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_res2net.detection.data.coco import CocoDataset
from keras_res2net.detection.data.instance_masks import MASK_CROP_SIZE, crop_mask_to_box


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tfrecord(dataset: CocoDataset, path) -> int:
    """Write every image of a loaded COCO set (category ids as labels); returns the count."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in dataset.records:
            h, w = record.height, record.width
            boxes = record.boxes
            labels = [dataset.category_ids[c - 1] for c in record.classes]
            feature = {
                "image/encoded": _bytes([record.path.read_bytes()]),
                "image/height": _ints([h]), "image/width": _ints([w]),
                "image/source_id": _bytes([str(record.image_id).encode()]),
                "image/object/bbox/xmin": _floats(boxes[:, 0] / w),
                "image/object/bbox/ymin": _floats(boxes[:, 1] / h),
                "image/object/bbox/xmax": _floats(boxes[:, 2] / w),
                "image/object/bbox/ymax": _floats(boxes[:, 3] / h),
                "image/object/class/label": _ints(labels),
                "image/object/is_crowd": _ints([0] * len(labels)),
                "image/object/mask": _bytes([_png(m * 255) for m in record.load_masks()]),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                         .SerializeToString())
    return len(dataset.records)


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
}


def decode(serialized, category_ids, mask_crop_size: int = MASK_CROP_SIZE) -> dict:
    """One serialized Example -> `{"image", "boxes", "classes", "mask_crops", "image_id"}`.

    `category_ids` (sorted dataset category ids) maps labels to contiguous classes 1..K.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v
             for k, v in parsed.items()}
    image = tf.io.decode_image(dense["image/encoded"], channels=3, expand_animations=False)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    keep = tf.equal(dense["image/object/is_crowd"], 0)
    boxes = tf.stack([dense["image/object/bbox/xmin"] * size[1],
                      dense["image/object/bbox/ymin"] * size[0],
                      dense["image/object/bbox/xmax"] * size[1],
                      dense["image/object/bbox/ymax"] * size[0]], axis=-1)
    table = tf.constant(np.asarray(category_ids, np.int64))
    labels = dense["image/object/class/label"]
    classes = tf.cast(tf.argmax(tf.equal(labels[:, None], table[None]), axis=1) + 1, tf.int32)
    tf.debugging.assert_equal(tf.reduce_all(tf.reduce_any(
        tf.equal(labels[:, None], table[None]), axis=1)), True,
        message="a label is not among the category ids")
    # A fully known output signature lets map_fn stack an image without objects too.
    crops = tf.map_fn(
        lambda args: crop_mask_to_box(tf.cast(tf.io.decode_png(args[0], channels=1)[..., 0] > 0,
                                              tf.uint8), args[1], mask_crop_size),
        (dense["image/object/mask"], boxes),
        fn_output_signature=tf.TensorSpec([mask_crop_size, mask_crop_size], tf.uint8))
    return {"image": image, "boxes": tf.boolean_mask(boxes, keep),
            "classes": tf.boolean_mask(classes, keep),
            "mask_crops": tf.boolean_mask(crops, keep),
            "image_id": tf.strings.to_number(dense["image/source_id"], tf.int64)}


def load(pattern: str, category_ids) -> tf.data.Dataset:
    """Raw examples from TFRecord files matching `pattern`, in file order."""
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}.")
    return tf.data.TFRecordDataset(sorted(files)).map(
        lambda s: decode(s, category_ids), num_parallel_calls=tf.data.AUTOTUNE)
