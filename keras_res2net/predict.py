"""Top-5 classes for each image, with the reference's evaluation transform.

    python -m keras_res2net.predict IMAGE... --model NAME --weights PATH [--top 5]
    python -m keras_res2net.predict IMAGE... --model runs/digits/model.keras [--precision bf16]

Images get the variant's own evaluation transform (`keras_res2net.pretrained_config`, timm's
`pretrained_cfg`): the shorter side resized to input size / crop fraction (256 for 224 at
0.875, bilinear), centre-cropped to the input size and normalised with the variant's mean and
std, as timm evaluates the published checkpoints. A `.keras` model (the `model.keras` that
training writes) is fed images of its own input size, normalised with `preprocess_input`; its
eval crop fraction comes from the `train_config.json` beside it, if any.
16-bit images are scaled to 8 bits (divided by 257), not clipped. Every image is checked
before the model is built. `--precision bf16` computes in bfloat16 (`keras_res2net.precision`)
where the CPU has native bfloat16 arithmetic; elsewhere one line says why and fp32 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from keras_res2net import variants
from keras_res2net.cli_errors import UsageError, report
from keras_res2net.eval_transform import eval_geometry, resize_size
from keras_res2net.imagenet import decode_predictions, preprocess_input
from keras_res2net.variants import IMAGENET_PRETRAINED, PretrainedConfig

PROG = "python -m keras_res2net.predict"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image, path: str = "image"):
    """`image` as 8-bit RGB; 16-bit grayscale (modes I;16*, I) scaled by 1/257, not clipped."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        if image.mode == "I" and values.min() < 0:
            raise UsageError(f"{path}: 32-bit signed image with negative values (mode I); "
                             "convert it to an 8- or 16-bit image first.")
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        raise UsageError(f"{path}: floating-point image (mode F) has no defined 0..255 range; "
                         "convert it to an 8- or 16-bit image first.")
    return image.convert("RGB")


def open_image(path: str):
    """The opened PIL image, or a UsageError naming `path` and what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such image file.")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not an image file.")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise UsageError(f"{path}: too large to decode safely ({err}); downscale it "
                         "first.") from err
    except UnidentifiedImageError as err:
        raise UsageError(f"{path}: not an image Pillow can read.") from err
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err}).") from err


def check_images(paths: list[str]) -> None:
    """Open every image's header (fast) so a bad path fails before the model is built."""
    for path in paths:
        open_image(path).close()


def load_eval_image(path: str, config: PretrainedConfig = IMAGENET_PRETRAINED) -> np.ndarray:
    """RGB uint8 (size, size, 3) by `config`'s eval transform: the shorter side resized to
    `input_size / crop_pct` with its interpolation (PIL, as timm's torchvision on PIL
    images), then the centre crop (`eval_transform.eval_geometry`)."""
    from PIL import Image

    with open_image(path) as opened:
        try:
            image = to_rgb(opened, path)
        except (OSError, SyntaxError) as err:  # truncated or corrupt data
            raise UsageError(f"{path}: corrupt image data ({err}).") from err
        box = eval_geometry(image.height, image.width, config.input_size, config.crop_pct)
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                    "nearest": Image.NEAREST}[config.interpolation]
        image = image.resize((box.width, box.height), resample)
        crop = (box.left, box.top, box.left + box.size, box.top + box.size)
        return np.asarray(image.crop(crop), dtype=np.uint8)


def load_keras_model(path: str):
    """A `.keras` model file, or a UsageError saying why it is not one."""
    import zipfile

    import keras

    if not os.path.isfile(path):
        raise UsageError(f"--model {path}: no such file.")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"--model {path}: not a valid .keras file (not a zip archive; "
                         "truncated or corrupt?).")
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # noqa: BLE001  Keras raises many types for broken archives
        raise UsageError(f"--model {path}: not a valid .keras file "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]}).") from err


def keras_eval_transform(path: str, size: int) -> PretrainedConfig:
    """The eval transform of a trained `.keras` model: its input size, and its run's
    eval_crop_fraction if recorded beside it (train_config.json), else the reference's 0.875."""
    fraction = IMAGENET_PRETRAINED.crop_pct
    record = os.path.join(os.path.dirname(os.path.abspath(path)), "train_config.json")
    if os.path.isfile(record):
        try:
            with open(record) as f:
                fraction = float(json.load(f).get("eval_crop_fraction") or fraction)
        except (OSError, ValueError, TypeError):
            pass
    return PretrainedConfig(input_size=size, crop_pct=fraction)


