"""The converter CLI, the `weights="imagenet"` cache and the predict CLI, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from reference_data import ReferenceFixture, load_manifests, seeded_images, seeded_parameters

import keras_res2net
from keras_res2net import convert, predict
from keras_res2net.weights import CACHE_ENV, cached_weights_path

FULL = "res2net50_26w_4s_full"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_missing_imagenet_weights_explain_how_to_convert(cache):
    with pytest.raises(FileNotFoundError, match="python -m keras_res2net.convert") as error:
        keras_res2net.Res2Net101V1b(weights="imagenet")
    message = str(error.value)
    assert "res2net101_v1b_26w_4s-0812c246.pth" in message and "https://" in message
    assert "python -m keras_res2net.convert" in message
    assert str(cache / "res2net101_v1b_26w_4s.weights.h5") in message


def test_convert_then_imagenet_matches_reference(cache, save_safetensors, capsys):
    fixture = ReferenceFixture(FULL)
    source = save_safetensors(fixture.state_dict(), "res2net50_26w_4s.safetensors")
    destination = cached_weights_path("res2net50_26w_4s")
    assert convert.main([source, destination, "--model", "res2net50_26w_4s"]) == 0
    assert "reload verified" in capsys.readouterr().out
    assert convert.main([source, destination, "--model", "res2net50_26w_4s"]) == 2
    assert "--force" in capsys.readouterr().err

    images = seeded_images(2, 224, 224)
    model = keras_res2net.Res2Net50(weights="imagenet", classifier_activation=None)
    logits = np.asarray(model(images, training=False))
    assert np.abs(logits - fixture.outputs(224, 224)[""]).max() < 1e-4

    headless = keras_res2net.Res2Net50(weights="imagenet", include_top=False, pooling="avg")
    pooled = np.asarray(headless(images, training=False))
    fc = model.get_layer("fc")
    np.testing.assert_allclose(pooled @ np.asarray(fc.kernel) + np.asarray(fc.bias), logits,
                               atol=1e-4)


def test_predict_cli_prints_top5(cache, save_safetensors, tmp_path, capsys):
    from PIL import Image

    fixture = ReferenceFixture(FULL)
    source = save_safetensors(fixture.state_dict(), "r50.safetensors")
    pixels = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    image_path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(image_path)
    assert predict.main([str(image_path), "--model", "res2net50_26w_4s", "--weights",
                         source]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image_path) and len(lines) == 6
    assert lines[1].lstrip().startswith("1. ") and "%" in lines[1]
    # the printed top-1 is what the model computes on the reference's eval transform
    model = keras_res2net.Res2Net50(weights=source)
    batch = keras_res2net.preprocess_input(predict.load_eval_image(str(image_path))[None])
    best = keras_res2net.decode_predictions(np.asarray(model(batch)), top=1)[0][0]
    assert best[1] in lines[1] and best[0] in lines[1]


def test_mmdetection_backbone_converts_to_a_headless_no_pool_model(cache, save_safetensors):
    shapes = load_manifests()["res2net50_v1b_26w_4s"]["keys"]
    tensors = seeded_parameters(shapes)
    tensors.update({k: np.abs(np.random.default_rng(0).normal(size=v)).astype(np.float32) + 0.5
                    for k, v in shapes.items() if k.endswith(("running_mean", "running_var"))})
    stems = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
             "conv1.6": "stem.6", "bn1": "stem.7"}
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("fc."):
            continue
        module, _, field = key.rpartition(".")
        renamed["backbone." + stems.get(module, module) + "." + field] = value
    source = save_safetensors(renamed, "mmdet.safetensors")
    destination = str(cache / "mmdet_r50.weights.h5")
    assert convert.main([source, destination, "--model", "res2net50_v1b_26w_4s"]) == 0

    model = keras_res2net.Res2Net50V1b(weights=destination, include_top=False)
    names = {layer.name for layer in model.layers}
    assert "layer1_0_pool" not in names and "layer2_0_pool" in names
    direct = keras_res2net.Res2Net50V1b(weights=source, include_top=False)
    images = seeded_images(1, 64, 64)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(direct(images)))
    with pytest.raises(ValueError, match="backbone weights only"):
        keras_res2net.Res2Net50V1b(weights=destination)
