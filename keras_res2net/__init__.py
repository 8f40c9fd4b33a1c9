"""keras-res2net: Res2Net backbones for Keras 3, weight-compatible with the PyTorch reference."""

from keras_res2net.imagenet import decode_predictions, preprocess_input
from keras_res2net.models import (
    Res2Net50,
    Res2Net50V1b,
    Res2Net101,
    Res2Net101V1b,
    Res2Net152,
    Res2Net152V1b,
    Res2Net200V1b,
    Res2NetDLA60,
    Res2NeXt50,
    Res2NeXtDLA60,
    build_res2net,
    create_model,
    pyramid_model,
)
from keras_res2net.variants import VARIANTS, get_variant, list_models

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "Res2Net50",
    "Res2Net50V1b",
    "Res2Net101",
    "Res2Net101V1b",
    "Res2Net152",
    "Res2Net152V1b",
    "Res2Net200V1b",
    "Res2NeXt50",
    "Res2NetDLA60",
    "Res2NeXtDLA60",
    "build_res2net",
    "decode_predictions",
    "preprocess_input",
    "create_model",
    "get_variant",
    "list_models",
    "pyramid_model",
]
