"""TFLite export: float32, fp16 weights, dynamic-range or full-integer int8, builtin ops only.

Conversion goes through a SavedModel (Keras' `ExportArchive`), the converter's best-supported
input, so the TFLite model keeps the `images` input and the named output in its signature.
`supported_ops` is restricted to TFLite builtins (int8: `TFLITE_BUILTINS_INT8`), so the
converter refuses rather than emitting Flex (Select TF) ops that a phone runtime lacks. int8
uses the calibration images as the representative dataset; `int8_io=True` also makes the input
and output int8 (the runner quantizes and dequantizes with the tensors' own parameters).
After conversion, the TFLite analyzer lists the ops and checks GPU-delegate compatibility.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import tempfile
import warnings

import numpy as np

from keras_res2net.cli_errors import drop_lines, filtered_stderr
from keras_res2net.export.savedmodel import write_savedmodel
from keras_res2net.export.source import ServingModel

QUANTIZATIONS = ("fp16", "dynamic", "int8")


def convert(serving: ServingModel, quantize: str | None = None,
            calibration: np.ndarray | None = None, int8_io: bool = False) -> bytes:
    """The TFLite flatbuffer of `serving`, quantized as asked."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="res2net-tflite-") as folder:
        saved = os.path.join(folder, "saved_model")
        write_savedmodel(serving, saved, extra_signatures=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            if calibration is None or not len(calibration):
                raise ValueError("int8 quantization needs calibration images.")
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

            def representative():
                for image in calibration:
                    yield {"images": serving.model_inputs(image[None])}

            converter.representative_dataset = representative
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        with quiet_tflite():
            return converter.convert()


@contextlib.contextmanager
def quiet_tflite():
    """Without the lines TFLite prints on every conversion and interpreter (the int8
    calibrator's settings and its own tf.lite.Interpreter deprecation warning, the XNNPACK
    notice); anything else it prints still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        with filtered_stderr(drop_lines(r"^fully_quantize: \d+, inference_type",
                                        r"^INFO: Created TensorFlow Lite XNNPACK delegate")):
            yield


def interpreter_class():
    """LiteRT's interpreter when installed (the supported runtime), else tf.lite's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


_PROBE = """
import sys
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tensorflow.lite import Interpreter
interpreter = Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
interpreter.invoke()
"""


def probe(path: str) -> None:
    """Load and invoke the model once in a child process first.

    The interpreter does not verify the flatbuffer, and a truncated or corrupted file can
    crash the process that loads it (a segmentation fault, not an exception); the child takes
    that crash and the export reports a failed check instead of dying.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"the TFLite interpreter cannot load and run it ({why[0]})")


def load_tflite(path: str, batch_size: int = 64):
    """A runner on a .tflite file: resizes the batch, (de)quantizes integer inputs/outputs."""
    probe(path)
    # All cores, as onnxruntime uses: the default runs XNNPACK single-threaded (docs/speed.md).
    with quiet_tflite():
        interpreter = interpreter_class()(model_path=path, num_threads=os.cpu_count())
    input_index = interpreter.get_input_details()[0]["index"]
    state = {"batch": None}

    def run_batch(images: np.ndarray) -> np.ndarray:
        if state["batch"] != len(images):
            interpreter.resize_tensor_input(input_index, images.shape, strict=True)
            with quiet_tflite():  # the XNNPACK notice comes with the first allocation
                interpreter.allocate_tensors()
            state["batch"] = len(images)
        detail = interpreter.get_input_details()[0]
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            images = np.clip(np.round(images / scale + zero), info.min, info.max)
        interpreter.set_tensor(detail["index"], images.astype(detail["dtype"]))
        interpreter.invoke()
        out = interpreter.get_output_details()[0]
        values = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            values = (values.astype(np.float32) - zero) * scale
        return values

    def run(images: np.ndarray) -> np.ndarray:
        return np.concatenate([run_batch(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])

    return run


def analyze(model: bytes) -> tuple[collections.Counter, list[str]]:
    """(op counts, GPU-delegate findings) from `tf.lite.experimental.Analyzer`.

    The analyzer prints its report; the op list is read from its `Op#k NAME(...)` lines and the
    GPU findings from its `GPU COMPATIBILITY WARNING` lines (an empty list means it reported the
    model compatible with the GPU delegate).
    """
    import tensorflow as tf

    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        tf.lite.experimental.Analyzer.analyze(model_content=model, gpu_compatibility=True)
    text = report.getvalue()
    ops = collections.Counter(re.findall(r"^\s*Op#\d+ (\w+)\(", text, flags=re.MULTILINE))
    findings = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    if not findings and "compatible with GPU delegate" not in text:
        findings = ["the analyzer gave no GPU-delegate verdict"]
    return ops, findings


def inspect_ops(path: str) -> list[str]:
    """Report lines: the op list, that it holds no Flex/custom ops, the GPU-delegate verdict."""
    with open(path, "rb") as handle:
        ops, findings = analyze(handle.read())
    listing = ", ".join(f"{name} x{count}" for name, count in sorted(ops.items()))
    notes = [f"ops: {listing}"]
    foreign = sorted(name for name in ops if name.startswith("Flex") or name == "CUSTOM")
    if foreign:
        raise RuntimeError(f"the model holds non-builtin ops {foreign}: it will not run on the "
                           "plain TFLite/LiteRT runtime")
    if findings:
        notes.append(f"GPU delegate: {len(findings)} warning(s): " + "; ".join(findings))
    else:
        notes.append("GPU delegate: compatible (TFLite analyzer, gpu_compatibility=True)")
    return notes
