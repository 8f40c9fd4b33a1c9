"""Run the planned exports: load the model once, compute the reference, export and check each.

Kept apart from `cli.py` so that importing the CLI (and failing on bad options) loads no
TensorFlow. Each format module only writes and loads its artifact; checking, staging and
reporting are shared (`verify.py`).
"""

from __future__ import annotations

import argparse

import numpy as np

from keras_res2net.export import (
    calibration,
    keras_file,
    onnx_file,
    openvino_ir,
    savedmodel,
    source,
    tensorrt_engine,
    tflite,
    verify,
)
from keras_res2net.export.plan import OptionError, Plan


def _batched(run, size: int):
    def batched(images: np.ndarray) -> np.ndarray:
        return np.concatenate([run(images[i:i + size]) for i in range(0, len(images), size)])

    return batched


def load_serving(args: argparse.Namespace) -> source.ServingModel:
    layers = tuple(int(n) for n in args.layers.split(",")) if args.layers else None
    try:
        model = source.load_model(args.model, weights=args.weights, input_size=args.input_size,
                                  classes=args.classes, layers=layers,
                                  base_width=args.base_width, scale=args.scale)
    except Exception as err:  # readers raise their own types (safetensors, h5py, torch, zip)
        what = f"--weights {args.weights}" if args.weights else f"--model {args.model}"
        raise OptionError(f"{what} could not be loaded ({type(err).__name__}: {err}). Check "
                          "that the file is complete and matches the model.") from err
    try:
        return source.serving_model(model, args.include_preprocessing, args.input_size,
                                    fold=not getattr(args, "no_fold", False))
    except ValueError as err:
        raise OptionError(str(err)) from err


def run_exports(args: argparse.Namespace, plan: Plan, serving: source.ServingModel | None = None,
                samples: calibration.SampleImages | None = None,
                judge_outputs: verify.Judge | None = None) -> list[verify.CheckResult]:
    """Export every planned format, print one check line (and notes) per artifact, a table.

    A task other than classification passes its own `serving` model, check and calibration
    `samples`, and bound (`judge_outputs`, see `verify.check_artifact`)."""
    serving = serving or load_serving(args)
    if samples is None:
        samples = calibration.load_samples(args.calibration_data, serving.image_shape)
    reference = serving.reference(samples.check)
    images = serving.model_inputs(samples.check)
    height, width, _ = serving.image_shape
    print(f"{serving.name}: input {INPUT_DESCRIPTION[serving.include_preprocessing]} "
          f"{height}x{width}x3, output {serving.output_name}; checked on {samples.source}")
    common = dict(force=args.force, images=images, reference=reference,
                  latency_repeats=args.latency_runs, output_name=serving.output_name,
                  judge_outputs=judge_outputs)
    results = []

    def report(result: verify.CheckResult) -> verify.CheckResult:
        print(result.line())
        for note in result.notes:
            print(f"         {note}")
        results.append(result)
        return result

    name = serving.output_name
    for fmt in ("savedmodel", "keras", "tflite", "onnx", "openvino", "tensorrt"):
        if fmt not in plan.paths:
            continue
        path = plan.paths[fmt]
        if fmt == "savedmodel":
            report(verify.write_and_check(
                "savedmodel", path, write=lambda p: savedmodel.write_savedmodel(serving, p),
                load=lambda p: savedmodel.load_savedmodel(p, name), kind="float32", **common))
        elif fmt == "keras":
            report(verify.write_and_check(
                "keras", path, write=lambda p: keras_file.write_keras(serving, p),
                load=lambda p: keras_file.load_keras(p, name), kind="float32", **common))
        elif fmt == "tflite":
            quantize = args.quantize

            def write_tflite(p, quantize=quantize):
                model = tflite.convert(serving, quantize, samples.calibration, args.int8_io)
                with open(p, "wb") as handle:
                    handle.write(model)

            kind = {None: "float32", "fp16": "fp16"}.get(quantize, "int8")
            report(verify.write_and_check(
                f"tflite {quantize or 'fp32'}", path, write=write_tflite,
                load=tflite.load_tflite, kind=kind, inspect=tflite.inspect_ops, **common))
        elif fmt == "onnx":
            report(verify.write_and_check(
                "onnx" + (" nchw" if args.nchw else ""), path,
                write=lambda p: onnx_file.write_onnx(serving, p, args.opset, args.nchw),
                load=lambda p: onnx_file.load_onnx(p, args.nchw), kind="float32",
                inspect=onnx_file.inspect_onnx, **common))
        elif fmt == "openvino":  # checked in f32, then compiled for bf16 (openvino_ir.py)
            report(verify.write_and_check(
                "openvino f32", path, write=lambda p: openvino_ir.write_classifier(serving, p),
                load=openvino_ir.load_ir, kind="float32",
                inspect=lambda p: openvino_ir.check_bf16(p, images, reference, name,
                                                         args.latency_runs), **common))
        elif fmt == "tensorrt":
            report(export_tensorrt(args, plan, serving, samples, results, common))
    print()
    print(verify.summary_table(results))
    return results


INPUT_DESCRIPTION = {True: "float32 RGB [0, 255]", False: "float32 normalised (preprocess_input)"}


def export_tensorrt(args, plan: Plan, serving, samples, results, common) -> verify.CheckResult:
    precision = args.precision or "fp32"
    path, onnx_path = plan.paths["tensorrt"], plan.paths["onnx"]
    onnx_ok = any(r.path == onnx_path and r.passed for r in results)
    height, width, _ = serving.image_shape
    shape = (3, height, width) if args.nchw else (height, width, 3)
    reason = tensorrt_engine.unavailable_reason()
    if not onnx_ok or reason:
        command = tensorrt_engine.trtexec_command(onnx_path, path, source.INPUT_NAME, shape,
                                                  args.max_batch, precision)
        why = ("the ONNX export it builds from failed" if not onnx_ok else
               f"TensorRT cannot build here ({reason})")
        message = f"engine not built: {why}."
        if onnx_ok:
            message += (f" The checked ONNX file is {onnx_path}; build the engine on the "
                        f"target with:\n           {command}")
        return verify.CheckResult(f"tensorrt {precision}", path, error=message)
    calib = None
    if precision == "int8":
        calib = serving.model_inputs(samples.calibration)
        if args.nchw:
            calib = calib.transpose(0, 3, 1, 2)
    kind = {"fp32": "float32", "fp16": "fp16"}.get(precision, "int8")

    def load(p):
        run = tensorrt_engine.load_engine(p)
        if args.nchw:
            return _batched(lambda x: run(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                            args.max_batch)
        return _batched(run, args.max_batch)

    return verify.write_and_check(
        f"tensorrt {precision}", path, kind=kind, load=load,
        write=lambda p: tensorrt_engine.build_engine(onnx_path, p, shape, args.max_batch,
                                                     precision, calib), **common)
