"""`res2net-export --task saliency`: the saliency network's artifacts, checked by their maps.

The run folder's `model.keras` (train/saliency.py: images normalised by `preprocess_input`
-> fused logits) gets a sigmoid, and the classifier exporter's own machinery writes and
checks it (`runner.run_exports`): SavedModel, Keras, TFLite fp32 / fp16 / dynamic / int8,
ONNX and TensorRT, BatchNorm folded unless `--no-fold`, `--include-preprocessing` and
`--nchw` as for classifiers. Each artifact is loaded with its own runtime, run on the check
images and compared with the Keras model's maps: it passes when the mean absolute difference
of the maps (the SOD field's MAE, between artifact and Keras) is within `MAE_BOUNDS` for its
kind; the report line gives the max|diff| and the share of pixels on the same side of 0.5.

Check and calibration images: `--calibration-data` (a folder of images, as for classifiers),
else generated scenes at the model's size: int8 calibrates on scenes of the training stream
(seed 0) and every artifact is checked on scenes of a held-out seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from keras_res2net.export import calibration, runner, source, verify
from keras_res2net.export.plan import FORMATS, OptionError, Plan, artifact_path

CALIBRATION_SCENES = 32
CHECK_SCENES = 16
CHECK_SEED = 7_000_001  # a stream no training run uses by default
# Mean absolute difference between an artifact's maps and the Keras model's, in [0, 1],
# measured on trained networks (a tiny test network and Res2Net-50 26w x 4s at 64 px):
# float32 (TFLite, ONNX, SavedModel, Keras: the same arithmetic in another order) 4e-8 to
# 1.2e-7; fp16 weights 1e-5 to 4e-5; int8 weights and activations 1.6e-3 to 3.5e-3. The
# bounds leave a margin of about 100x (float32), 50x (fp16) and 10x (int8), and stay at
# least 10x below what a wrong graph moves maps by (their own scale, 0.1 to 0.5).
MAE_BOUNDS = {"float32": 1e-5, "fp16": 2e-3, "int8": 3e-2}


def model_file(checkpoint: str) -> str:
    path = os.path.join(checkpoint, "model.keras") if os.path.isdir(checkpoint) else checkpoint
    if not os.path.isfile(path):
        raise OptionError(f"--checkpoint {checkpoint}: no model.keras there (a run folder of "
                          "train/saliency.py, or the .keras file it wrote).")
    return path


def saliency_name(checkpoint: str) -> str:
    """Artifacts' stem: the run folder's name (or the .keras file's stem)."""
    if os.path.isdir(checkpoint):
        return os.path.basename(os.path.normpath(os.path.abspath(checkpoint)))
    return os.path.splitext(os.path.basename(checkpoint))[0]


def validate_saliency(args: argparse.Namespace) -> Plan:
    """Every check of `--task saliency` that needs no model; returns the plan."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise OptionError(f"exporting needs the TensorFlow backend (this process uses "
                          f"{keras.backend.backend()!r}): run with KERAS_BACKEND=tensorflow.")
    unknown = [fmt for fmt in args.format if fmt not in FORMATS]
    if unknown:
        raise OptionError(f"unknown format {', '.join(unknown)}: choose from "
                          f"{', '.join(FORMATS)}.")
    others = {"--model": args.model, "--weights": args.weights,
              "--experiment": args.experiment, "--classes": args.classes,
              "--layers": args.layers, "--base-width": args.base_width, "--scale": args.scale,
              "--input-size": args.input_size}
    given = [flag for flag, value in others.items() if value is not None]
    if given:
        raise OptionError(f"{', '.join(given)} do(es) not apply to --task saliency: the run "
                          "folder (--checkpoint) holds the network and its input size.")
    if not args.checkpoint:
        raise OptionError("--task saliency needs --checkpoint: a run folder of "
                          "train/saliency.py (its model.keras), or that .keras file.")
    model_file(args.checkpoint)
    formats = set(args.format)
    if args.quantize and "tflite" not in formats:
        raise OptionError("--quantize applies to --format tflite; add it or drop --quantize.")
    if args.int8_io and args.quantize != "int8":
        raise OptionError("--int8-io needs --quantize int8.")
    if args.precision and "tensorrt" not in formats:
        raise OptionError("--precision applies to --format tensorrt.")
    if args.nchw and not formats & {"onnx", "tensorrt"}:
        raise OptionError("--nchw applies to --format onnx or tensorrt.")
    if args.opset < 17:
        raise OptionError(f"--opset {args.opset}: use 17 or later.")
    if args.max_batch < 1 or args.latency_runs < 0:
        raise OptionError("--max-batch must be >= 1 and --latency-runs >= 0.")
    problem = calibration.describe_problem(args.calibration_data)
    if problem:
        raise OptionError(problem)
    stem = saliency_name(args.checkpoint)
    paths = {fmt: artifact_path(args, fmt, stem) for fmt in args.format}
    if "tensorrt" in paths:  # the engine is built from the ONNX file
        paths.setdefault("onnx", artifact_path(args, "onnx", stem))
    taken = [path for path in paths.values() if os.path.lexists(path)]
    if taken and not args.force:
        raise OptionError(f"{', '.join(taken)} already exist(s): pass --force to overwrite, "
                          "or choose another --output.")
    return Plan(stem, paths)


def saliency_serving(args: argparse.Namespace) -> source.ServingModel:
    """The run's network with a sigmoid (output `saliency`), wrapped for every format."""
    import keras

    path = model_file(args.checkpoint)
    try:
        network = source.load_model(path)
    except Exception as err:  # Keras raises many types for broken archives
        raise OptionError(f"--checkpoint {args.checkpoint}: {path} could not be loaded "
                          f"({type(err).__name__}: {err}).") from err
    shape = tuple(network.inputs[0].shape[1:])
    if len(network.outputs) != 1 or tuple(network.outputs[0].shape[1:]) != (*shape[:2], 1):
        raise OptionError(f"--checkpoint {args.checkpoint}: {path} is not a saliency network.")
    maps = keras.layers.Activation("sigmoid", dtype="float32", name="saliency")(network.output)
    # Not named "saliency" itself (a run folder's usual name): the serving wrapper names its
    # output layer that, beside this model.
    model = keras.Model(network.inputs[0], maps, name=f"{saliency_name(args.checkpoint)}_map")
    return source.serving_model(model, args.include_preprocessing,
                                fold=not getattr(args, "no_fold", False))


def sample_images(spec: str | None, image_shape) -> calibration.SampleImages:
    """`--calibration-data` images, or generated scenes (see the module docstring)."""
    if spec is not None:
        return calibration.load_samples(spec, image_shape)
    from keras_res2net.saliency.scenes import make_scenes

    size = image_shape[0]
    calibrate, _ = make_scenes(0, CALIBRATION_SCENES, size)
    check, _ = make_scenes(CHECK_SEED, CHECK_SCENES, size)
    return calibration.SampleImages(calibrate, check,
                                    f"{CHECK_SCENES} generated scenes of a held-out seed")


def judge_maps(result: verify.CheckResult, reference: np.ndarray, outputs: np.ndarray,
               kind: str) -> None:
    """Pass when the maps' mean absolute difference is within `MAE_BOUNDS[kind]`."""
    mae = float(np.mean(np.abs(outputs - reference)))
    bound = MAE_BOUNDS[kind]
    result.agreement = float(np.mean((outputs >= 0.5) == (reference >= 0.5)))
    result.agreement_name = "pixels agree at 0.5"
    result.bound = f"map MAE {mae:.1e} <= {bound:.0e}"
    result.passed = bool(np.isfinite(mae) and mae <= bound)
    if not result.passed:
        result.error = f"check failed: map MAE {mae:.2e} is over the bound {bound:.0e}"


def run_exports(args: argparse.Namespace, plan: Plan) -> list[verify.CheckResult]:
    """Export and check every planned artifact of the saliency network; lines, then a table."""
    serving = saliency_serving(args)
    samples = sample_images(args.calibration_data, serving.image_shape)
    return runner.run_exports(args, plan, serving=serving, samples=samples,
                              judge_outputs=judge_maps)
