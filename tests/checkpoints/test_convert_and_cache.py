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


def _ramp_image(height: int, width: int) -> np.ndarray:
    """Red rises with the column, green with the row, blue constant: where a pixel of a
    resized crop came from can be read off its value."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)


@pytest.mark.parametrize("height, width, resized, box", [
    # 300x400: the shorter side 300 -> 256, so 400 -> round(341.3) = 341; centre 224 crop.
    (300, 400, (341, 256), (58, 16, 282, 240)),
    # Portrait 500x320: 320 -> 256, 500 -> 400; the crop starts 88 rows down.
    (500, 320, (256, 400), (16, 88, 240, 312)),
])
def test_eval_transform_is_short_side_256_then_centre_crop_224(tmp_path, height, width,
                                                              resized, box):
    """The eval transform, computed by hand: sizes and crop box written out above, and the
    ramp's values checked against the source coordinates each output pixel maps to."""
    from PIL import Image

    path = tmp_path / "ramp.png"  # lossless: the pixels are exactly the ramp
    Image.fromarray(_ramp_image(height, width)).save(path)
    got = predict.load_eval_image(str(path))
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    expected = np.asarray(Image.open(path).resize(resized, Image.BILINEAR).crop(box))
    np.testing.assert_array_equal(got, expected)
    # Independently of PIL: output pixel (i, j) samples the source at the centre-aligned
    # coordinates below; the ramp's value there is what a bilinear resize of it gives.
    scale_x, scale_y = width / resized[0], height / resized[1]
    cols = (box[0] + np.arange(224) + 0.5) * scale_x - 0.5
    rows = (box[1] + np.arange(224) + 0.5) * scale_y - 0.5
    np.testing.assert_allclose(got[0, :, 0], cols * 255 / (width - 1), atol=1.5)
    np.testing.assert_allclose(got[:, 0, 1], rows * 255 / (height - 1), atol=1.5)
    assert (got[..., 2] == 128).all()


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
    # The printed top-1 is what the model computes on the reference's eval transform, done
    # here without predict.load_eval_image: 300x400 -> 256x341 (bilinear), the centre 224.
    with Image.open(image_path) as decoded:
        crop = np.asarray(decoded.convert("RGB").resize((341, 256), Image.BILINEAR).crop(
            (58, 16, 282, 240)))
    model = keras_res2net.Res2Net50(weights=source)
    batch = keras_res2net.preprocess_input(crop[None])
    best = keras_res2net.decode_predictions(np.asarray(model(batch)), top=1)[0][0]
    assert best[1] in lines[1] and best[0] in lines[1]
    assert f"{best[2]:7.2%}" in lines[1]  # its probability too, at the printed precision


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
