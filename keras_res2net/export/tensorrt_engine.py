"""TensorRT engine export: built from the checked ONNX file with the TensorRT Python API.

TF 2.18+ has no TF-TRT, and TensorRT wheels are not installable from the registries used here,
so this path only runs where `tensorrt` imports and a CUDA GPU is present; elsewhere
`unavailable_reason` explains why and `trtexec_command` gives the command that builds the same
engine on the target from the ONNX file. The engine has one optimisation profile for batch
1..max_batch; int8 uses an entropy calibrator fed with the calibration images. Checking the
engine needs device buffers, for which this module uses PyTorch's CUDA tensors when importable.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


def unavailable_reason() -> str | None:
    """None when TensorRT can build here, else why not."""
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt Python package is not installed"
    try:
        import torch
    except ImportError:
        return "checking a TensorRT engine here needs PyTorch with CUDA (device buffers)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    del trt
    return None


def trtexec_command(onnx_path: str, engine_path: str, input_name: str, shape: tuple,
                    max_batch: int, precision: str) -> str:
    """The `trtexec` command that builds the engine from `onnx_path` on the target."""
    dims = "x".join(str(d) for d in shape)
    flags = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --calib=CALIBRATION.cache"}
    return (f"trtexec --onnx={onnx_path} --saveEngine={engine_path} "
            f"--minShapes={input_name}:1x{dims} --optShapes={input_name}:1x{dims} "
            f"--maxShapes={input_name}:{max_batch}x{dims}{flags[precision]}")


def build_engine(onnx_path: str, engine_path: str, shape: tuple, max_batch: int,
                 precision: str, calibration: np.ndarray | None = None) -> None:
    """Parse `onnx_path`, build a serialized engine for `precision`, write it to `engine_path`."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT could not parse the ONNX file: " + "; ".join(errors))
    config = builder.create_builder_config()
    name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, *shape), (1, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    if precision != "int8":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 must mean fp32 for the 1e-4 check
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = _calibrator(trt, torch, calibration, name)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above).")
    with open(engine_path, "wb") as handle:
        handle.write(engine)


def _calibrator(trt, torch, images: np.ndarray, name: str):
    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = [images[i:i + 8] for i in range(0, len(images), 8)]
            self.device = None

        def get_batch_size(self):
            return 8

        def get_batch(self, names):
            if not self.batches:
                return None
            self.device = torch.from_numpy(np.ascontiguousarray(self.batches.pop(0))).cuda()
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            return None

    return Calibrator()


def load_engine(path: str):
    """A runner on a serialized engine (TensorRT 10 tensor API, PyTorch device buffers)."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    with open(path, "rb") as handle:
        engine = runtime.deserialize_cuda_engine(handle.read())
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine")
    context = engine.create_execution_context()
    input_name, output_name = engine.get_tensor_name(0), engine.get_tensor_name(1)

    def run(images: np.ndarray) -> np.ndarray:
        device_in = torch.from_numpy(np.ascontiguousarray(images)).cuda()
        context.set_input_shape(input_name, tuple(images.shape))
        device_out = torch.empty(tuple(context.get_tensor_shape(output_name)),
                                 dtype=torch.float32, device="cuda")
        context.set_tensor_address(input_name, int(device_in.data_ptr()))
        context.set_tensor_address(output_name, int(device_out.data_ptr()))
        stream = torch.cuda.current_stream()
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return device_out.cpu().numpy()

    return run
