"""keras-hub image classification on `Res2NetBackbone`: classifier, preprocessor, converter.

`Res2NetImageClassifier` is a `keras_hub.models.ImageClassifier` (average pool, dropout,
`predictions` Dense) whose `Res2NetImageClassifierPreprocessor` runs a
`Res2NetImageConverter`: the checkpoint's own evaluation transform (timm's
`pretrained_cfg`, `keras_res2net.pretrained_config`): shorter side resized to
`input_size / crop_pct`, centre crop, `(x / 255 - mean) / std`. keras-hub's stock converter
squashes or crops to the aspect ratio instead, which is not how the checkpoints were evaluated.

All classes are registered with Keras under the `keras_res2net` package, so after
`import keras_res2net.hub`, `keras_hub.models.ImageClassifier.from_preset(DIR)` and
`keras_hub.models.Backbone.from_preset(DIR)` find them in a preset folder written by
`python -m keras_res2net.convert SRC --model NAME --preset DIR` (nothing is downloaded).
"""

from __future__ import annotations

import os

import keras
from keras_hub.layers import ImageConverter
from keras_hub.models import ImageClassifier, ImageClassifierPreprocessor

from keras_res2net.eval_transform import center_crop_ops, center_crop_tf, check_settings
from keras_res2net.hub import Res2NetBackbone, image_normalization
from keras_res2net.variants import PretrainedConfig

#: What keras-hub's `save_to_preset` writes for a task (`TASK_FILES`) and for a
#: backbone with its preprocessor (`BACKBONE_FILES`); `check_preset` names any missing one.
BACKBONE_FILES = ("config.json", "model.weights.h5", "metadata.json", "preprocessor.json",
                  "image_converter.json")
TASK_FILES = ("task.json", "task.weights.h5")


def _inside_tf_graph() -> bool:
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return tf.inside_function()


@keras.saving.register_keras_serializable(package="keras_res2net")
class EvalCenterCrop(keras.layers.Layer):
    """Shorter side to `height / crop_pct`, then the centre `height` x `width` crop.

    Stands in for the `Resizing` layer of a keras-hub `ImageConverter` (same `height` and
    `width` attributes). TensorFlow ops inside tf.data/tf.function (keras-hub's `predict`
    and `fit` pipelines), keras.ops in eager calls.
    """

    def __init__(self, height: int, width: int, crop_pct: float = 0.875,
                 interpolation: str = "bilinear", **kwargs) -> None:
        super().__init__(**kwargs)
        self.height, self.width = height, width
        self.crop_pct = crop_pct
        self.interpolation = interpolation

    def call(self, images):
        if isinstance(images, dict):
            raise ValueError("Res2NetImageConverter takes images, not bounding boxes.")
        if self.height != self.width:
            raise ValueError(f"The eval centre crop is square; got image_size "
                             f"({self.height}, {self.width}).")
        crop = center_crop_tf if _inside_tf_graph() else center_crop_ops
        return crop(images, self.height, self.crop_pct, self.interpolation)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(height=self.height, width=self.width, crop_pct=self.crop_pct,
                      interpolation=self.interpolation)
        return config


@keras.saving.register_keras_serializable(package="keras_res2net")
class Res2NetImageConverter(ImageConverter):
    """Raw RGB images in [0, 255] -> a checkpoint's inputs: its eval transform and scaling.

    Args:
        image_size: (height, width) of the centre crop (square); None keeps the image.
        crop_pct: the crop's share of the resized shorter side (timm's `crop_pct`); None
            resizes straight to `image_size` as keras-hub's own converters do.
        interpolation: "bilinear", "bicubic" or "nearest" (antialiased when downsizing).
        scale, offset: per-channel `x * scale + offset` (`image_normalization(mean, std)`).
        **kwargs: other `keras_hub.layers.ImageConverter` arguments.
    """

    backbone_cls = Res2NetBackbone

    def __init__(self, image_size=(224, 224), crop_pct: float | None = 0.875,
                 interpolation: str = "bilinear", scale=None, offset=None, **kwargs) -> None:
        if scale is None and offset is None:
            normalization = image_normalization()
            scale, offset = normalization["scale"], normalization["offset"]
        kwargs.setdefault("antialias", interpolation != "nearest")
        super().__init__(image_size=image_size, scale=scale, offset=offset,
                         interpolation=interpolation, **kwargs)
        self.crop_pct = crop_pct
        if crop_pct is not None and image_size is not None:
            height, width = (int(side) for side in image_size)
            check_settings(height, crop_pct, interpolation)
            self.resizing = EvalCenterCrop(height, width, crop_pct, interpolation,
                                           dtype=self.dtype_policy, name="eval_center_crop")

    @classmethod
    def from_pretrained_config(cls, config: PretrainedConfig, **kwargs) -> Res2NetImageConverter:
        """The converter for a checkpoint's `pretrained_config(name)`."""
        return cls(image_size=(config.input_size, config.input_size), crop_pct=config.crop_pct,
                   interpolation=config.interpolation,
                   **image_normalization(config.mean, config.std), **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config["crop_pct"] = self.crop_pct
        return config


def check_preset(preset: str | os.PathLike) -> None:
    """Raise FileNotFoundError naming the first file a Res2Net preset folder lacks.

    keras-hub itself would load a preset without `task.weights.h5` with a random classifier,
    and report a missing `model.weights.h5` as a missing sharded-weights index.
    """
    preset = os.fspath(preset)
    if not os.path.isdir(preset):
        raise FileNotFoundError(f"{preset}: no such preset folder.")
    names = set(os.listdir(preset))
    required = list(BACKBONE_FILES)
    if names & set(TASK_FILES):
        required += TASK_FILES
    for name in required:
        if name not in names:
            raise FileNotFoundError(f"{preset} is an incomplete keras-hub preset: {name} is "
                                    "missing (rewrite it with python -m keras_res2net.convert "
                                    "... --preset).")


@keras.saving.register_keras_serializable(package="keras_res2net")
class Res2NetImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """keras-hub's classifier preprocessor with a `Res2NetImageConverter`."""

    backbone_cls = Res2NetBackbone
    image_converter_cls = Res2NetImageConverter

    def load_preset_assets(self, preset) -> None:
        """keras-hub calls this with the preset folder before loading any weights: the point
        where an incomplete local folder can be named (hub handles are not checked)."""
        if isinstance(preset, (str, os.PathLike)) and os.path.isdir(preset):
            check_preset(preset)
        super().load_preset_assets(preset)


@keras.saving.register_keras_serializable(package="keras_res2net")
class Res2NetImageClassifier(ImageClassifier):
    """keras-hub `ImageClassifier` on a `Res2NetBackbone` (logits unless `activation`).

    Example:
        backbone = Res2NetBackbone("res2net50_26w_4s", weights="imagenet")
        preprocessor = Res2NetImageClassifierPreprocessor(
            Res2NetImageConverter.from_pretrained_config(pretrained_config("res2net50_26w_4s")))
        classifier = Res2NetImageClassifier(backbone, num_classes=10, preprocessor=preprocessor)
    """

    backbone_cls = Res2NetBackbone
    preprocessor_cls = Res2NetImageClassifierPreprocessor
