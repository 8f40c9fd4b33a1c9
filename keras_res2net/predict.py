"""Top-5 ImageNet classes for each image, with the reference's evaluation transform.

    python -m keras_res2net.predict IMAGE... --model NAME --weights PATH [--top 5]

Images are resized so the shorter side is 256 (bilinear), centre-cropped to 224 and
normalised with `preprocess_input`, as timm evaluates the published checkpoints.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from keras_res2net import variants
from keras_res2net.imagenet import EVAL_CROP, EVAL_RESIZE, decode_predictions, preprocess_input


def load_eval_image(path: str, resize: int = EVAL_RESIZE, crop: int = EVAL_CROP) -> np.ndarray:
    """RGB uint8 (crop, crop, 3): shorter side to `resize`, then a centre crop."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = resize / min(image.size)
        size = (max(crop, round(image.width * scale)), max(crop, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
        left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
        return np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


def predict(paths: list[str], model_name: str, weights: str, top: int = 5) -> list:
    from keras_res2net.models import create_model

    model = create_model(model_name, weights=weights)
    batch = np.stack([load_eval_image(path) for path in paths])
    probabilities = np.asarray(model.predict(preprocess_input(batch), verbose=0))
    return decode_predictions(probabilities, top=top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_res2net.predict",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--model", required=True, help=", ".join(variants.list_models()))
    parser.add_argument("--weights", required=True,
                        help="'imagenet' (converted cache), a .weights.h5 or a checkpoint")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        results = predict(args.images, args.model, args.weights, args.top)
    except (ValueError, FileNotFoundError, ImportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, classes in zip(args.images, results, strict=True):
        print(path)
        for rank, (wnid, label, score) in enumerate(classes, 1):
            print(f"  {rank}. {label:30s} {score:7.2%}  ({wnid})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
