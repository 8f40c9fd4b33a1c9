"""Each format round-trips a tiny Res2Net through `res2net-export` and passes its own check."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_res2net.datasets import load_digits
from keras_res2net.export import calibration, cli, source, tflite
from keras_res2net.imagenet import preprocess_input

# max|diff| / max|logit| of the fp16 TFLite model: fp16 weights keep ~11 significant bits
# (~1e-3 of the scale at most); int8 weights move more.
FP16_RELATIVE_BOUND = 2e-3
# Top-1 agreement of the int8 files with the Keras model on the held-out digits: set from its
# spread over the digits fixture's seeds (tools/learning_spread.py, recorded in
# benchmarks/results/learning_spread.json); a wrong graph or scale agrees on ~10%.
INT8_AGREEMENT = 0.97


def export(*args: str) -> int:
    return cli.main([str(arg) for arg in args])


@pytest.mark.slow
def test_float_formats_round_trip(digits_model_path, tmp_path, capsys):
    """On the trained digits model and held-out digits, whose predictions span the classes:
    top-1 agreement through a random model on noise (one class everywhere) proves little."""
    code = export("--model", digits_model_path, "--format", "savedmodel", "keras", "tflite",
                  "onnx", "openvino", "--calibration-data", "digits", "--output", tmp_path,
                  "--latency-runs", "3")
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("digits_savedmodel", "digits.keras", "digits_fp32.tflite", "digits.onnx",
                 "digits_openvino/digits_openvino.xml", "digits_openvino/digits_openvino.bin"):
        assert os.path.exists(tmp_path / name), out
    lines = [line for line in out.splitlines() if line.startswith("[ok]")]
    assert len(lines) == 5 and all("top-1 agreement 100.00%" in line for line in lines), out
    bf16 = [line for line in out.splitlines() if "bf16 inference" in line]
    assert len(bf16) == 1 and "[agreement >= 99%]" in bf16[0], out
    assert "GPU delegate:" in out and "TensorRT: all in" in out
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]
    check = calibration.load_samples("digits", (32, 32, 3)).check
    check_inputs = np.asarray(preprocess_input(check), dtype=np.float32)
    logits = np.asarray(keras.saving.load_model(digits_model_path)(check_inputs))
    predicted = logits.argmax(-1)
    assert len(np.unique(predicted)) == 10, np.bincount(predicted)

    # The artifacts keep their names and contracts outside the CLI too.
    import tensorflow as tf

    signature = tf.saved_model.load(str(tmp_path / "digits_savedmodel")).signatures[
        "serving_default"]
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert sorted(signature.structured_outputs) == ["logits", "probabilities"]
    model = keras.saving.load_model(tmp_path / "digits.keras", safe_mode=True)
    assert model.output_names == ["logits"]
    import openvino as ov

    compiled = ov.Core().compile_model(tmp_path / "digits_openvino/digits_openvino.xml", "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.input(0).get_any_name() == "images"
    np.testing.assert_allclose(compiled(check_inputs)[0], logits,
                               atol=1e-4 * np.abs(logits).max())


@pytest.mark.slow
def test_preprocessing_baked_in_and_nchw(tiny_model_path, tmp_path, capsys):
    code = export("--model", tiny_model_path, "--format", "savedmodel", "onnx", "--nchw",
                  "--include-preprocessing", "--output", tmp_path, "--latency-runs", "0")
    out = capsys.readouterr().out
    assert code == 0, out
    import onnx
    import tensorflow as tf

    dims = onnx.load(tmp_path / "tiny_nchw.onnx").graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    loaded = tf.saved_model.load(str(tmp_path / "tiny_savedmodel"))
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    as_uint8 = loaded.signatures["serving_uint8"](images=tf.constant(images))["probabilities"]
    expected = keras.saving.load_model(tiny_model_path)(preprocess_input(images))
    np.testing.assert_allclose(as_uint8.numpy(), np.asarray(expected), atol=1e-5)


@pytest.mark.slow
def test_tflite_fp16(digits_model_path, tmp_path, capsys):
    """fp16 weights move the trained model's logits by about 1e-3 of their scale; the bound
    here is independent of the CLI's (1e-2 of the scale, absolute 1e-2 on probabilities near
    0.1 for a random softmax model) and tight enough that int8 weights would break it."""
    code = export("--model", digits_model_path, "--format", "tflite", "--quantize", "fp16",
                  "--calibration-data", "digits", "--output", tmp_path, "--latency-runs", "0")
    out = capsys.readouterr().out
    assert code == 0, out
    digits = load_digits(image_size=32)
    images = np.asarray(preprocess_input(digits.val_images[:128]), dtype=np.float32)
    reference = keras.saving.load_model(digits_model_path).predict(images, verbose=0)
    outputs = tflite.load_tflite(str(tmp_path / "digits_fp16.tflite"))(images)
    scale = float(np.max(np.abs(reference)))
    relative = float(np.max(np.abs(outputs - reference))) / scale
    print(f"fp16: logits scale {scale:.2f}, max|diff| {relative:.2e} of it")
    assert scale > 3.0  # logits of a trained model, not probabilities near 1/classes
    assert 0 < relative <= FP16_RELATIVE_BOUND, relative
    assert np.mean(reference.argmax(-1) == outputs.argmax(-1)) >= 0.99
    assert "DEQUANTIZE" in out  # fp16 weights dequantized at load


@pytest.mark.slow
def test_tflite_dynamic_on_digits(digits_model_path, tmp_path, capsys):
    code = export("--model", digits_model_path, "--format", "tflite", "--quantize", "dynamic",
                  "--calibration-data", "digits", "--output", tmp_path, "--latency-runs", "0")
    out = capsys.readouterr().out
    assert code == 0, out
    assert os.path.exists(tmp_path / "digits_dynamic.tflite")


@pytest.mark.slow
def test_tflite_int8_on_digits(digits_model_path, tmp_path, capsys, report_figure):
    """The README's command, then an independent check of float- and int8-IO models."""
    code = export("--model", digits_model_path, "--format", "tflite", "--quantize", "int8",
                  "--calibration-data", "digits", "--output", tmp_path, "--latency-runs", "3")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[ok] tflite int8" in out and "GPU delegate:" in out

    digits = load_digits(image_size=32)
    images = np.asarray(preprocess_input(digits.val_images), dtype=np.float32)
    model = keras.saving.load_model(digits_model_path)
    reference = model.predict(images, verbose=0)
    int8_io = tmp_path / "int8_io.tflite"
    serving = source.serving_model(model)
    int8_io.write_bytes(tflite.convert(serving, "int8", digits.train_images[:200], int8_io=True))
    for path, dtype in ((tmp_path / "digits_int8.tflite", np.float32), (int8_io, np.int8)):
        interpreter = tflite.interpreter_class()(model_path=str(path))
        assert interpreter.get_input_details()[0]["dtype"] == dtype
        assert interpreter.get_output_details()[0]["dtype"] == dtype
        outputs = tflite.load_tflite(str(path))(images)
        agreement = np.mean(reference.argmax(-1) == outputs.argmax(-1))
        name = f"{'int8_io' if dtype == np.int8 else 'float_io'}_agreement"
        assert report_figure(name, agreement, INT8_AGREEMENT) >= INT8_AGREEMENT, (path, agreement)


