"""Decode every image of a COCO set once, in parallel, before any training.

A corrupt or truncated file, or one whose decoded size differs from the size its annotation
file gives (its boxes and masks would not line up), is named together with the annotation
file; the run then stops before training with the list (`BadImagesError`, exit status 2), or
with `skip_bad=True` (train/coco.py's `--skip_bad_images`) trains without those images and
says how many it left out. The decoder is the input pipeline's own (`pipeline.decode_image`),
so an image that passes here decodes in training.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from keras_res2net.detection.data.coco import CocoDataset, ImageRecord
from keras_res2net.detection.data.pipeline import decode_image

SHOWN = 10  # bad images listed in an error; the rest are counted


class BadImagesError(ValueError):
    """Images of an annotation set that do not decode (exit status 2 in the CLIs)."""


def _decode_error(path) -> str:
    """Why `path` does not decode, in TensorFlow's words without the op name."""
    try:
        decode_image(str(path))
    except tf.errors.OpError as error:
        reason = error.message.split("[Op:")[0].strip().rstrip(".;, ")
        return f"does not decode ({reason})"
    return "failed to decode in the parallel pass"


def find_bad_images(dataset: CocoDataset) -> list[tuple[ImageRecord, str]]:
    """(record, reason) of every image that does not decode or is not the annotated size,
    in file order. One parallel tf.data pass over all images."""
    records = dataset.records
    if not records:
        return []
    paths = tf.constant([str(record.path) for record in records])

    def decode(index):
        return index, tf.shape(decode_image(tf.gather(paths, index)))[:2]

    passes = (tf.data.Dataset.range(len(records))
              .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
              .ignore_errors(log_warning=False))
    sizes = {int(index): (int(size[0]), int(size[1]))
             for index, size in passes.as_numpy_iterator()}
    bad = []
    for index, record in enumerate(records):
        if index not in sizes:
            bad.append((record, _decode_error(record.path)))
        elif sizes[index] != (record.height, record.width):
            height, width = sizes[index]
            bad.append((record, f"is {width}x{height} pixels, but the annotation file says "
                                f"{record.width}x{record.height}"))
    return bad


def check_images(dataset: CocoDataset, skip_bad: bool = False) -> CocoDataset:
    """`dataset` if all its images decode at their annotated size; else `BadImagesError`
    listing them, or (`skip_bad`) the dataset without them, with one line saying so."""
    bad = find_bad_images(dataset)
    if not bad:
        return dataset
    source = dataset.json_path or "the annotation set"
    total = len(dataset.records)
    if not skip_bad:
        lines = [f"{record.path}: {reason}" for record, reason in bad[:SHOWN]]
        if len(bad) > SHOWN:
            lines.append(f"... and {len(bad) - SHOWN} more")
        raise BadImagesError(f"{source}: {len(bad)} of its {total} images cannot be used "
                             "(pass --skip_bad_images to train without them):\n  "
                             + "\n  ".join(lines))
    left_out = {id(record) for record, _ in bad}
    kept = [record for record in dataset.records if id(record) not in left_out]
    if not kept:
        raise BadImagesError(f"{source}: none of its {total} images can be used (first: "
                             f"{bad[0][0].path}: {bad[0][1]}).")
    first, reason = bad[0]
    print(f"--skip_bad_images: left out {len(bad)} of the {total} images of {source} "
          f"(first: {first.path.name}: {reason}).", flush=True)
    return dataclasses.replace(dataset, records=kept)
