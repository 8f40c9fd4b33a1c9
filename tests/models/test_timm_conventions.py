"""What timm users expect: per-checkpoint pretrained settings, `list_models` wildcards and
`features_only` with `out_indices`."""

from __future__ import annotations

import numpy as np
import pytest

import keras_res2net

pytestmark = pytest.mark.core
SMALL = dict(layers=(1, 1, 1, 1), base_width=8)
SMALL_DLA = dict(layers=(1, 1, 1, 1, 1, 1), base_width=8)

# timm's `_cfg` in timm/models/res2net.py and timm/models/dla.py (both read for this test):
# input_size (3, 224, 224), crop_pct 0.875, interpolation 'bilinear',
# mean IMAGENET_DEFAULT_MEAN, std IMAGENET_DEFAULT_STD.
TIMM_CFG = dict(input_size=224, crop_pct=0.875, interpolation="bilinear",
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2net50d", "res2next50",
                                  "dla60_res2net", "res2net200_v1b_26w_4s"])
def test_every_variant_carries_timms_pretrained_settings(name):
    config = keras_res2net.pretrained_config(name)
    assert {key: getattr(config, key) for key in TIMM_CFG} == TIMM_CFG


def test_cifar_models_take_the_whole_32px_image():
    config = keras_res2net.pretrained_config("res2next29_6c_24w_4s")
    assert (config.input_size, config.crop_pct) == (32, 1.0)


def test_pretrained_config_of_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown Res2Net variant 'res2net42'"):
        keras_res2net.pretrained_config("res2net42")


def test_training_eval_crop_defaults_to_the_variants_crop_pct():
    from keras_res2net.training.config import TrainConfig, resolve_config

    config = resolve_config(TrainConfig(data="imagenette", model="res2net50d"))
    assert config.eval_crop_fraction == 0.875
    chosen = resolve_config(TrainConfig(data="imagenette", eval_crop_fraction=1.0))
    assert chosen.eval_crop_fraction == 1.0  # an explicit flag wins


@pytest.mark.parametrize("pattern, expected", [
    ("res2net50*", ["res2net50_48w_2s", "res2net50_26w_4s", "res2net50_14w_8s",
                    "res2net50_26w_6s", "res2net50_26w_8s", "res2net50_v1b_26w_4s"]),
    ("*v1b*", ["res2net50_v1b_26w_4s", "res2net101_v1b_26w_4s", "res2net152_v1b_26w_4s",
               "res2net200_v1b_26w_4s"]),
    ("res2net10?d", ["res2net101_v1b_26w_4s"]),  # timm's alias matches, the name is returned
    (["dla*", "RES2NEXT5*"], ["res2next50", "dla60_res2net", "dla60_res2next"]),
    ("res2next29*", ["res2next29_6c_24w_4s", "res2next29_8c_25w_4s", "res2next29_6c_24w_6s"]),
    ("resnet*", []),
])
def test_list_models_takes_timm_style_wildcards(pattern, expected):
    assert keras_res2net.list_models(pattern) == expected


def test_list_models_without_a_pattern_is_unchanged():
    assert keras_res2net.list_models() == keras_res2net.list_models("") == list(
        keras_res2net.VARIANTS)


@pytest.mark.parametrize("variant, out_indices, expected", [
    # ResNet-style: timm's feature_info is act1 (stride 2), layer1..layer4.
    ("res2net50_v1b_26w_4s", (0, 1, 2, 3, -1), {"P1": (32, 64), "P2": (16, 256),
                                               "P3": (8, 512), "P4": (4, 1024),
                                               "P5": (2, 2048)}),
    # DLA: level0 (stride 1) .. level5 (stride 32).
    ("dla60_res2net", (0, 1, 5), {"P0": (64, 16), "P1": (32, 32), "P5": (2, 1024)}),
])
def test_out_indices_pick_timms_feature_levels(variant, out_indices, expected):
    knobs = SMALL_DLA if variant.startswith("dla") else SMALL
    model = keras_res2net.create_model(variant, features_only=True, out_indices=out_indices,
                                       **knobs)
    images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    features = model(images)
    assert list(features) == sorted(expected)
    assert {level: (value.shape[1], value.shape[-1]) for level, value in features.items()} \
        == expected


def test_bad_out_indices_are_refused():
    with pytest.raises(ValueError, match=r"index 5 is out of range; .* has 5 feature levels "
                                         r"\(0: stride 2, 1: stride 4.*4: stride 32\)"):
        keras_res2net.create_model("res2net50_26w_4s", features_only=True, out_indices=(1, 5),
                                   **SMALL)
    with pytest.raises(ValueError, match="index -7 is out of range; .* 6 feature levels"):
        keras_res2net.create_model("dla60_res2net", features_only=True, out_indices=(-7,),
                                   **SMALL_DLA)
    with pytest.raises(ValueError, match="names level P5 twice"):
        keras_res2net.create_model("res2net50_26w_4s", features_only=True,
                                   out_indices=(4, -1), **SMALL)
    with pytest.raises(ValueError, match="needs features_only=True"):
        keras_res2net.create_model("res2net50_26w_4s", out_indices=(1,), **SMALL)
