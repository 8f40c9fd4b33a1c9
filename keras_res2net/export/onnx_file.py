"""ONNX export with tf2onnx (opset >= 17, dynamic batch, optional NCHW input), run by onnxruntime.

Why tf2onnx and not `model.export(format="onnx")`: Keras' own ONNX export calls tf2onnx too, and
both emit an unconvertible `StatefulPartitionedCall` for grouped convolutions, because Keras'
TensorFlow backend wraps a grouped conv in an XLA-compiled function (grouped convs do not run
on TensorFlow's CPU kernels). For tracing only, `traceable` swaps each grouped `Conv2D` for a
layer that emits a plain `tf.nn.convolution` on the same variables, which tf2onnx turns into a
single ONNX `Conv` with `group` set: same weights, same arithmetic. (Converting the TFLite model
instead is not faithful: tf2onnx drops the group of TFLite's grouped CONV_2D.)
The graph's op types are checked against the TensorRT ONNX parser's supported list.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_res2net.export import trt_ops
from keras_res2net.export.source import INPUT_NAME, ServingModel, serving_model

MIN_OPSET = 17


class _TracedGroupedConv2D(keras.layers.Layer):
    """A grouped `Conv2D` as one plain TensorFlow convolution (for tracing to ONNX only)."""

    def __init__(self, conv: keras.layers.Conv2D):
        super().__init__(name=f"{conv.name}_traced")
        self.conv = conv

    def call(self, inputs):
        import tensorflow as tf

        conv = self.conv
        outputs = tf.nn.convolution(inputs, conv.kernel, strides=conv.strides,
                                    padding=conv.padding.upper(), dilations=conv.dilation_rate)
        if conv.use_bias:
            outputs = tf.nn.bias_add(outputs, conv.bias)
        return conv.activation(outputs) if conv.activation is not None else outputs

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)


def traceable(model: keras.Model) -> keras.Model:
    """`model` with grouped convs replaced by `_TracedGroupedConv2D` (shared variables)."""

    def swap(layer):
        if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1:
            if layer.data_format != "channels_last":
                raise ValueError(f"{layer.name}: only channels_last grouped convs are supported.")
            return _TracedGroupedConv2D(layer)
        if isinstance(layer, keras.Model):
            return traceable(layer)
        return layer

    if not any(isinstance(layer, (keras.Model, keras.layers.Conv2D)) and
               getattr(layer, "groups", 2) > 1 for layer in model.layers):
        return model
    return keras.models.clone_model(model, clone_function=swap)


def write_onnx(serving: ServingModel, path: str, opset: int = MIN_OPSET,
               nchw: bool = False) -> None:
    """Convert `serving` (its source model made traceable) to an ONNX file at `path`."""
    import logging

    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # its INFO lines drown the report
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the supported minimum {MIN_OPSET}.")
    traced = serving_model(traceable(serving.source), serving.include_preprocessing,
                           input_size=serving.image_shape[0])
    spec = [tf.TensorSpec((None, *serving.image_shape), tf.float32, name=INPUT_NAME)]
    function = tf.function(lambda images: traced.model(images, training=False),
                           input_signature=spec, autograph=False)
    tf2onnx.convert.from_function(function, input_signature=spec, opset=opset,
                                  inputs_as_nchw=[f"{INPUT_NAME}:0"] if nchw else None,
                                  output_path=path)


def load_onnx(path: str, nchw: bool = False):
    """A runner on an ONNX file through onnxruntime's CPU provider (NHWC images in)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        if nchw:
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        return session.run(None, {input_name: images})[0]

    return run


def inspect_onnx(path: str) -> list[str]:
    """Report lines: opset, input shape (dynamic batch), op types, ops outside TensorRT's list."""
    import onnx

    model = onnx.load(path)
    onnx.checker.check_model(model)
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [dim.dim_param or dim.dim_value for dim in dims]
    if not dims[0].dim_param:
        raise RuntimeError(f"the batch dimension is fixed ({shape}); expected a dynamic one")
    op_types = sorted({node.op_type for node in model.graph.node})
    outside = trt_ops.unsupported_ops(op_types)
    trt = ("all in the TensorRT ONNX parser's list" if not outside
           else f"NOT in the TensorRT ONNX parser's list: {', '.join(outside)}")
    return [f"opset {opset}, input {model.graph.input[0].name} {shape}, "
            f"output {model.graph.output[0].name}",
            f"ops: {', '.join(op_types)}", f"TensorRT: {trt} ({trt_ops.SOURCE})"]
