"""`res2net-export`: turn a Res2Net into the artifact a target runs, and prove it equal.

    res2net-export --model res2net50_26w_4s --weights W.pth --format tflite --quantize int8 \\
        --calibration-data digits --output out/
    res2net-export --model runs/digits/model.keras --format onnx savedmodel --output out/
    res2net-export --task detection --checkpoint runs/shapes --format savedmodel --output out/

Every option is checked before any model is loaded; each artifact is then written to a staging
path, loaded with its own runtime, compared with the Keras model on sample images and only then
moved to its output path. One line per artifact, then a summary table; the exit status is 0
only if every artifact passed (2 for bad options).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

FORMATS = ("savedmodel", "keras", "tflite", "onnx", "tensorrt")
# The two-stage detector's NMS, top-k and RoIAlign with data-dependent shapes have no faithful
# TFLite/ONNX/TensorRT lowering here; its SavedModel serves detections after NMS.
DETECTION_FORMATS = ("savedmodel",)
WEIGHT_SUFFIXES = (".h5", ".pth", ".pt", ".bin", ".safetensors")


class OptionError(ValueError):
    """A bad command line: reported with what to do, before any work."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="res2net-export", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("classification", "detection"),
                        default="classification",
                        help="classification (default): --model; detection: --checkpoint "
                        "(and --experiment if it has no experiment.json)")
    parser.add_argument("--model",
                        help="a variant name (res2net50_26w_4s, ...) or a saved .keras model")
    parser.add_argument("--experiment", help="--task detection: a registered detection "
                        "experiment (keras_res2net.detection.configs.list_experiments()); only "
                        "needed when --checkpoint has no experiment.json")
    parser.add_argument("--checkpoint", help="--task detection: a run folder (train/coco.py's "
                        "--model_dir, or keras_res2net.detection.convert's output) holding "
                        "detector.weights.h5 and experiment.json, or a .weights.h5 file")
    parser.add_argument("--weights", help="with a variant name: .pth/.safetensors checkpoint, "
                        ".weights.h5, or 'imagenet' (converted cache)")
    parser.add_argument("--format", nargs="+", required=True, metavar="FORMAT",
                        help=f"one or more of {', '.join(FORMATS)}")
    parser.add_argument("--output", default="out", help="output folder (default: out)")
    parser.add_argument("--quantize", choices=("fp16", "dynamic", "int8"),
                        help="TFLite quantization (default: float32)")
    parser.add_argument("--int8-io", action="store_true",
                        help="TFLite int8: integer input and output tensors too")
    parser.add_argument("--calibration-data", metavar="SOURCE",
                        help="'digits', a folder of images or a prepared TFDS name[:split]; "
                        "used for int8 calibration and as the check images")
    parser.add_argument("--include-preprocessing", action="store_true",
                        help="bake the normalisation in: the artifact takes RGB in [0, 255]")
    parser.add_argument("--nchw", action="store_true", help="ONNX/TensorRT: NCHW input")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                        help="TensorRT precision (default fp32)")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="TensorRT optimisation profile: batch 1..N (default 32)")
    parser.add_argument("--input-size", type=int,
                        help="image size for a model built by name (default 224) or for a "
                        ".keras model without a fixed size")
    parser.add_argument("--classes", type=int, help="classes for a model built by name")
    parser.add_argument("--layers", help="Res2Net knob for a model built by name, e.g. 1,1,1,1")
    parser.add_argument("--base-width", type=int, help="Res2Net knob for a model built by name")
    parser.add_argument("--scale", type=int, help="Res2Net knob for a model built by name")
    parser.add_argument("--latency-runs", type=int, default=20,
                        help="batch-1 calls timed per artifact (median reported)")
    parser.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers (default: "
                        "folded into the convolutions, same outputs, faster artifacts)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return parser


@dataclasses.dataclass
class Plan:
    """Output paths per format, decided before any work."""

    stem: str
    paths: dict[str, str]


def plan_outputs(args: argparse.Namespace) -> Plan:
    if args.task == "detection":
        stem = detection_name(args)
        return Plan(stem, {"savedmodel": os.path.join(args.output, f"{stem}_savedmodel")})
    if args.model.endswith(".keras"):
        stem = os.path.splitext(os.path.basename(args.model))[0]
    else:
        stem = args.model
    out = args.output
    onnx_name = f"{stem}_nchw.onnx" if args.nchw else f"{stem}.onnx"
    tflite_suffix = (args.quantize or "fp32") + ("_io" if args.int8_io else "")
    paths = {
        "savedmodel": os.path.join(out, f"{stem}_savedmodel"),
        "keras": os.path.join(out, f"{stem}.keras"),
        "tflite": os.path.join(out, f"{stem}_{tflite_suffix}.tflite"),
        "onnx": os.path.join(out, onnx_name),
        "tensorrt": os.path.join(out, f"{stem}_{args.precision or 'fp32'}.engine"),
    }
    wanted = {fmt: paths[fmt] for fmt in args.format}
    if "tensorrt" in wanted:
        wanted.setdefault("onnx", paths["onnx"])  # the engine is built from the ONNX file
    return Plan(stem, wanted)


def validate(args: argparse.Namespace) -> Plan:
    """Every check that needs no model; raises OptionError saying what to do."""
    import keras

    from keras_res2net.export import calibration

    if keras.backend.backend() != "tensorflow":
        raise OptionError(f"exporting needs the TensorFlow backend (this process uses "
                          f"{keras.backend.backend()!r}): run with KERAS_BACKEND=tensorflow.")
    unknown = [fmt for fmt in args.format if fmt not in FORMATS]
    if unknown:
        raise OptionError(f"unknown format {', '.join(unknown)}: choose from "
                          f"{', '.join(FORMATS)}.")
    formats = set(args.format)
    if args.task == "detection":
        validate_detection(args)
    elif not args.model:
        raise OptionError("--model is required (a variant name or a .keras file); for a "
                          "detector use --task detection --experiment NAME --checkpoint DIR.")
    elif args.experiment or args.checkpoint:
        raise OptionError("--experiment and --checkpoint go with --task detection.")
    elif args.model.endswith(".keras"):
        if not os.path.isfile(args.model):
            raise OptionError(f"--model {args.model}: no such file.")
        if args.weights:
            raise OptionError("--weights goes with a variant name; a .keras model carries its "
                              "own weights.")
        if any(v is not None for v in (args.classes, args.layers, args.base_width, args.scale)):
            raise OptionError("--classes/--layers/--base-width/--scale build a model by name; "
                              "they do not apply to a .keras model.")
    else:
        from keras_res2net.variants import get_variant

        try:
            get_variant(args.model)
        except (KeyError, ValueError) as err:
            raise OptionError(f"--model {args.model}: not a .keras file and not a known variant "
                              f"({err}). See keras_res2net.list_models().") from None
        if args.weights and args.weights != "imagenet":
            if not os.path.isfile(args.weights) or not os.access(args.weights, os.R_OK):
                raise OptionError(f"--weights {args.weights}: no readable file there.")
            if not args.weights.endswith(WEIGHT_SUFFIXES):
                raise OptionError(f"--weights {args.weights}: use a .pth/.pt/.bin/.safetensors "
                                  "checkpoint or a Keras .weights.h5 file.")
    if args.quantize and "tflite" not in formats:
        raise OptionError("--quantize applies to --format tflite; add it or drop --quantize.")
    if args.int8_io and args.quantize != "int8":
        raise OptionError("--int8-io needs --quantize int8 (integer tensors need the int8 "
                          "model).")
    if args.precision and "tensorrt" not in formats:
        raise OptionError("--precision applies to --format tensorrt.")
    if args.nchw and not formats & {"onnx", "tensorrt"}:
        raise OptionError("--nchw applies to --format onnx or tensorrt.")
    if "int8" in (args.quantize, args.precision) and not args.calibration_data:
        raise OptionError("int8 needs representative images: pass --calibration-data digits, "
                          "a folder of images, or a prepared TFDS name.")
    if args.opset < 17:
        raise OptionError(f"--opset {args.opset}: use 17 or later.")
    if args.max_batch < 1 or args.latency_runs < 0:
        raise OptionError("--max-batch must be >= 1 and --latency-runs >= 0.")
    if args.input_size is not None and args.input_size < 32:
        raise OptionError(f"--input-size {args.input_size}: use 32 or more.")
    problem = calibration.describe_problem(args.calibration_data)
    if problem:
        raise OptionError(problem)
    plan = plan_outputs(args)
    if not args.force:
        taken = [path for path in plan.paths.values() if os.path.lexists(path)]
        if taken:
            raise OptionError(f"{', '.join(taken)} already exist(s): pass --force to overwrite, "
                              "or choose another --output.")
    return plan


def validate_detection(args: argparse.Namespace) -> None:
    """The checks of `--task detection`, before any model is built."""
    unsupported = [fmt for fmt in args.format if fmt not in DETECTION_FORMATS]
    if unsupported:
        raise OptionError(f"--task detection exports only {', '.join(DETECTION_FORMATS)}; "
                          f"{', '.join(unsupported)} is not supported for the two-stage "
                          "detector (its NMS and RoIAlign have data-dependent shapes). Serve "
                          "the SavedModel with TensorFlow or TF Serving.")
    if args.model or args.weights:
        raise OptionError("--task detection takes --checkpoint (and --experiment), not "
                          "--model/--weights.")
    classification_only = {"--quantize": args.quantize, "--int8-io": args.int8_io or None,
                           "--calibration-data": args.calibration_data,
                           "--include-preprocessing": args.include_preprocessing or None,
                           "--input-size": args.input_size, "--classes": args.classes,
                           "--layers": args.layers, "--base-width": args.base_width,
                           "--scale": args.scale}
    given = [flag for flag, value in classification_only.items() if value is not None]
    if given:
        raise OptionError(f"{', '.join(given)} do(es) not apply to --task detection.")
    from keras_res2net.detection import configs, experiment_io

    if args.experiment is not None and args.experiment not in configs.list_experiments():
        raise OptionError(f"--experiment {args.experiment}: choose a registered detection "
                          f"experiment ({', '.join(configs.list_experiments())}).")
    if not args.checkpoint:
        raise OptionError("--task detection needs --checkpoint: a run folder (train/coco.py's "
                          "--model_dir, or converted weights) or a .weights.h5 file.")
    try:  # the weights, and the config: the folder's experiment.json, else --experiment
        experiment_io.open_run(args.checkpoint, args.experiment)
    except (FileNotFoundError, ValueError) as err:
        raise OptionError(f"--checkpoint {err}") from None


def detection_name(args: argparse.Namespace) -> str:
    """The detector's name in output paths and report lines: --experiment, else the name in
    the run folder's experiment.json, else the folder's name."""
    from keras_res2net.detection import experiment_io

    if args.experiment:
        return args.experiment
    folder = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(
        os.path.abspath(args.checkpoint))
    return (experiment_io.saved_name(folder)
            or os.path.basename(os.path.normpath(os.path.abspath(folder))))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    args = build_parser().parse_args(argv)
    try:
        plan = validate(args)
    except OptionError as err:
        print(f"res2net-export: error: {err}", file=sys.stderr)
        return 2
    from keras_res2net.cli_errors import remove_stale

    for folder in sorted({os.path.dirname(os.path.abspath(path)) for path in plan.paths.values()}):
        remove_stale(folder, (".export-*",), "res2net-export")  # staging of killed runs
    if args.task == "detection":
        from keras_res2net.export.detection import run_exports
    else:
        from keras_res2net.export.runner import run_exports

    try:
        results = run_exports(args, plan)
    except OptionError as err:  # found once the model is loaded (e.g. unreadable weights)
        print(f"res2net-export: error: {err}", file=sys.stderr)
        return 2
    return 0 if results and all(result.passed for result in results) else 1


if __name__ == "__main__":
    # Through the package module, so OptionError raised by runner (which imports
    # keras_res2net.export.cli) is the class main() catches, not a __main__ copy.
    from keras_res2net.export.cli import main as package_main

    raise SystemExit(package_main())
