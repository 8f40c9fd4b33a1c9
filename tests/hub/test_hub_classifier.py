"""keras-hub classifier and presets: `python -m keras_res2net.convert ... --preset DIR` writes a
folder that `keras_hub.models.ImageClassifier.from_preset` and `Backbone.from_preset` load.

The checkpoint is the reduced (2-1-1-1 blocks) res2net50_26w_4s fixture whose logits PyTorch
measured; the converter's depth is the test seam (the CLI converts published depths only).
"""

from __future__ import annotations

import os
import shutil

import keras
import keras_hub  # no importorskip: `hub` is part of the `test` extra
import numpy as np
import pytest
import tensorflow as tf
from eval_reference import reference_eval, smooth_image
from reference_data import ReferenceFixture, seeded_images

import keras_res2net
from keras_res2net import convert, hub_preset, models
from keras_res2net.cli_errors import WorkError
from keras_res2net.hub import (
    Res2NetBackbone,
    Res2NetImageClassifier,
    Res2NetImageClassifierPreprocessor,
    Res2NetImageConverter,
    check_preset,
)

FIXTURE = "res2net50_26w_4s_reduced"
VARIANT = "res2net50_26w_4s"
LAYERS = (2, 1, 1, 1)
PRESET_FILES = ["config.json", "image_converter.json", "metadata.json", "model.weights.h5",
                "preprocessor.json", "task.json", "task.weights.h5"]


def reduced_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the converter build the fixture's depth (it resolves the name it is given)."""
    resolve = models.resolve_spec
    monkeypatch.setattr(models, "resolve_spec",
                        lambda name, **knobs: resolve(name, **{**knobs, "layers": LAYERS}))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(checkpoint path, preset folder, the CLI's stdout), converted once for the module."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("hub_preset")
    source = str(folder / "res2net50_26w_4s.safetensors")
    tensors = ReferenceFixture(FIXTURE).state_dict()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, source)
    preset = str(folder / "preset")
    with pytest.MonkeyPatch.context() as monkeypatch:
        reduced_depth(monkeypatch)
        assert convert.main([source, "--model", VARIANT, "--preset", preset]) == 0
    return source, preset


@pytest.fixture(scope="module")
def classifier(converted):
    return keras_hub.models.ImageClassifier.from_preset(converted[1])


@pytest.fixture(scope="module")
def reference_model(converted):
    """`create_model(..., weights=checkpoint)`, logits, any input size."""
    return keras_res2net.create_model(VARIANT, layers=LAYERS, weights=converted[0],
                                      input_shape=(None, None, 3), classifier_activation=None)


def test_preset_loads_in_keras_hub_and_gives_pytorchs_logits(converted, classifier,
                                                             reference_model):
    _, preset = converted
    assert sorted(os.listdir(preset)) == PRESET_FILES
    assert not [n for n in os.listdir(os.path.dirname(preset)) if n.startswith(".converting")]
    assert type(classifier) is Res2NetImageClassifier
    converter = classifier.preprocessor.image_converter
    assert type(converter) is Res2NetImageConverter
    assert converter.image_size == (224, 224) and converter.crop_pct == 0.875
    # Logits on the normalised images PyTorch ran (the fixture's own measurement).
    images = seeded_images(2, 224, 224)
    logits = keras.ops.convert_to_numpy(classifier(images, training=False))
    assert np.abs(logits - ReferenceFixture(FIXTURE).outputs(224, 224)[""]).max() < 1e-4

    backbone = keras_hub.models.Backbone.from_preset(preset)
    assert type(backbone) is Res2NetBackbone and backbone.stage_layers == LAYERS
    last_stage = models.pyramid_layer_names(reference_model)["P5"]
    trunk = keras.Model(reference_model.input, reference_model.get_layer(last_stage).output)
    small = seeded_images(1, 64, 64, seed=3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(small, training=False)),
                               np.asarray(trunk(small, training=False)), atol=1e-5)


def test_predict_equals_create_model_on_the_same_preprocessing(classifier, reference_model):
    raw = np.stack([smooth_image(180, 240, seed=i) for i in range(2)])  # uint8, 3:4
    predicted = classifier.predict(raw, verbose=0)  # keras-hub's tf.data path
    # The converter is the checkpoint's eval transform: PIL's reference within one grey level.
    pretrained = keras_res2net.pretrained_config(VARIANT)
    inputs = keras.ops.convert_to_numpy(classifier.preprocessor(raw))
    expected_inputs = keras_res2net.preprocess_input(np.stack(
        [reference_eval(image, pretrained.input_size, pretrained.crop_pct) for image in raw]))
    assert np.abs(inputs - np.asarray(expected_inputs)).max() <= 1.0 / (255 * 0.224) + 1e-5
    np.testing.assert_allclose(predicted, np.asarray(reference_model(inputs, training=False)),
                               rtol=1e-4, atol=1e-4)


