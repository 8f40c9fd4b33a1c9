"""The model to export: loaded from a `.keras` file or built by name, and its serving form.

The serving model is what every format exports: one input named `images`, one output named
after what it holds (`probabilities` after a softmax, `logits` otherwise, `features` for a
backbone). `include_preprocessing=True` puts the timm normalisation in front as a Keras
`Rescaling` layer (per-channel `x / (255 std) - mean / std`), so the artifact takes RGB images
in [0, 255]; otherwise it takes images already normalised by `keras_res2net.preprocess_input`.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from keras_res2net.imagenet import IMAGENET_MEAN, IMAGENET_STD, preprocess_input

INPUT_NAME = "images"


@dataclasses.dataclass
class ServingModel:
    model: keras.Model  # images -> {output_name: tensor}
    source: keras.Model  # the model as loaded or built
    output_name: str  # probabilities, logits or features
    include_preprocessing: bool
    reference_model: keras.Model | None = None  # the unfolded model, when `source` is folded

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.inputs[0].shape[1:])

    def model_inputs(self, images: np.ndarray) -> np.ndarray:
        """What the artifact takes for RGB `images` in [0, 255]."""
        if self.include_preprocessing:
            return np.asarray(images, dtype=np.float32)
        return np.asarray(preprocess_input(images), dtype=np.float32)

    def reference(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """The Keras model's outputs on RGB `images` in [0, 255] (the check's ground truth)."""
        normalised = np.asarray(preprocess_input(images), dtype=np.float32)
        model = self.reference_model or self.source
        outputs = model.predict(normalised, batch_size=batch_size, verbose=0)
        return np.asarray(outputs, dtype=np.float32)


def load_model(model: str, weights: str | None = None, input_size: int | None = None,
               classes: int | None = None, **knobs) -> keras.Model:
    """A `.keras` file (loaded with safe_mode=True), or the variant `model` built by name."""
    if model.endswith(".keras"):
        import zipfile

        if os.path.isfile(model) and not zipfile.is_zipfile(model):  # Keras says "not found"
            raise ValueError(f"{model} is not a valid .keras file (not a zip archive; "
                             "truncated or corrupt?)")
        return keras.saving.load_model(model, compile=False, safe_mode=True)
    from keras_res2net.models import create_model

    kwargs = {key: value for key, value in knobs.items() if value is not None}
    size = input_size or 224
    return create_model(model, weights=weights, input_shape=(size, size, 3),
                        classes=classes or 1000, **kwargs)


def output_kind(model: keras.Model) -> str:
    """probabilities, logits, features or saliency: what the model's single output holds."""
    if len(model.outputs) != 1:
        raise ValueError(f"{model.name} has {len(model.outputs)} outputs; the exporter handles "
                         "single-output classifiers and backbones.")
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if len(model.outputs[0].shape) != 2:
        # A per-pixel probability map (N, H, W, 1): keras_res2net.saliency's network.
        if getattr(activation, "__name__", "") == "sigmoid" and model.outputs[0].shape[-1] == 1:
            return "saliency"
        return "features"
    if isinstance(last, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax":
        return "probabilities"
    return "logits"


def serving_model(model: keras.Model, include_preprocessing: bool = False,
                  input_size: int | None = None, fold: bool = False) -> ServingModel:
    """Wrap `model` with the named input/output (and the normalisation) every format exports.

    `fold=True` exports `model` with its BatchNorm folded into the convolutions
    (`keras_res2net.fold_batchnorm`); the unfolded `model` stays the checks' reference.
    """
    reference = None
    if fold:
        from keras_res2net.fold import fold_batchnorm

        model, reference = fold_batchnorm(model, allow_training=True, log=print), model
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"{model.name} takes inputs of shape {shape}; the exporter needs "
                         "(height, width, 3) RGB images.")
    if None in shape[:2]:
        if not input_size:
            raise ValueError(f"{model.name} accepts any image size: pass --input-size.")
        shape = (input_size, input_size, 3)
    name = output_kind(model)
    images = keras.Input(shape=shape, name=INPUT_NAME)
    x = images
    if include_preprocessing:
        std = np.array(IMAGENET_STD, dtype=np.float32)
        mean = np.array(IMAGENET_MEAN, dtype=np.float32)
        x = keras.layers.Rescaling(scale=(1.0 / (255.0 * std)).tolist(),
                                   offset=(-mean / std).tolist(), name="preprocess")(x)
    outputs = {name: keras.layers.Identity(name=name)(model(x))}
    wrapped = keras.Model(images, outputs, name=f"{model.name}_serving")
    return ServingModel(wrapped, model, name, include_preprocessing,
                        reference if reference is not model else None)


def artifact_stem(model_arg: str, model: keras.Model) -> str:
    """The file name stem for artifacts: the .keras file's stem, else the model's name."""
    if model_arg.endswith(".keras"):
        return os.path.splitext(os.path.basename(model_arg))[0]
    return model.name