def predict(paths: list[str], model_name: str, weights: str | None, top: int = 5,
            log=None, fold: bool = True, precision: str = "fp32") -> list:
    """Top-`top` (id, label, score) per image. `model_name` is a variant name (with `weights`)
    or a `.keras` file. `fold=True` runs the model with its BatchNorm folded into the
    convolutions (`keras_res2net.fold_batchnorm`: same outputs, faster). `precision="bf16"`
    computes in bfloat16 where the CPU runs it natively (else one line, to stderr with `log`
    or as a warning, and fp32)."""
    from keras_res2net.precision import PRECISIONS, resolve_precision

    if top < 1:
        raise UsageError(f"--top must be >= 1; got {top}.")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}.")
    check_images(paths)
    if model_name.endswith(".keras"):
        if weights:
            raise UsageError("--weights does not apply to a .keras --model (it holds its "
                             "weights).")
        model = load_keras_model(model_name)
        shape = model.input_shape
        if len(shape) != 4 or shape[-1] != 3 or not shape[1] or shape[1] != shape[2]:
            raise UsageError(f"--model {model_name}: input shape {shape} is not square RGB "
                             "images.")
        config = keras_eval_transform(model_name, shape[1])
    else:
        if not weights:
            raise UsageError(f"--model {model_name} needs --weights ('imagenet', a "
                             ".weights.h5 or a checkpoint), or pass a .keras file as --model.")
        try:
            variants.get_variant(model_name)  # before the weights are opened
        except ValueError as err:
            raise UsageError(f"--model: {err}") from err
        config = variants.pretrained_config(model_name)
        batch = np.stack([load_eval_image(path, config) for path in paths])  # decoded
        from keras_res2net.models import create_model  # before the (slow) model is built

        model = create_model(model_name, weights=weights)
    if model_name.endswith(".keras"):
        batch = np.stack([load_eval_image(path, config) for path in paths])
    if log and model_name.endswith(".keras"):
        log(f"{model_name}: {config.input_size}x{config.input_size} input; each image resized "
            f"(shorter side {resize_size(config.input_size, config.crop_pct)}, "
            f"{config.interpolation}), centre-cropped to {config.input_size}, normalised "
            "with preprocess_input.")
    if fold:  # nothing trains here: a compiled (trained) model's BN statistics are final
        from keras_res2net.fold import fold_batchnorm

        # The count goes to stderr: stdout stays the results (scripts parse it).
        model = fold_batchnorm(model, allow_training=True,
                               log=(lambda line: print(line, file=sys.stderr)) if log else None)
    precision = resolve_precision(precision, what="--precision", log=(
        (lambda line: print(f"{PROG}: note: {line}", file=sys.stderr)) if log else None))
    if precision != "fp32":
        from keras_res2net.precision import with_precision

        model = with_precision(model, precision)
    # Direct calls, 32 images at a time: no tf.data pipeline or retracing for a few images.
    probabilities = np.concatenate([
        np.asarray(model(preprocess_input(batch[i:i + 32], config.mean, config.std),
                         training=False))
        for i in range(0, len(batch), 32)])
    if probabilities.ndim == 2 and probabilities.shape[1] == 1000:
        return decode_predictions(probabilities, top=top)
    results = []
    for row in probabilities.reshape(len(paths), -1):
        best = np.argsort(row)[::-1][:top]
        results.append([(str(i), f"class {i}", float(row[i])) for i in best])
    return results


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.strip().splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--model", required=True,
                        help="a .keras file, or a variant: " + ", ".join(variants.list_models()))
    parser.add_argument("--weights", default=None,
                        help="for a variant name: 'imagenet' (converted cache), a .weights.h5 "
                             "or a checkpoint")
    parser.add_argument("--top", type=positive_int, default=5)
    parser.add_argument("--no-fold", action="store_true",
                        help="run the model as built, BatchNorm not folded into the convs")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: compute in bfloat16 (Keras mixed_bfloat16) on a CPU with "
                             "native bfloat16 (AVX512_BF16/AMX, ARM BF16); elsewhere fp32, "
                             "with one line saying so")
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        results = predict(args.images, args.model, args.weights, args.top, log=print,
                          fold=not args.no_fold, precision=args.precision)
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, PROG, args.verbose)
    for path, classes in zip(args.images, results, strict=True):
        print(path)
        for rank, (wnid, label, score) in enumerate(classes, 1):
            print(f"  {rank}. {label:30s} {score:7.2%}  ({wnid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
