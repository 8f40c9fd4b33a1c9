"""Saliency maps of images at their own size: a Python call and a command line.

    python -m keras_res2net.saliency.predict IMAGE_OR_FOLDER... --checkpoint runs/saliency \
        --out_dir maps [--force]

    from keras_res2net.saliency import load_saliency
    maps = load_saliency("runs/saliency").predict(["a.jpg", "b.png"])  # [(H, W) float32]

`load_saliency(source)` opens a run folder (its `model.keras`) or a `.keras` file written by
training (loaded with `safe_mode=True`); `predict(images)` takes a path, a PIL image, a uint8
array (H, W, 3) or (H, W), or a list of them, and returns for each a float32 map in [0, 1]
at the image's own size (a list for a list). Each image is resized to the model's input size
(bilinear, as evaluation does), the network's fused logits go through a sigmoid, and the map
is resized back (bilinear). The BatchNorm of the backbone is folded into its convolutions
(`keras_res2net.fold_batchnorm`: the same maps, faster) unless `fold=False`.

The command line writes, for every image, `<stem>.png` (the map as an 8-bit grey image, as
SOD results are published) and `<stem>_overlay.png` (the image with the salient region tinted)
into `--out_dir`. Every input and every output path is checked first: an unreadable image, a
folder without images, two inputs with the same stem, or an output that exists (without
`--force`) stop it with one line, exit 2, before the model is loaded; each file is written
through a temporary name.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from keras_res2net.cli_errors import UsageError, atomic_file, report
from keras_res2net.saliency.config import MODEL_FILE

PROG = "python -m keras_res2net.saliency.predict"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OVERLAY_COLOUR = np.array([255.0, 40.0, 40.0])
OVERLAY_ALPHA = 0.6


def model_path(source: str) -> str:
    """The `.keras` file of `source`: a run folder's `model.keras`, or the file itself."""
    source = os.fspath(source)
    path = os.path.join(source, MODEL_FILE) if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {source}: no {MODEL_FILE} there (train with "
                         "train/saliency.py, or give the .keras file it wrote).")
    return path


def load_inference_model(source: str):
    """The saliency network of `source` (see `model_path`), checked to be one."""
    from keras_res2net.predict import load_keras_model

    path = model_path(source)
    try:
        model = load_keras_model(path)
    except UsageError as err:  # its message names the classifier's --model flag
        raise UsageError(f"--checkpoint {source}: " + str(err).split(": ", 1)[-1]) from err
    shape = tuple(model.inputs[0].shape[1:])
    outputs = model.outputs
    if len(outputs) != 1 or tuple(outputs[0].shape[1:]) != (*shape[:2], 1):
        raise UsageError(f"--checkpoint {source}: not a saliency network (it maps "
                         f"{shape} images to {[tuple(o.shape[1:]) for o in outputs]}).")
    return model


def to_array(image, name: str = "image") -> np.ndarray:
    """`image` (a path, PIL image or array) as uint8 RGB (H, W, 3)."""
    from PIL import Image

    from keras_res2net.predict import open_image, to_rgb

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        with open_image(path) as opened:
            try:
                return np.asarray(to_rgb(opened, path), dtype=np.uint8)
            except (OSError, SyntaxError) as err:  # truncated or corrupt data
                raise UsageError(f"{path}: corrupt image data ({err}).") from err
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image, name), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise UsageError(f"{name}: a {array.dtype} array; give uint8 RGB (0..255).")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise UsageError(f"{name}: shape {array.shape}; give (H, W, 3) RGB or (H, W) grey.")
    return array


