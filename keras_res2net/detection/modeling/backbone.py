"""The Res2Net pyramid backbone with mmdetection's freezing rules.

`frozen_stages=1` freezes the stem and layer1 (their weights never change);
`norm_eval=True` makes every BatchNorm layer run in inference mode with frozen statistics.
Affine BN parameters of unfrozen stages still train, as in mmdetection
(`norm_eval=True, requires_grad=True`): the detector calls the backbone with `training=False`.
"""

from __future__ import annotations

import keras

from keras_res2net.detection.configs import BackboneConfig
from keras_res2net.models import create_model


def _stage_of(layer_name: str) -> int:
    """0 for the stem, 1..4 for layer1..layer4, -1 for anything else (e.g. the input)."""
    if layer_name.startswith(("conv1", "bn1", "relu", "maxpool")):
        return 0
    if layer_name.startswith("layer"):
        return int(layer_name[5])
    return -1


def freeze_stages(model: keras.Model, frozen_stages: int) -> None:
    """Set `trainable=False` on the stem (stage 0) and stages 1..`frozen_stages`."""
    for layer in model.layers:
        stage = _stage_of(layer.name)
        if 0 <= stage <= frozen_stages:
            layer.trainable = False


def build_backbone(config: BackboneConfig, weights: str | None = None) -> keras.Model:
    """The `{"P2".."P5"}` Res2Net feature model for detection, frozen as configured.

    `config.stage_pool` is passed through explicitly: the published detectors are
    mmdetection's Res2Net (no pool in layer1's stage block) even when `weights` is None.
    """
    model = create_model(config.name, features_only=True, input_shape=(None, None, 3),
                         weights=weights, layers=config.layers, base_width=config.base_width,
                         scale=config.scale, stage_pool=config.stage_pool)
    if config.frozen_stages >= 0:
        freeze_stages(model, config.frozen_stages)
    return model
