"""OpenVINO IR export (`.xml` graph + `.bin` weights), run by OpenVINO's CPU plugin.

The IR is converted by OpenVINO's TensorFlow frontend from a `tf.function` with a named input
signature (`ov.convert_model`), so it needs neither tf2onnx nor an intermediate file, and is
saved with float32 weights (`ov.save_model(..., compress_to_fp16=False)`: the default would
round every weight to fp16). The IR holds no precision of its own: the CPU plugin picks the
inference precision when it compiles the model (`INFERENCE_PRECISION_HINT`; bf16 by default on
CPUs with native bfloat16). So one artifact is checked twice:

- compiled in f32, against the Keras model at the float bounds (`verify.write_and_check`);
- compiled in bf16 (`check_bf16`), by top-1 agreement with the Keras model (`verify`'s
  `MIN_AGREEMENT`), with its max |diff| and latency reported. OpenVINO's own report of the
  precision it compiled to (`INFERENCE_PRECISION_HINT` read back) says whether bf16 really ran;
  on a CPU without native bfloat16 the plugin runs f32 and the line says so.

Only this module imports `openvino`; `unavailable_reason` lets the option check refuse
`--format openvino` without the package before any work. The functions take any `tf.function`
and any artifact folder, so a detector exporter can reuse them with its own graph.
"""

from __future__ import annotations

import os

import numpy as np

from keras_res2net.export import verify
from keras_res2net.export.source import INPUT_NAME, ServingModel

EXTRA = "keras-res2net[export]"
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's INFERENCE_PRECISION_HINT


def unavailable_reason() -> str | None:
    """None when OpenVINO can be imported, else the one line that says how to get it."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return (f"--format openvino needs the openvino package: pip install '{EXTRA}' (or "
                "pip install openvino).")
    return None


def ir_path(folder: str) -> str:
    """The `.xml` inside an artifact folder (the `.bin` lies beside it)."""
    return os.path.join(folder, os.path.basename(os.path.normpath(folder)) + ".xml")


def write_ir(function, folder: str) -> None:
    """Convert `function` (a `tf.function` with an input signature) to IR files in `folder`."""
    import openvino as ov

    os.makedirs(folder, exist_ok=True)
    ov.save_model(ov.convert_model(function), ir_path(folder), compress_to_fp16=False)


def serving_function(serving: ServingModel):
    """The classifier's forward pass as a `tf.function` taking `images` of any batch size."""
    import tensorflow as tf

    spec = [tf.TensorSpec((None, *serving.image_shape), tf.float32, name=INPUT_NAME)]
    model, name = serving.model, serving.output_name
    return tf.function(lambda images: {name: model(images, training=False)[name]},
                       input_signature=spec, autograph=False)


def write_classifier(serving: ServingModel, folder: str) -> None:
    write_ir(serving_function(serving), folder)


def compile_ir(folder: str, precision: str = "fp32", threads: int | None = None):
    """The IR compiled by the CPU plugin for `precision` ("fp32"/"bf16"), latency-tuned."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(ir_path(folder), "CPU", config)


def compiled_precision(compiled) -> str:
    """The precision OpenVINO compiled to, by its own report ("f32", "bf16", ...)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def runner(compiled, batch_size: int = 64) -> verify.Runner:
    """A callable on a batch of images returning the compiled model's first output."""
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        parts = []
        for i in range(0, len(images), batch_size):
            request.infer({0: np.ascontiguousarray(images[i:i + batch_size])})
            parts.append(np.array(request.get_output_tensor(0).data))
        return np.concatenate(parts)

    return run


def load_ir(folder: str, precision: str = "fp32") -> verify.Runner:
    return runner(compile_ir(folder, precision))


def check_bf16(folder: str, images: np.ndarray, reference: np.ndarray, output_name: str,
               latency_repeats: int = 20) -> list[str]:
    """The IR compiled for bf16, against `reference`: report lines, or ExportError when top-1
    agreement is below `verify.MIN_AGREEMENT` (the artifact is then not moved into place)."""
    compiled = compile_ir(folder, "bf16")
    ran = compiled_precision(compiled)
    run = runner(compiled)
    outputs = run(images)
    result = verify.CheckResult("openvino bf16", folder, samples=len(images))
    if output_name == "probabilities":
        reference, outputs = verify.log_probabilities(reference), verify.log_probabilities(outputs)
    result.max_abs_diff, result.agreement = verify.compare(reference, outputs)
    verify.judge(result, reference, "int8")  # judged by agreement, as quantized artifacts
    where = ("bf16" if ran == "bf16" else
             f"{ran}: OpenVINO chose {ran} (no native bfloat16 on this CPU), so bf16 is not "
             "what was checked")
    if not result.passed:
        raise verify.ExportError(
            f"bf16 inference (compiled as {where}): top-1 agreement {result.agreement:.2%} on "
            f"{len(images)} images, below {verify.MIN_AGREEMENT:.0%}")
    latency = verify.median_latency_ms(run, images[:1], latency_repeats) if latency_repeats \
        else float("nan")
    space = "log-prob " if output_name == "probabilities" else ""
    return [f"bf16 inference (INFERENCE_PRECISION_HINT=bf16, compiled as {where}): top-1 "
            f"agreement {result.agreement:.2%} ({len(images)} images) [{result.bound}], "
            f"{space}max|diff| {result.max_abs_diff:.2e}, median latency {latency:.2f} ms"]
