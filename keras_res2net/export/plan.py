"""The export plan: every option checked and every output path decided before any work.

Kept apart from the CLI (`cli.py` parses and reports) and from the runners (`runner.py` for
classifiers, `detection.py` for detectors), which all import it and none of which imports
the others. `FORMAT_TABLE` is the one list of formats both exporters read: the file name of
each artifact, and for detectors which formats and quantizations they take, with the reason
when they do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

WEIGHT_SUFFIXES = (".h5", ".pth", ".pt", ".bin", ".safetensors")


class OptionError(ValueError):
    """A bad command line: reported with what to do, before any work."""


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """One export format: its file name, and what the detector exporter does with it."""

    name: str
    pattern: str  # file name; {stem} {size} {quant} {tag} {precision} filled per run
    detector_refusal: str = ""  # why `--task detection` cannot take it ("" = it can)
    detector_quantize: tuple = ()  # --quantize values the detector artifact takes


FORMAT_TABLE = {spec.name: spec for spec in (
    FormatSpec("savedmodel", "{stem}_savedmodel"),
    FormatSpec("keras", "{stem}.keras", detector_refusal=(
        "the detector is a subclassed keras.Model; its Keras artifact is the run folder "
        "itself (detector.weights.h5 + experiment.json)")),
    FormatSpec("tflite", "{stem}{size}_{quant}.tflite", detector_quantize=("fp16",)),
    FormatSpec("onnx", "{stem}{size}{tag}.onnx", detector_quantize=("fp16",)),
    FormatSpec("tensorrt", "{stem}{size}_{precision}.engine"),
    # A folder holding {stem}{size}_openvino.xml and .bin (export/openvino_ir.py).
    FormatSpec("openvino", "{stem}{size}_openvino", detector_refusal=(
        "the detector's OpenVINO IR is not offered yet; convert its checked ONNX file with "
        "OpenVINO's `ovc`")),
)}
FORMATS = tuple(FORMAT_TABLE)
# The refusal of detector int8 (TFLite --quantize int8/dynamic, TensorRT --precision int8).
DETECTION_INT8_REFUSAL = (
    "is not offered for --task detection: no int8 detector artifact here has passed a stated "
    "bound (full-integer box regression, NMS and RoIAlign inputs move boxes by whole pixels "
    "and change which detections survive NMS); use fp16, or float32")


@dataclasses.dataclass
class Plan:
    """Output paths per format, decided before any work."""

    stem: str
    paths: dict[str, str]
    input_size: tuple[int, int] | None = None  # --task detection: the static graph's canvas


def parse_size(text: str) -> tuple[int, int]:
    """`--input-size`: "N" (square) or "HxW"."""
    parts = text.lower().split("x")
    try:
        sizes = tuple(int(part) for part in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use N or HxW, e.g. 224 or 800x1344")
    return sizes


def artifact_path(args: argparse.Namespace, fmt: str, stem: str,
                  size: tuple[int, int] | None = None) -> str:
    """Where format `fmt` of `stem` goes (`FORMAT_TABLE`'s pattern)."""
    if size is None:  # classifier
        quant = (args.quantize or "fp32") + ("_io" if args.int8_io else "")
        tag = "_nchw" if args.nchw else ""
        size_text = ""
    else:
        quant = args.quantize or "fp32"
        tag = f"_{args.quantize}" if args.quantize else ""  # a detector's fp16 ONNX
        size_text = f"_{size[0]}x{size[1]}"
    name = FORMAT_TABLE[fmt].pattern.format(stem=stem, size=size_text, quant=quant, tag=tag,
                                            precision=args.precision or "fp32")
    return os.path.join(args.output, name)


def plan_outputs(args: argparse.Namespace, input_size: tuple[int, int] | None = None) -> Plan:
    if args.task == "detection":
        stem = detection_name(args)
    elif args.model.endswith(".keras"):
        stem = os.path.splitext(os.path.basename(args.model))[0]
    else:
        stem = args.model
    size = input_size if args.task == "detection" else None
    wanted = {fmt: artifact_path(args, fmt, stem,
                                 None if fmt == "savedmodel" else size) for fmt in args.format}
    if "tensorrt" in wanted:  # the engine is built from the ONNX file
        wanted.setdefault("onnx", artifact_path(args, "onnx", stem, size))
    return Plan(stem, wanted, input_size)


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
    input_size = None
    if args.task == "detection":
        return validate_detection(args)
    if args.input_size is not None:
        if args.input_size[0] != args.input_size[1]:
            raise OptionError(f"--input-size {args.input_size[0]}x{args.input_size[1]}: a "
                              "classifier takes a square size (one number).")
        args.input_size = args.input_size[0]
    if not args.model:
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
    if "openvino" in formats:
        from keras_res2net.export import openvino_ir

        problem = openvino_ir.unavailable_reason()
        if problem:
            raise OptionError(problem)
    return checked_plan(args, input_size)


def checked_plan(args: argparse.Namespace, input_size: tuple[int, int] | None) -> Plan:
    """The plan, refused when an output exists and --force is not given."""
    plan = plan_outputs(args, input_size)
    if not args.force:
        taken = [path for path in plan.paths.values() if os.path.lexists(path)]
        if taken:
            raise OptionError(f"{', '.join(taken)} already exist(s): pass --force to overwrite, "
                              "or choose another --output.")
    return plan


def validate_detection(args: argparse.Namespace) -> Plan:
    """The checks of `--task detection`, before any model is built; returns the plan."""
    for fmt in args.format:
        refusal = FORMAT_TABLE[fmt].detector_refusal
        if refusal:
            raise OptionError(f"--format {fmt} does not apply to --task detection: {refusal}.")
    if args.model or args.weights:
        raise OptionError("--task detection takes --checkpoint (and --experiment), not "
                          "--model/--weights.")
    if args.quantize in ("int8", "dynamic"):
        raise OptionError(f"--quantize {args.quantize} {DETECTION_INT8_REFUSAL}.")
    if args.precision == "int8":
        raise OptionError(f"--precision int8 {DETECTION_INT8_REFUSAL}.")
    if args.quantize and not any(args.quantize in FORMAT_TABLE[fmt].detector_quantize
                                 for fmt in args.format):
        takes = [fmt for fmt, spec in FORMAT_TABLE.items() if args.quantize in
                 spec.detector_quantize]
        raise OptionError(f"--quantize {args.quantize} applies to --format "
                          f"{' or '.join(takes)} for detectors; add it or drop --quantize.")
    if args.precision and "tensorrt" not in args.format:
        raise OptionError("--precision applies to --format tensorrt.")
    classification_only = {"--int8-io": args.int8_io or None,
                           "--calibration-data": args.calibration_data,
                           "--include-preprocessing": args.include_preprocessing or None,
                           "--nchw": args.nchw or None, "--classes": args.classes,
                           "--layers": args.layers, "--base-width": args.base_width,
                           "--scale": args.scale}
    given = [flag for flag, value in classification_only.items() if value is not None]
    if given:
        raise OptionError(f"{', '.join(given)} do(es) not apply to --task detection (the "
                          "detector graph takes NHWC float32 RGB images in [0, 255]).")
    if args.opset < 17:
        raise OptionError(f"--opset {args.opset}: use 17 or later.")
    if args.latency_runs < 0:
        raise OptionError("--latency-runs must be >= 0.")
    from keras_res2net.detection import configs, deploy, experiment_io

    if args.experiment is not None and args.experiment not in configs.list_experiments():
        raise OptionError(f"--experiment {args.experiment}: choose a registered detection "
                          f"experiment ({', '.join(configs.list_experiments())}).")
    if not args.checkpoint:
        raise OptionError("--task detection needs --checkpoint: a run folder (train/coco.py's "
                          "--model_dir, or converted weights) or a .weights.h5 file.")
    try:  # the weights, and the config: the folder's experiment.json, else --experiment
        config, _ = experiment_io.open_run(args.checkpoint, args.experiment)
    except (FileNotFoundError, ValueError) as err:
        raise OptionError(f"--checkpoint {err}") from None
    input_size = None
    if set(args.format) - {"savedmodel"}:  # the static formats
        input_size = tuple(args.input_size or deploy.default_input_size(config))
        try:
            deploy.check_input_size(input_size, config.data.size_divisor)
        except ValueError as err:
            raise OptionError(f"--input-size: {err}") from None
    elif args.input_size:
        raise OptionError("--input-size applies to the static formats (tflite, onnx, "
                          "tensorrt); the detection SavedModel takes images of any size.")
    return checked_plan(args, input_size)


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


