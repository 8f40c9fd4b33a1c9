"""keras-hub bridge: a Res2Net that is a `keras_hub.models.FeaturePyramidBackbone`.

keras-hub's detectors and segmenters (RetinaNet, D-FINE, DeepLabV3, ...) take any backbone
whose `pyramid_outputs` maps "P2".."P5" to stride 4..32 feature maps. `Res2NetBackbone`
builds a variant of our table (`keras_res2net.variants`) the keras-hub way: one functional
model made in `__init__`, a `get_config` that rebuilds it, and a Keras serializable
registration, so a detector on it saves to `.keras` and loads with `safe_mode=True`.

`Res2NetImageClassifier`, its preprocessor and image converter (`keras_res2net.hub_classifier`,
imported and registered here) make the keras-hub image classifier and its presets.

keras-hub is an optional dependency (`pip install 'keras-res2net[hub]'`): `import
keras_res2net` never imports it; this module does, and says which extra is missing when
it cannot. Import this module before `keras.saving.load_model` of a model that contains a
`Res2NetBackbone`, so that Keras finds the registered class.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import keras

from keras_res2net.imagenet import IMAGENET_MEAN, IMAGENET_STD
from keras_res2net.models import build_res2net, pyramid_layer_names, resolve_spec
from keras_res2net.trunks import RESNET_EXPANSION, RESNET_PLANES
from keras_res2net.variants import DLA60_CHANNELS, VariantSpec
from keras_res2net.weights import open_weights

HUB_MISSING = ("keras_res2net.hub needs keras-hub, an optional dependency: "
               "pip install 'keras-res2net[hub]'")

try:
    from keras_hub.models import FeaturePyramidBackbone
except ImportError as err:  # only without the `hub` extra
    raise ImportError(HUB_MISSING) from err

__all__ = [
    "Res2NetBackbone",
    "Res2NetImageClassifier",
    "Res2NetImageClassifierPreprocessor",
    "Res2NetImageConverter",
    "check_preset",
    "image_normalization",
    "pyramid_channels",
]


def pyramid_channels(spec: VariantSpec) -> dict[str, int]:
    """Channels of P2..P5 for a variant: 256..2048 (ResNet-style), 128..1024 (DLA-60).

    Widths and scales change the inside of a block, never its output channels.
    """
    if spec.family == "dla":
        return {f"P{level}": DLA60_CHANNELS[level] for level in range(2, 6)}
    return {f"P{index + 2}": planes * RESNET_EXPANSION
            for index, planes in enumerate(RESNET_PLANES)}


def image_normalization(mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> dict[str, list[float]]:
    """`scale` and `offset` for a keras-hub `ImageConverter` equal to `preprocess_input`.

    keras-hub converters compute `x * scale + offset` per channel on [0, 255] pixels; the
    checkpoints expect timm's `(x / 255 - mean) / std` (a variant's `mean`/`std`:
    `keras_res2net.pretrained_config(name)`). Use as
    `RetinaNetImageConverter(image_size=(640, 640), **image_normalization())`.
    """
    return {
        "scale": [1.0 / (255.0 * s) for s in std],
        "offset": [-m / s for m, s in zip(mean, std, strict=True)],
    }


@contextlib.contextmanager
def _layer_dtype_policy(dtype: str | keras.DTypePolicy | None) -> Iterator[None]:
    """Create the trunk's layers under `dtype` (our builders take no per-layer dtype)."""
    if dtype is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@keras.saving.register_keras_serializable(package="keras_res2net")