class SaliencyPredictor:
    """A trained saliency network and `predict(images)` (see the module docstring)."""

    def __init__(self, model, fold: bool = True, log=None):
        import tensorflow as tf

        if fold:
            from keras_res2net.fold import fold_batchnorm

            # Nothing trains here: fold even a model whose BN layers were left trainable.
            model = fold_batchnorm(model, allow_training=True, log=log or (lambda line: None))
        self.model = model
        self.image_size = int(model.inputs[0].shape[1])
        self._run = tf.function(lambda x: tf.sigmoid(tf.cast(model(x, training=False),
                                                              tf.float32)),
                                reduce_retracing=True, autograph=False)

    def predict(self, images, batch_size: int = 8):
        """Maps in [0, 1] at each image's own size: one (H, W) float32 array for one image,
        a list for a list."""
        single = not isinstance(images, (list, tuple))
        arrays = [to_array(image, f"image {i}") for i, image in
                  enumerate([images] if single else images)]
        maps = []
        for start in range(0, len(arrays), batch_size):
            maps.extend(self._predict_batch(arrays[start:start + batch_size]))
        return maps[0] if single else maps

    def _predict_batch(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tensorflow as tf

        from keras_res2net.imagenet import preprocess_input

        size = (self.image_size, self.image_size)
        batch = tf.stack([tf.image.resize(tf.cast(a, tf.float32), size) for a in arrays])
        probabilities = self._run(preprocess_input(batch))
        return [tf.image.resize(p, a.shape[:2]).numpy()[..., 0] for p, a in
                zip(probabilities, arrays, strict=True)]


def load_saliency(source, fold: bool = True, log=None) -> SaliencyPredictor:
    """The predictor of a run folder or `.keras` file (see the module docstring)."""
    return SaliencyPredictor(load_inference_model(source), fold=fold, log=log)


def overlay(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """`image` with the salient region tinted (weight = the map), uint8 RGB."""
    weight = OVERLAY_ALPHA * saliency[..., None]
    return np.clip(image * (1 - weight) + OVERLAY_COLOUR * weight, 0, 255).astype(np.uint8)


def expand_inputs(inputs: list[str]) -> list[str]:
    """Image files of `inputs` (a folder stands for its image files, sorted)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise UsageError(f"{item}: the folder holds no images "
                                 f"({', '.join(IMAGE_SUFFIXES)}).")
            paths.extend(found)
        else:
            paths.append(item)
    return paths


def output_paths(paths: list[str], out_dir: str, force: bool) -> list[tuple[str, str]]:
    """(map path, overlay path) per image; refuses equal stems and, without `force`, outputs
    that exist."""
    outputs, seen, taken = [], {}, []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in seen:
            raise UsageError(f"{path} and {seen[stem]} would both write {stem}.png: rename one "
                             "or predict them in separate runs.")
        seen[stem] = path
        pair = (os.path.join(out_dir, f"{stem}.png"), os.path.join(out_dir, f"{stem}_overlay.png"))
        taken += [p for p in pair if os.path.lexists(p)]
        outputs.append(pair)
    if taken and not force:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UsageError(f"{taken[0]} already exists{more}: pass --force to overwrite, or "
                         "choose another --out_dir.")
    return outputs


def save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    with atomic_file(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")


def run(images: list[str], checkpoint: str, out_dir: str, force: bool = False,
        fold: bool = True) -> list[tuple[str, str]]:
    """The command line's work: check everything, predict, write; returns what it wrote."""
    paths = expand_inputs(images)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out_dir {out_dir}: a file, not a folder.")
    outputs = output_paths(paths, out_dir, force)
    arrays = [to_array(path) for path in paths]  # every image decodes before the model loads
    predictor = load_saliency(checkpoint, fold=fold,
                              log=lambda line: print(f"predict: {line}", file=sys.stderr))
    for path, array, (map_path, overlay_path) in zip(paths, arrays, outputs, strict=True):
        saliency = predictor.predict(array)
        save_png(np.round(saliency * 255).astype(np.uint8), map_path)
        save_png(overlay(array, saliency), overlay_path)
        print(f"{path}: {array.shape[1]}x{array.shape[0]}, salient {np.mean(saliency >= 0.5):.1%}"
              f" -> {map_path}, {overlay_path}", flush=True)
    return outputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files, or folders of images")
    parser.add_argument("--checkpoint", required=True,
                        help="a run folder of train/saliency.py (its model.keras), or a .keras "
                        "file")
    parser.add_argument("--out_dir", required=True, help="where the maps and overlays go")
    parser.add_argument("--force", action="store_true",
                        help="overwrite maps and overlays already in --out_dir")
    parser.add_argument("--no-fold", action="store_true",
                        help="run the network as trained, BatchNorm not folded (same maps)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args.images, args.checkpoint, args.out_dir, force=args.force,
            fold=not args.no_fold)
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, PROG, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
