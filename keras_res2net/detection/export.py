"""Export a detector as a TensorFlow SavedModel with a detection serving signature.

`serving_default` takes a batch of uint8 RGB images of any size (B, H, W, 3), pads them to a
multiple of 32 (the padding is zero after normalisation and boxes stay inside the images, as
in mmdetection) and returns `boxes` (B, 100, 4, xyxy pixels), `scores`, `classes` (1..K,
0 = no detection), `num_detections` and, for Mask R-CNN, `masks` (B, 100, 28, 28
probabilities in box coordinates; `ops.masks.paste_masks` puts them in the image).
Resizing stays with the caller, as in the Model Garden's export modules.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def export_saved_model(model: keras.Model, path, size_divisor: int = 32,
                       verbose: bool = True) -> None:
    """Write `model` to `path` with the `serving_default` detection signature."""

    def serve(images):
        shape = tf.shape(images)
        padded = (shape[1:3] + size_divisor - 1) // size_divisor * size_divisor
        sizes = tf.broadcast_to(tf.cast(shape[1:3], tf.float32)[None], (shape[0], 2))
        images = tf.pad(tf.cast(images, tf.float32),
                        [[0, 0], [0, padded[0] - shape[1]], [0, padded[1] - shape[2]], [0, 0]])
        return model({"images": images, "image_sizes": sizes}, training=False)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.write_out(str(path), verbose=verbose)
