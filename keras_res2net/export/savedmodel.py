"""SavedModel export: a `serving_default` signature with a named input and named outputs.

Signature `serving_default`: input `images`, float32 (batch, height, width, 3); normalised
images, or RGB in [0, 255] with `--include-preprocessing`, which also adds a `serving_uint8`
signature taking uint8 images (decoded JPEG/PNG as is). Outputs: `probabilities` for a softmax
classifier; `logits` and `probabilities` for a logits classifier; `features` for a backbone.
Written with Keras' `ExportArchive`, loadable with `tf.saved_model.load` and TF Serving.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_res2net.export.source import INPUT_NAME, ServingModel


def write_savedmodel(serving: ServingModel, path: str, extra_signatures: bool = True) -> None:
    """Write `serving` as a SavedModel folder at `path`."""
    import tensorflow as tf

    model, name = serving.model, serving.output_name
    shape = (None, *serving.image_shape)

    def outputs(images):
        result = model(images, training=False)
        if name == "logits" and extra_signatures:
            result = {"logits": result[name], "probabilities": tf.nn.softmax(result[name])}
        return result

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=outputs,
                         input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
    if serving.include_preprocessing and extra_signatures:
        archive.add_endpoint(name="serving_uint8",
                             fn=lambda images: outputs(tf.cast(images, tf.float32)),
                             input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)])
    archive.write_out(path, verbose=False)


def load_savedmodel(path: str, output_name: str):
    """A runner on the SavedModel's `serving_default` signature, through `tf.saved_model.load`."""
    import tensorflow as tf

    signature = tf.saved_model.load(path).signatures["serving_default"]

    def run(images: np.ndarray) -> np.ndarray:
        return signature(**{INPUT_NAME: tf.constant(images)})[output_name].numpy()

    return run
