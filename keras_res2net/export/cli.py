"""`res2net-export`: turn a Res2Net into the artifact a target runs, and prove it equal.

    res2net-export --model res2net50_26w_4s --weights W.pth --format tflite --quantize int8 \\
        --calibration-data digits --output out/
    res2net-export --model runs/digits/model.keras --format onnx savedmodel --output out/
    res2net-export --task detection --checkpoint runs/shapes --format savedmodel --output out/
    res2net-export --task saliency --checkpoint runs/saliency --format tflite onnx --output out/

Every option is checked before any model is loaded; each artifact is then written to a staging
path, loaded with its own runtime, compared with the Keras model on sample images and only then
moved to its output path. One line per artifact, then a summary table; the exit status is 0
only if every artifact passed (2 for bad options).
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_res2net.export.plan import FORMATS, OptionError, Plan, parse_size, validate

__all__ = ["FORMATS", "OptionError", "Plan", "build_parser", "main", "validate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="res2net-export", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("classification", "detection", "saliency"),
                        default="classification",
                        help="classification (default): --model; detection: --checkpoint "
                        "(and --experiment if it has no experiment.json); saliency: "
                        "--checkpoint (a train/saliency.py run folder)")
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
                        help="TFLite quantization (default: float32); --task detection: fp16 "
                        "for tflite")
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
    parser.add_argument("--input-size", type=parse_size, metavar="SIZE",
                        help="image size for a model built by name (default 224) or for a "
                        ".keras model without a fixed size; --task detection: the static "
                        "graph's canvas HxW (default: the experiment's test size, e.g. "
                        "800x1344), each side a multiple of the backbone stride")
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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    args = build_parser().parse_args(argv)
    try:
        if args.task == "saliency":  # its own checks (keras_res2net.export.saliency)
            from keras_res2net.export.saliency import validate_saliency

            plan = validate_saliency(args)
        else:
            plan = validate(args)
    except OptionError as err:
        print(f"res2net-export: error: {err}", file=sys.stderr)
        return 2
    from keras_res2net.cli_errors import remove_stale

    for folder in sorted({os.path.dirname(os.path.abspath(path)) for path in plan.paths.values()}):
        remove_stale(folder, (".export-*",), "res2net-export")  # staging of killed runs
    if args.task == "detection":
        from keras_res2net.export.detection import run_exports
    elif args.task == "saliency":
        from keras_res2net.export.saliency import run_exports
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
