"""Pick the detector class an experiment's `ModelConfig` describes."""

from __future__ import annotations

import keras

from keras_res2net.detection.configs import ModelConfig
from keras_res2net.detection.modeling.cascade import CascadeRCNN
from keras_res2net.detection.modeling.detector import MaskRCNN, TwoStageDetector
from keras_res2net.detection.modeling.htc import HybridTaskCascade


def build_detector(config: ModelConfig, backbone: keras.Model) -> TwoStageDetector:
    """Faster/Mask R-CNN, Cascade (Mask) R-CNN or HTC on `backbone`, by `config`."""
    if config.htc is not None:
        return HybridTaskCascade(config, backbone)
    if config.cascade is not None:
        return CascadeRCNN(config, backbone)
    return MaskRCNN(config, backbone)
