"""The network being trained, and the plain model written at the end.

Training builds the Res2Net with a logits head (`classifier_activation=None`) taking images
normalised by `preprocess_input`. With `--init_weights` the backbone comes from a checkpoint
(its classifier set aside) and a new `head` of `num_classes` is added, except under
`--eval_only`, which evaluates the checkpoint with its own classifier. The exported model is
the same network rebuilt in float32 plus a softmax: a plain functional Keras model.
"""

from __future__ import annotations

import keras

from keras_res2net.models import create_model
from keras_res2net.training.config import TrainConfig


def _knobs(config: TrainConfig) -> dict:
    return dict(layers=config.layers, base_width=config.base_width, scale=config.scale,
                input_shape=(config.image_size, config.image_size, 3))


def build_model(config: TrainConfig, num_classes: int, *,
                load_init: bool = True) -> keras.Model:
    """Images normalised with `preprocess_input` -> logits (float32 under mixed precision)."""
    name = f"{config.model}_{config.data}".replace("/", "_").replace(":", "_")
    knobs = _knobs(config)
    if config.init_weights and config.eval_only and load_init:
        model = create_model(config.model, classes=num_classes, classifier_activation=None,
                             weights=config.init_weights, **knobs)
    elif config.init_weights:
        backbone = create_model(config.model, include_top=False, pooling="avg",
                                weights=config.init_weights if load_init else None, **knobs)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="head")(backbone.output)
        return keras.Model(backbone.input, logits, name=name)
    else:
        model = create_model(config.model, classes=num_classes, classifier_activation=None,
                             **knobs)
    if model.output.dtype != "float32":
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(model.output)
        model = keras.Model(model.input, logits, name=name)
    return model


def export_model(trained: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """A float32 copy of `trained` ending in a softmax: (N, size, size, 3) normalised images
    -> (N, num_classes) probabilities. Saves and loads as `.keras` with safe_mode=True."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = build_model(config, num_classes, load_init=False)
    finally:
        keras.config.set_dtype_policy(policy)
    model.set_weights(trained.get_weights())
    probs = keras.layers.Activation("softmax", dtype="float32", name="predictions")(model.output)
    return keras.Model(model.input, probs, name=model.name)
