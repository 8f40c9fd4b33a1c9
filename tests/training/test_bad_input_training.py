"""Bad input to training gets a clear error before anything is written, and a killed run's
leftovers are cleaned at the next start (the classification half of tests/test_bad_input.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest


# -- training -------------------------------------------------------------------------------
def _jpeg(seed: int) -> bytes:
    import tensorflow as tf

    image = np.random.default_rng(seed).integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def _image_folder(root, classes=("a", "b"), per_class=2):
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.jpg").write_bytes(_jpeg(i))
    return root


def _folder_config(tiny_config, data_dir, model_dir, **overrides):
    return tiny_config(model_dir, data="folder", data_dir=str(data_dir), image_size=32,
                       batch_size=2, epochs=1, steps_per_epoch=1, eval_crop_fraction=1.0,
                       **overrides)


def test_folder_corrupt_jpeg_listed_before_training(tmp_path, tiny_config, capsys):
    from keras_res2net.training import run
    from keras_res2net.training.data import open_source

    data = _image_folder(tmp_path / "data")
    bad = data / "train" / "b" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: "Invalid JPEG data" mid-epoch before
    model_dir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run(_folder_config(tiny_config, data, model_dir))
    assert str(bad) in str(error.value) and "--skip_bad_images" in str(error.value)
    assert not model_dir.exists()

    source = open_source("folder", data_dir=str(data), skip_bad_images=True)
    assert source.num_examples == {"train": 3, "val": 4}
    assert "skipped 1 image" in capsys.readouterr().out


def test_folder_single_class_and_empty_folder_refused(tmp_path, tiny_config):
    from keras_res2net.training import run

    model_dir = tmp_path / "run"
    single = _image_folder(tmp_path / "single", classes=("only",))
    with pytest.raises(ValueError, match="at least 2 classes"):
        run(_folder_config(tiny_config, single, model_dir))
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        run(_folder_config(tiny_config, empty, model_dir))
    assert not model_dir.exists()


def test_bogus_model_refused_before_model_dir(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="--model"):
        tiny_config(tmp_path / "run", model="res2net_bogus")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_model_dir_resume_cases(tmp_path, tiny_config, train_main, capfd, monkeypatch):
    """A finished run says so; stale temporaries of killed runs are removed and reported; a
    folder of another model is refused up front; a failed model.keras save leaves no file.
    The first run goes through the script: TF's per-checkpoint "Sharding callback" INFO line
    is not printed, and the output ends with where each output went."""
    import keras

    from keras_res2net.training import run

    model_dir = tmp_path / "run"
    assert train_main("--data", "digits", "--layers", "1,1,1,1", "--base_width", "4",
                      "--batch_size", "32", "--epochs", "1", "--steps_per_epoch", "1",
                      "--model_dir", str(model_dir)) == 0
    first = capfd.readouterr()
    assert "Final: val top-1" in first.out
    assert "Sharding callback" not in first.out + first.err
    # Not a terminal: one line per epoch (no progress bar, no "Epoch 1/1" header), then where
    # each output went.
    assert "Epoch 1/1" not in first.out and "ms/step" not in first.out
    assert f"Outputs in {model_dir}:\n  model.keras" in first.out
    assert "  checkpoints" in first.out and "  history.png" in first.out
    assert (model_dir / "model.keras").is_file() and (model_dir / "train_config.json").is_file()
    config = tiny_config(model_dir, epochs=1, steps_per_epoch=1)

    stale = [model_dir / ".partial-k1ll3d.keras", model_dir / "checkpoints" / "ckpt-9_temp"]
    stale[0].write_bytes(b"PK truncated")
    stale[1].mkdir()

    def killed_mid_save(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", killed_mid_save)
    (model_dir / "model.keras").unlink()
    with pytest.raises(Exception, match="model.keras"):
        run(config)
    out = capfd.readouterr()
    assert "Nothing to train" in out.out and str(model_dir / "model.keras") in out.out
    assert all(str(path) in out.err and not path.exists() for path in stale)
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "history.json", "history.png",
                                             "tensorboard", "train_config.json"]

    other = tiny_config(model_dir, epochs=1, steps_per_epoch=1, base_width=8)
    with pytest.raises(ValueError, match="belongs to another model") as error:
        run(other)
    assert "--base_width 4" in str(error.value) and "--base_width 8" in str(error.value)

    # A folder from before train_config.json existed: the checkpoint restore says it instead.
    (model_dir / "train_config.json").unlink()
    with pytest.raises(ValueError, match="belongs to another model"):
        run(other)
    assert not (model_dir / "train_config.json").exists()


@pytest.fixture(scope="module")
def train_main():
    """train/imagenet.py's main(), in-process: flags parsed from `argv`, exit status back."""
    import importlib.util

    from absl import flags

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "train", "imagenet.py")
    spec = importlib.util.spec_from_file_location("train_imagenet_script", script)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except flags.DuplicateFlagError:
        pytest.skip("train/imagenet.py flags already defined in this process")

    def call(*argv: str) -> int:
        flags.FLAGS(["imagenet.py", *argv])
        try:
            return module.main(["imagenet.py"])
        finally:
            flags.FLAGS.unparse_flags()

    return call


def test_layers_flag_named_and_nothing_written(tmp_path, train_main, capsys):
    model_dir = tmp_path / "run"
    assert train_main("--layers", "1,x", "--model_dir", str(model_dir)) == 2
    err = capsys.readouterr().err
    assert "--layers" in err and "'1,x'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert train_main("--layers", "1,1", "--model_dir", str(model_dir)) == 2
    assert "--layers must be 4 positive integers" in capsys.readouterr().err
    assert not model_dir.exists()

