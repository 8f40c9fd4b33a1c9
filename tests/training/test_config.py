"""Bad flags and options fail at once with messages naming the flag and the value."""

from __future__ import annotations

import pytest

from keras_res2net.training.config import DIGITS_DEFAULTS, TrainConfig, resolve_config


def test_digits_brings_its_own_defaults_and_flags_override():
    config = resolve_config(TrainConfig(data="digits", epochs=3))
    assert config.image_size == DIGITS_DEFAULTS["image_size"] == 32
    assert config.layers == DIGITS_DEFAULTS["layers"] and config.epochs == 3


@pytest.mark.parametrize("overrides, message", [
    (dict(strategy="horovod"), "--strategy must be one of default"),
    (dict(mixed_precision="float8"), "--mixed_precision must be one of"),
    (dict(image_size=16), "--image_size must be >= 32"),
    (dict(batch_size=0), "--batch_size must be a positive integer; got 0"),
    (dict(label_smoothing=1.5), "--label_smoothing must be in"),
    (dict(strategy="tpu"), "--strategy tpu needs --tpu"),
    (dict(strategy="tpu", tpu="local", deterministic=True),
     "--deterministic with --strategy tpu: TensorFlow's op determinism covers CPU and GPU"),
    (dict(data="tfrecord"), "--data tfrecord needs --data_dir"),
    (dict(init_weights="/nonexistent.pth"), "--init_weights '/nonexistent.pth': no such file"),
])
def test_bad_options_are_named(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve_config(TrainConfig(**{"data": "digits", **overrides}))


def test_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        resolve_config(TrainConfig(strategy="multi_worker"))


def test_script_reports_errors_without_a_traceback(tmp_path, train_script):
    result = train_script.run(["--data", "digits", "--image_size", "8", "--model_dir",
                         str(tmp_path)], timeout=60)
    assert result.returncode == 2
    assert "error: --image_size must be >= 32" in result.stderr
    assert "Traceback" not in result.stderr
    result = train_script.run(["--strategy", "nccl"], timeout=60)
    assert result.returncode != 0 and "--strategy" in result.stderr
