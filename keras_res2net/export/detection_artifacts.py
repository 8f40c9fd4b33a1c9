"""Write and run the detector's static graph (`detection.deploy`) as ONNX and TFLite files.

ONNX: tf2onnx converts the traced `tf.function` (its NMS becomes ONNX `NonMaxSuppression`);
fp16 (`fp16_weights_onnx`) stores the convolution and matrix weights in float16, cast back to
float32 in the graph: half the file, float32 arithmetic. float16 arithmetic (onnxruntime's
`convert_float_to_float16`, with or without box decoding, RoIAlign, NMS and TopK kept float32)
failed the fp16 check on the synthetic Mask R-CNN (84% of detections kept; see
docs/detector-export.md); a TensorRT engine built with `--fp16` computes in float16 and must be
checked on the target. TFLite: the converter takes the static graph's SavedModel, TFLite
builtins only (its NMS becomes `NON_MAX_SUPPRESSION_V4`); fp16 stores the weights in float16
(LiteRT's XNNPACK may then compute in float16 where the CPU has it).
Each runner takes one image `(1, H, W, 3)` and its original size `(1, 2)` and returns the
output dict by name.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from keras_res2net.detection import deploy

WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def fp16_weights_onnx(proto, weight_ops=WEIGHT_OPS):
    """`proto` with the float32 weights of the `weight_ops` stored in float16, each cast back
    to float32 by a `Cast` node: half the file, float32 arithmetic (TFLite's fp16)."""
    import onnx
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    names = sorted({name for node in proto.graph.node if node.op_type in weight_ops
                    for name in node.input if name in initializers
                    and initializers[name].data_type == onnx.TensorProto.FLOAT})
    casts = []
    for name in names:
        half = numpy_helper.from_array(
            numpy_helper.to_array(initializers[name]).astype(np.float16), f"{name}__fp16")
        proto.graph.initializer.remove(initializers[name])
        proto.graph.initializer.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [name], name=f"{name}__cast",
                                           to=onnx.TensorProto.FLOAT))
    nodes = casts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def write_onnx(model, config, input_size, path: str, opset: int = 17,
               quantize: str | None = None, function=None) -> None:
    """The static graph of `model` as an ONNX file at `path` (float32, or fp16).
    `function`: `deploy.deploy_function(model, config, input_size)` if already traced."""
    import logging

    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    if function is None:
        function = deploy.deploy_function(model, config, input_size)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                             opset=opset)
    if quantize == "fp16":
        proto = fp16_weights_onnx(proto)
    import onnx

    onnx.save(proto, path)


def load_onnx(path: str):
    """A runner on the ONNX file through onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(image: np.ndarray, original: np.ndarray) -> dict:
        values = session.run(None, {"images": image, "image_sizes": original})
        return dict(zip(names, values, strict=True))

    return run


def inspect_onnx(path: str) -> tuple[list[str], list[str]]:
    """(report lines, op types outside the TensorRT ONNX parser's list)."""
    import onnx

    from keras_res2net.export import trt_ops

    model = onnx.load(path)
    onnx.checker.check_model(model)
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    op_types = sorted({node.op_type for node in model.graph.node})
    outside = trt_ops.unsupported_ops(op_types)
    trt = ("all in the TensorRT ONNX parser's list, NMS as its NonMaxSuppression op (no "
           "plugin)" if not outside
           else f"NOT in the TensorRT ONNX parser's list: {', '.join(outside)}")
    inputs = ", ".join(f"{i.name} {[d.dim_value for d in i.type.tensor_type.shape.dim]}"
                       for i in model.graph.input)
    return ([f"opset {opset}, inputs {inputs}", f"ops: {', '.join(op_types)}",
             f"TensorRT: {trt} ({trt_ops.SOURCE})"], outside)


def tflite_bytes(model, config, input_size, quantize: str | None = None,
                 function=None) -> bytes:
    """The static graph as a TFLite flatbuffer (builtins only; fp16 weights if asked).
    `function`: the graph already traced by `deploy.deploy_function`, or None."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="res2net-tflite-") as folder:
        saved = os.path.join(folder, "saved_model")
        deploy.write_savedmodel(model, config, input_size, saved, function=function)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def write_tflite(model, config, input_size, path: str, quantize: str | None = None,
                 function=None) -> None:
    with open(path, "wb") as handle:
        handle.write(tflite_bytes(model, config, input_size, quantize, function))


def load_tflite(path: str, input_size):
    """A runner on the .tflite file through LiteRT (or tf.lite), after a probe in a child
    process (a corrupt flatbuffer crashes the process that loads it)."""
    from keras_res2net.export import tflite

    probe_tflite(path, input_size)
    runner = tflite.interpreter_class()(model_path=path).get_signature_runner()

    def run(image: np.ndarray, original: np.ndarray) -> dict:
        return dict(runner(images=image, image_sizes=original))

    return run


_PROBE = """
import sys
import numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tensorflow.lite import Interpreter
run = Interpreter(model_path=sys.argv[1]).get_signature_runner()
height, width = int(sys.argv[2]), int(sys.argv[3])
run(images=np.zeros((1, height, width, 3), np.float32),
    image_sizes=np.array([[height, width]], np.float32))
"""


def probe_tflite(path: str, input_size) -> None:
    """Load and run the model once on a blank (H, W) canvas in a child process first."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PROBE, path, *map(str, input_size)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"the TFLite interpreter cannot load and run it ({why[0]})")