def test_tensorrt_without_tensorrt_names_onnx_and_trtexec(tiny_model_path, tmp_path, capsys):
    import onnxruntime  # noqa: F401  (the `export` extra, part of `test`: no skip)
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    code = export("--model", tiny_model_path, "--format", "tensorrt", "--precision", "fp16",
                  "--output", tmp_path, "--latency-runs", "0")
    out = capsys.readouterr().out
    assert code == 1
    onnx_path = str(tmp_path / "tiny.onnx")
    assert os.path.exists(onnx_path) and not os.path.exists(tmp_path / "tiny_fp16.engine")
    assert f"The checked ONNX file is {onnx_path}" in out
    assert f"trtexec --onnx={onnx_path}" in out and "--fp16" in out
    assert "--maxShapes=images:32x32x32x3" in out


def test_bf16_inference_computes_in_bfloat16_and_agrees(digits_model_path, tmp_path, capsys,
                                                        monkeypatch):
    """`with_precision(model, "bf16")` on the trained digits model: every conv computes in
    bfloat16 on float32 weights, the head stays float32, top-1 agrees with fp32 on the
    held-out digits. The predict CLI uses it, and on a CPU whose flags lack native bfloat16
    (a cpuinfo file without them) says so in one line and runs fp32."""
    from PIL import Image

    from keras_res2net import precision, predict

    model = keras.saving.load_model(digits_model_path)
    bf16 = precision.with_precision(model, "bf16")
    convs = [layer for layer in bf16.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
                         for layer in convs)
    assert bf16.layers[-1].compute_dtype == "float32"  # the Dense head
    digits = load_digits(image_size=32)
    images = np.asarray(preprocess_input(digits.val_images), dtype=np.float32)
    inner = keras.Model(bf16.inputs[0], bf16.get_layer(convs[-1].name).output)
    assert keras.backend.standardize_dtype(inner(images[:1]).dtype) == "bfloat16"
    reference, logits = np.asarray(model(images)), np.asarray(bf16(images))
    agreement = np.mean(reference.argmax(-1) == logits.argmax(-1))
    relative = np.max(np.abs(logits - reference)) / np.max(np.abs(reference))
    print(f"bf16: top-1 agreement {agreement:.2%} on {len(images)} digits, "
          f"max|diff| {relative:.1e} of the logits' scale")
    assert agreement >= 0.99 and 1e-4 < relative < 0.1  # bfloat16's rounding, not float32's

    image = str(tmp_path / "digit.png")
    Image.fromarray(np.asarray(digits.val_images[0], dtype=np.uint8)).save(image)
    flags = "flags\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 bf16\n"
    without = flags.replace(" avx512_bf16 amx_bf16 bf16", "")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
    printed = {}
    for cpu, flag_line in (("bf16 cpu", flags), ("no bf16", without)):
        cpuinfo.write_text(flag_line)
        assert predict.main([image, "--model", digits_model_path, "--precision", "bf16",
                             "--top", "1"]) == 0
        captured = capsys.readouterr()
        printed[cpu] = captured.out.splitlines()[-1]  # "  1. class 7   23.81%  (7)"
        notes = [line for line in captured.err.splitlines() if "bf16" in line]
        assert len(notes) == (cpu == "no bf16"), notes
    assert "no native bfloat16" in notes[0] and "using fp32" in notes[0], notes
    # Same class, other digits of the score: bfloat16 ran on the first CPU, fp32 on the second.
    assert printed["bf16 cpu"] != printed["no bf16"], printed
    assert printed["bf16 cpu"].split("%")[1] == printed["no bf16"].split("%")[1], printed