class Res2NetBackbone(FeaturePyramidBackbone):
    """A Res2Net variant as a keras-hub `FeaturePyramidBackbone`.

    The model maps an image (normalised as `keras_res2net.preprocess_input` does, see
    `image_normalization`) to the last stage's features (stride 32), and `pyramid_outputs`
    gives `{"P2": stride 4, "P3": 8, "P4": 16, "P5": 32}`: the layers and weight names are
    those of `keras_res2net.create_model(variant, include_top=False)`, so its `.weights.h5`
    files and converted PyTorch checkpoints load here unchanged.

    Args:
        variant: a name of `keras_res2net.list_models()` or a timm alias.
        layers: blocks per stage (DLA: per level) instead of the table's; with
            `base_width`, `scale`, `cardinality` and `v1b` (deep stem and average-pool
            shortcuts), None keeps the table's value. Small values make tiny test models.
        image_shape: (height, width, 3); None sizes are dynamic.
        weights: None (random), "imagenet" (the converted cache, never a download), a
            `.weights.h5` path or a PyTorch checkpoint path, loaded once here. The config
            does not record it: a saved model carries its weights.
        stage_pool: False builds mmdetection's layout (no pool in the stride-1 stage
            block); an mmdetection checkpoint sets it. The config records the result.
        fuse_stage_convs: run each stage block's 3x3 convs as one grouped conv.
        fold_batchnorm: for inference only: every BatchNorm folded into the conv before it
            (`keras_res2net.fold_batchnorm`; same outputs, faster, nothing left to train in
            the statistics). The config records it, so a saved folded backbone reloads folded.
        dtype: dtype policy of every layer (e.g. "mixed_float16").
        **kwargs: `name`, `trainable`, as for any keras-hub backbone.
    """

    def __init__(
        self,
        variant: str = "res2net50_v1b_26w_4s",
        *,
        layers: Sequence[int] | None = None,
        base_width: int | None = None,
        scale: int | None = None,
        cardinality: int | None = None,
        v1b: bool | None = None,
        image_shape: Sequence[int | None] = (None, None, 3),
        weights: str | os.PathLike | None = None,
        stage_pool: bool = True,
        fuse_stage_convs: bool = False,
        fold_batchnorm: bool = False,
        dtype: str | keras.DTypePolicy | None = None,
        **kwargs,
    ) -> None:
        spec = resolve_spec(variant, layers=layers, base_width=base_width, scale=scale,
                            cardinality=cardinality, v1b=v1b)
        checkpoint = open_weights(weights, spec)
        stage_pool = bool(stage_pool) and not (
            checkpoint is not None and checkpoint.layout == "mmdet")
        image_shape = tuple(image_shape)

        # === Functional model ===
        with _layer_dtype_policy(dtype):
            trunk = build_res2net(spec, include_top=False, weights=checkpoint,
                                  input_shape=image_shape, stage_pool=stage_pool,
                                  fuse_stage_convs=fuse_stage_convs)
            if fold_batchnorm:
                from keras_res2net.fold import fold_batchnorm as fold

                trunk = fold(trunk)
        pyramid = {level: trunk.get_layer(layer).output
                   for level, layer in pyramid_layer_names(trunk).items()}
        # The trunk's graph becomes this model's: same layers, names and weights.
        super().__init__(inputs=trunk.inputs[0], outputs=pyramid["P5"], dtype=dtype, **kwargs)

        # === Config ===
        self.variant = variant
        self.stage_layers = None if layers is None else tuple(int(n) for n in layers)
        self.base_width = base_width
        self.scale = scale
        self.cardinality = cardinality
        self.v1b = v1b
        self.image_shape = image_shape
        self.stage_pool = stage_pool
        self.fuse_stage_convs = bool(fuse_stage_convs)
        self.fold_batchnorm = bool(fold_batchnorm)
        self.spec = spec
        self.pyramid_outputs = pyramid

    def get_config(self) -> dict:
        """Everything `__init__` needs to rebuild the architecture (weights excepted)."""
        config = super().get_config()
        config.update({
            "variant": self.variant,
            "layers": None if self.stage_layers is None else list(self.stage_layers),
            "base_width": self.base_width,
            "scale": self.scale,
            "cardinality": self.cardinality,
            "v1b": self.v1b,
            "image_shape": list(self.image_shape),
            "stage_pool": self.stage_pool,
            "fuse_stage_convs": self.fuse_stage_convs,
            "fold_batchnorm": self.fold_batchnorm,
        })
        return config


# The classifier, preprocessor and converter subclass classes above: imported last, so that
# `import keras_res2net.hub` registers them for `keras_hub.models.ImageClassifier.from_preset`.
from keras_res2net.hub_classifier import (  # noqa: E402
    Res2NetImageClassifier,
    Res2NetImageClassifierPreprocessor,
    Res2NetImageConverter,
    check_preset,
)
