"""Bad options fail before any work; broken artifacts are caught and not left behind."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_res2net.export import cli, keras_file, onnx_file, tflite, trt_ops, verify


def export(*args) -> int:
    return cli.main([str(arg) for arg in args])


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite", "--quantize", "int8"], "int8 needs representative images"),
    (["--format", "tensorrt", "--precision", "int8"], "int8 needs representative images"),
    (["--format", "coreml"], "unknown format coreml"),
    (["--format", "onnx", "--quantize", "fp16"], "--quantize applies to --format tflite"),
    (["--format", "tflite", "--int8-io"], "--int8-io needs --quantize int8"),
    (["--format", "tflite", "--nchw"], "--nchw applies to --format onnx"),
    (["--format", "onnx", "--opset", "13"], "use 17 or later"),
    (["--format", "onnx", "--precision", "fp16"], "--precision applies to --format tensorrt"),
    (["--format", "tflite", "--quantize", "int8", "--calibration-data", "no/such/dir"],
     "neither a folder nor a known TFDS dataset"),
])
def test_bad_options_fail_before_work(tiny_model_path, tmp_path, capsys, args, message):
    code = export("--model", tiny_model_path, "--output", tmp_path / "out", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not os.path.exists(tmp_path / "out")


def test_openvino_without_the_package_names_the_extra(tiny_model_path, tmp_path, capsys,
                                                     monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    code = export("--model", tiny_model_path, "--format", "openvino", "--output", tmp_path / "o")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'keras-res2net[export]'" in err[0], err
    assert not os.path.exists(tmp_path / "o")


def test_other_keras_backends_are_refused(tiny_model_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    code = export("--model", tiny_model_path, "--format", "onnx", "--output", tmp_path)
    assert code == 2 and "KERAS_BACKEND=tensorflow" in capsys.readouterr().err


def test_model_and_weights_problems(tmp_path, capsys):
    out = tmp_path / "out"
    assert export("--model", tmp_path / "missing.keras", "--format", "onnx", "--output", out) == 2
    assert "no such file" in capsys.readouterr().err
    assert export("--model", "res2net51", "--format", "onnx", "--output", out) == 2
    assert "not a known variant" in capsys.readouterr().err
    assert export("--model", "res2net50_26w_4s", "--weights", tmp_path / "none.pth",
                  "--format", "onnx", "--output", out) == 2
    assert "no readable file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    code = export("--model", "res2net50_26w_4s", "--weights", garbage, "--format", "onnx",
                  "--output", out, "--input-size", "32")
    assert code == 2 and "could not be loaded" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_empty_image_folder_is_refused(tiny_model_path, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code = export("--model", tiny_model_path, "--format", "tflite", "--quantize", "int8",
                  "--calibration-data", tmp_path / "images", "--output", tmp_path / "out")
    assert code == 2 and "holds no images" in capsys.readouterr().err


def test_no_overwrite_without_force(tiny_model_path, tmp_path, capsys):
    target = tmp_path / "tiny.onnx"
    target.write_bytes(b"keep me")
    args = ["--model", tiny_model_path, "--format", "onnx", "--output", tmp_path,
            "--latency-runs", "0"]
    assert export(*args) == 2
    assert "--force" in capsys.readouterr().err and target.read_bytes() == b"keep me"
    assert export(*args, "--force") == 0
    assert target.read_bytes() != b"keep me"


def test_corrupted_tflite_is_caught_and_removed(tiny_model_path, tmp_path, capsys, monkeypatch):
    real_convert = tflite.convert

    def truncated(*args, **kwargs):
        return real_convert(*args, **kwargs)[:5000]

    monkeypatch.setattr(tflite, "convert", truncated)
    code = export("--model", tiny_model_path, "--format", "tflite", "--output", tmp_path,
                  "--latency-runs", "0")
    out = capsys.readouterr().out
    assert code == 1 and "[FAILED] tflite" in out and "nothing written" in out
    assert os.listdir(tmp_path) == []


def test_wrong_numbers_are_caught(tiny_model_path, tmp_path, capsys, monkeypatch):
    """An artifact that loads fine but computes something else fails its check."""

    def perturbed(serving, path):
        model = keras.models.clone_model(serving.model)
        model.set_weights([w + 0.05 for w in serving.model.get_weights()])
        model.save(path)

    monkeypatch.setattr(keras_file, "write_keras", perturbed)
    code = export("--model", tiny_model_path, "--format", "keras", "--output", tmp_path,
                  "--latency-runs", "0")
    out = capsys.readouterr().out
    assert code == 1 and "check failed" in out and not os.path.exists(tmp_path / "tiny.keras")


def test_corrupted_onnx_is_caught(tiny_model_path, tmp_path, capsys, monkeypatch):
    real_write = onnx_file.write_onnx

    def corrupt(serving, path, *args, **kwargs):
        real_write(serving, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.seek(os.path.getsize(path) // 2)
            handle.write(os.urandom(4096))

    monkeypatch.setattr(onnx_file, "write_onnx", corrupt)
    code = export("--model", tiny_model_path, "--format", "onnx", "--output", tmp_path,
                  "--latency-runs", "0")
    assert code == 1 and "[FAILED] onnx" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_staged_path_cleans_up_on_failure(tmp_path):
    final = tmp_path / "artifact.bin"
    with pytest.raises(verify.ExportError, match="check failed"):
        with verify.staged_path(str(final), force=False) as temp:
            open(temp, "wb").close()
            raise verify.ExportError("check failed")
    assert os.listdir(tmp_path) == []


def test_compare_and_trt_op_list():
    reference = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert verify.compare(reference, reference[::-1]) == pytest.approx((0.7, 0.0))
    assert verify.compare(reference, np.full_like(reference, np.nan))[1] == 0.0
    assert trt_ops.unsupported_ops(["Conv", "Relu", "StatefulPartitionedCall"]) == [
        "StatefulPartitionedCall"]


def test_saturated_probabilities_are_compared_as_log_probabilities(tmp_path):
    """A near one-hot softmax hides a wrong logit (the probabilities move by ~1e-17): the
    check compares log-probabilities, which move by the logit's error."""
    logits = np.random.default_rng(0).normal(0.0, 3.0, (8, 10))
    logits[:, 0] += 40.0  # saturated: p(class 0) = 1 - 1e-17

    def softmax(values):
        shifted = np.exp(values - values.max(-1, keepdims=True))
        return (shifted / shifted.sum(-1, keepdims=True)).astype(np.float32)

    wrong = logits.copy()
    wrong[:, 1:] += 0.5
    assert np.max(np.abs(softmax(wrong) - softmax(logits))) < verify.FLOAT_TOLERANCE
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(b"stand-in")
    for outputs, passes in ((softmax(logits), True), (softmax(wrong), False)):
        result = verify.check_artifact(
            verify.CheckResult("stand-in", str(artifact)), lambda o=outputs: (lambda _: o),
            np.zeros((8, 1), np.float32), softmax(logits), "float32", latency_repeats=0,
            output_name="probabilities")
        assert result.passed is passes, result.line()
    assert result.max_abs_diff == pytest.approx(0.5, abs=1e-3) and "log-prob" in result.bound
