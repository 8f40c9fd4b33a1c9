"""Bad input gets a clear error and loses nothing: one test per reproduced case.

Each asserts the message names the file or flag at fault, the exit status (2: usage, 1: failed
work), and that nothing half-written is left behind.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from keras_res2net import predict as predict_cli
from keras_res2net.variants import PretrainedConfig


def _tiny(classes=3, size=32):
    from keras_res2net import create_model

    return create_model("res2net50_26w_4s", layers=(1, 1, 1, 1), base_width=4,
                        input_shape=(size, size, 3), classes=classes)


# -- predict --------------------------------------------------------------------------------
def test_predict_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = str(tmp_path / "gray16.png")
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode in predict_cli.SIXTEEN_BIT_MODES
    pixels = predict_cli.load_eval_image(path, PretrainedConfig(input_size=64, crop_pct=1.0))
    expected = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert (pixels == 255).mean() < 0.01  # RGB conversion used to turn 98% white


def test_predict_decompression_bomb_names_file(tmp_path, capsys, monkeypatch):
    from PIL import Image

    path = str(tmp_path / "huge.png")
    Image.new("L", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40000 px > 2 * 100: a "bomb"
    code = predict_cli.main([path, "--model", "res2net50_26w_4s", "--weights", "imagenet"])
    err = capsys.readouterr().err
    assert code == 2
    assert path in err and "too large" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_predict_checks_images_before_building_model(tmp_path, capsys, monkeypatch):
    import keras_res2net.models as models

    monkeypatch.setattr(models, "create_model", lambda *a, **k: pytest.fail("model built"))
    missing = str(tmp_path / "missing.jpg")
    code = predict_cli.main([missing, "--model", "res2net50_26w_4s", "--weights", "imagenet"])
    assert code == 2 and missing in capsys.readouterr().err


def test_predict_top_zero_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["x.png", "--model", "res2net50_26w_4s", "--weights", "w", "--top", "0"])
    assert exit_info.value.code == 2 and "--top" in capsys.readouterr().err


def test_predict_accepts_keras_model_file(tmp_path, capsys):
    from PIL import Image

    model_path = str(tmp_path / "model.keras")
    _tiny().save(model_path)
    image = str(tmp_path / "digit.png")
    Image.new("RGB", (40, 48), (10, 200, 30)).save(image)
    assert predict_cli.main([image, "--model", model_path, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "32x32 input" in out and "preprocess_input" in out and "class " in out


def test_predict_corrupt_keras_file(tmp_path, capsys):
    model_path = tmp_path / "model.keras"
    model_path.write_bytes(b"PK\x03\x04 truncated")
    image = str(tmp_path / "a.png")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert predict_cli.main([image, "--model", str(model_path)]) == 2
    err = capsys.readouterr().err
    assert "not a valid .keras file" in err and str(model_path) in err


# -- convert --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    return _tiny()


def _tmpfs(path, options: str) -> bool:
    import subprocess

    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _umount(path) -> None:
    import subprocess

    subprocess.run(["umount", str(path)], capture_output=True)


def _write(model, destination):
    from keras_res2net.convert import write_verified

    write_verified(model, {"classes": 3}, str(destination), lambda path: model, size=32)


def test_convert_disk_full_fault_injected(tmp_path, tiny_model, monkeypatch):
    import errno

    from keras_res2net.cli_errors import WorkError, exit_code

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    destination = tmp_path / "out.weights.h5"
    with pytest.raises(WorkError) as error:
        _write(tiny_model, destination)
    assert str(destination) in str(error.value) and "disk is full" in str(error.value)
    assert exit_code(error.value) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("options,reason", [("size=64k", "disk is full"),
                                            ("size=1m,ro", "read-only")])
def test_convert_onto_full_or_read_only_tmpfs(tmp_path, tiny_model, options, reason):
    from keras_res2net.cli_errors import WorkError

    folder = tmp_path / "mnt"
    if not _tmpfs(folder, options):
        pytest.skip("needs root to mount a tmpfs")
    try:
        with pytest.raises(WorkError, match=reason) as error:
            _write(tiny_model, folder / "out.weights.h5")
        assert str(folder / "out.weights.h5") in str(error.value)
        assert os.listdir(folder) == []
    finally:
        _umount(folder)


def test_convert_output_respects_umask(tmp_path, tiny_model):
    destination = tmp_path / "out.weights.h5"
    old = os.umask(0o022)
    try:
        _write(tiny_model, destination)
    finally:
        os.umask(old)
    assert os.stat(destination).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["out.weights.h5"]


def test_convert_removes_stale_temporaries(tmp_path, capsys):
    from keras_res2net import convert

    stale = tmp_path / ".converting-k1ll3d.weights.h5"
    stale.write_bytes(b"half")
    missing = str(tmp_path / "missing.pth")
    code = convert.main([missing, str(tmp_path / "out.weights.h5"), "--model",
                         "res2net50_26w_4s"])
    err = capsys.readouterr().err
    assert code == 2 and missing in err and "Traceback" not in err
    assert str(stale) in err and not stale.exists()


# -- .weights.h5 and .keras files -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_model):
    path = str(tmp_path_factory.mktemp("weights") / "tiny.weights.h5")
    tiny_model.save_weights(path)
    return path


def _tiny_with(weights, **knobs):
    from keras_res2net import create_model

    args = dict(layers=(1, 1, 1, 1), base_width=4, input_shape=(32, 32, 3), classes=3)
    args.update(knobs)
    return create_model("res2net50_26w_4s", weights=weights, **args)


@pytest.mark.parametrize("knobs, expected, limit", [
    ({"classes": 5}, ("3-class classifier", "5 classes"), 400),
    ({"base_width": 8}, ("does not fit", "layer"), 600),
], ids=["other_class_count", "other_variant"])
def test_weights_of_another_model_named_briefly(tiny_weights, knobs, expected, limit):
    with pytest.raises(ValueError) as error:
        _tiny_with(tiny_weights, **knobs)
    message = str(error.value)
    assert tiny_weights in message and all(text in message for text in expected), message
    assert len(message) < limit


def test_empty_weights_file_named(tmp_path):
    path = tmp_path / "empty.weights.h5"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a valid .weights.h5") as error:
        _tiny_with(str(path))
    assert str(path) in str(error.value)
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not a valid .weights.h5"):
        _tiny_with(str(garbage))


def test_fitting_weights_still_load(tiny_weights, tiny_model):
    model = _tiny_with(tiny_weights)
    for loaded, saved in zip(model.get_weights(), tiny_model.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)



# -- export ---------------------------------------------------------------------------------
def test_export_removes_stale_staging_folders(tmp_path, capsys):
    from keras_res2net.export import cli

    output = tmp_path / "export"
    stale = output / ".export-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "model.tflite").write_bytes(b"half")
    broken = tmp_path / "model.keras"
    broken.write_bytes(b"PK\x03\x04 truncated")
    code = cli.main(["--model", str(broken), "--format", "keras", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and str(stale) in err and not stale.exists()
    assert f"{broken} is not a valid .keras file" in err  # was Keras' "File not found"


def test_predict_truncated_image_named_before_model(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import keras_res2net.models as models

    monkeypatch.setattr(models, "create_model", lambda *a, **k: pytest.fail("model built"))
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    code = predict_cli.main([str(path), "--model", "res2net50_26w_4s", "--weights", "imagenet"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "Traceback" not in err
