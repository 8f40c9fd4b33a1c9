"""The ONNX operators the TensorRT ONNX parser supports, to check an ONNX graph before building.

Source: onnx/onnx-tensorrt `docs/operators.md` (the "Operator Support Matrix" of the TensorRT
8.5 parser, opset <= 17), commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc: every row marked "Y".
Written by hand because no installable package ships this list; per-op restrictions (for example
"Slice: `axes` must be an initializer") are not checked, only op names. Later TensorRT releases
only add operators, so an op missing here is worth a look, not necessarily a failure.
"""

from __future__ import annotations

SOURCE = ("onnx/onnx-tensorrt docs/operators.md (TensorRT 8.5, opset <= 17), "
          "commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc")

TENSORRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
""".split())


def unsupported_ops(op_types) -> list[str]:
    """The op types (sorted, unique) that are not in the TensorRT ONNX parser's list."""
    return sorted({op for op in op_types if op not in TENSORRT_ONNX_OPS})