def test_image_converter_is_the_eval_transform_in_eager_and_tf_data():
    converter = Res2NetImageConverter(image_size=(32, 32), crop_pct=0.9)
    image = smooth_image(131, 70, seed=5)
    expected = np.asarray(keras_res2net.preprocess_input(reference_eval(image, 32, 0.9)))
    eager = keras.ops.convert_to_numpy(converter(image))  # unbatched
    assert eager.shape == (32, 32, 3)
    assert np.abs(eager - expected).max() <= 1.0 / (255 * 0.224) + 1e-5
    mapped = next(iter(tf.data.Dataset.from_tensors(image[None]).map(converter)))
    np.testing.assert_allclose(np.asarray(mapped)[0], eager, atol=1e-4)
    rebuilt = Res2NetImageConverter.from_config(converter.get_config())
    assert rebuilt.crop_pct == 0.9 and rebuilt.image_size == (32, 32)
    with pytest.raises(ValueError, match=r"crop fraction \(crop_pct\) must be in \(0, 1\]"):
        Res2NetImageConverter(image_size=(32, 32), crop_pct=1.5)


def test_incomplete_preset_names_the_missing_file(converted, tmp_path):
    _, preset = converted
    broken = str(tmp_path / "broken")
    shutil.copytree(preset, broken)
    os.remove(os.path.join(broken, "task.weights.h5"))  # keras-hub alone: a random classifier
    with pytest.raises(FileNotFoundError, match="incomplete keras-hub preset: task.weights.h5 "
                                                "is missing"):
        keras_hub.models.ImageClassifier.from_preset(broken)
    for name in ("model.weights.h5", "image_converter.json"):
        partial = str(tmp_path / name)
        shutil.copytree(preset, partial)
        os.remove(os.path.join(partial, name))
        with pytest.raises(FileNotFoundError, match=f"{name} is missing"):
            check_preset(partial)
    check_preset(preset)  # the complete folder passes


def test_convert_refuses_bad_destinations_and_never_half_writes(converted, tmp_path, capsys,
                                                                monkeypatch):
    source, preset = converted
    assert convert.main([source, "--model", VARIANT]) == 2
    assert "Nothing to write" in capsys.readouterr().err
    assert convert.main([source, "--model", VARIANT, "--preset", preset]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"")
    assert convert.main([source, "--model", VARIANT, "--preset", str(other), "--force"]) == 2
    assert "not a keras-hub preset: refusing to replace it" in capsys.readouterr().err

    # A failed reload check leaves an existing preset as it was, and no temporary folder.
    kept = tmp_path / "kept"
    shutil.copytree(preset, kept)
    before = {name: (kept / name).read_bytes() for name in os.listdir(kept)}
    reduced_depth(monkeypatch)

    def fail(*_args, **_kwargs):
        raise WorkError("reloaded preset differs")

    monkeypatch.setattr(hub_preset, "_verify", fail)
    assert convert.main([source, "--model", VARIANT, "--preset", str(kept), "--force"]) == 1
    assert "reloaded preset differs" in capsys.readouterr().err
    assert {name: (kept / name).read_bytes() for name in os.listdir(kept)} == before
    assert sorted(os.listdir(tmp_path)) == ["kept", "photos"]


def test_classifier_saves_to_keras_and_loads_with_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    converter = Res2NetImageConverter(image_size=(64, 64), crop_pct=0.875)
    classifier = Res2NetImageClassifier(
        Res2NetBackbone(VARIANT, layers=(1, 1, 1, 1), base_width=8), num_classes=3,
        preprocessor=Res2NetImageClassifierPreprocessor(image_converter=converter))
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is Res2NetImageClassifier
    assert loaded.preprocessor.image_converter.get_config() == converter.get_config()
    inputs = converter(smooth_image(80, 100, seed=2)[None])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs, training=False)),
                               keras.ops.convert_to_numpy(classifier(inputs, training=False)),
                               atol=1e-6)
