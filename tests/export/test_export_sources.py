"""Where models and sample images come from: a variant name with weights, image folders, TFDS."""

from __future__ import annotations

import keras
import numpy as np
from PIL import Image

import keras_res2net
from keras_res2net.export import calibration, cli


def test_variant_name_with_weights(tmp_path, capsys):
    """The artifact computes the saved weights' model, not a fresh random one (which the
    CLI's own check would also pass, against itself, if `--weights` were ignored)."""
    knobs = dict(layers=(1, 1, 1, 1), base_width=8, input_shape=(32, 32, 3), classes=10)
    keras.utils.set_random_seed(1)
    model = keras_res2net.create_model("res2net50_26w_4s", **knobs)
    weights = tmp_path / "tiny.weights.h5"
    model.save_weights(weights)
    code = cli.main(["--model", "res2net50_26w_4s", "--weights", str(weights), "--layers",
                     "1,1,1,1", "--base-width", "8", "--input-size", "32", "--classes", "10",
                     "--format", "keras", "--output", str(tmp_path / "out"),
                     "--latency-runs", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    artifact = keras.saving.load_model(tmp_path / "out" / "res2net50_26w_4s.keras")
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    (exported,) = artifact(images).values()  # {"probabilities": ...}
    exported = np.asarray(exported)
    np.testing.assert_allclose(exported, np.asarray(model(images)), atol=1e-5)
    keras.utils.set_random_seed(2)
    fresh = keras_res2net.create_model("res2net50_26w_4s", **knobs)
    assert np.max(np.abs(exported - np.asarray(fresh(images)))) > 1e-3


def test_image_folder_samples(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for i in range(5):
        pixels = rng.integers(0, 256, (40, 48, 3 if i % 2 else 1), dtype=np.uint8).squeeze()
        Image.fromarray(pixels).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert calibration.describe_problem(str(tmp_path)) is None
    samples = calibration.load_samples(str(tmp_path), (32, 32, 3), calibration_size=3)
    assert samples.calibration.shape == (3, 32, 32, 3) and samples.check.shape == (5, 32, 32, 3)
    assert samples.check.dtype == np.uint8


def test_digits_and_seeded_samples():
    digits = calibration.load_samples("digits", (32, 32, 3))
    assert digits.calibration.shape[1:] == (32, 32, 3) and len(digits.check) > 300
    first = calibration.load_samples(None, (32, 32, 3))
    again = calibration.load_samples(None, (32, 32, 3))
    np.testing.assert_array_equal(first.check, again.check)


def test_unprepared_tfds_name_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    problem = calibration.describe_problem("mnist")
    assert problem and "not prepared" in problem and "nothing is downloaded" in problem
