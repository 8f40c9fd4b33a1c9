"""Export Res2Net models to SavedModel, .keras, TFLite, ONNX, OpenVINO IR and TensorRT, each
artifact checked
against the Keras model (`res2net-export`, see `keras_res2net.export.cli`)."""

from keras_res2net.export.verify import CheckResult, ExportError

__all__ = ["CheckResult", "ExportError"]
