"""Class activation maps (Grad-CAM, Grad-CAM++) for any Keras classifier, as in the paper's Fig. 4.

    python -m keras_res2net.cam IMAGE... --model NAME --weights W --out_dir DIR
    python -m keras_res2net.cam IMAGE... --model runs/cifar/model.keras --class 3 --layer layer2 \
        --plus --out_dir DIR

For each image it writes `DIR/<name>_gradcam.png` (the heat map blended over the image the
model saw) and `DIR/<name>_gradcam.npy` (the raw map, float32 in [0, 1], at that image's size;
`_gradcampp` with `--plus`). Images are loaded and preprocessed as `keras_res2net.predict` does.
In Python, `grad_cam(model, images)` returns the maps for preprocessed images.

How: the model is split at the chosen feature map A (a stage output: `layer4` by default for a
Res2Net, `conv5` for keras.applications' ResNet-50, or any layer name with a 4-D output) into
`body` (image -> A) and `tail` (A -> class score before any softmax). The gradient of the class
score with respect to A comes from `tf.GradientTape` on TensorFlow and `jax.grad` on JAX (the
only backend-specific lines); the weighting is NumPy: Grad-CAM weights each channel by its
mean gradient, Grad-CAM++ by its positive gradients weighted as in Chattopadhyay et al. (2018).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

import numpy as np

from keras_res2net.cli_errors import UsageError, atomic_file, report

PROG = "python -m keras_res2net.cam"
STAGE_PATTERNS = (
    re.compile(r"(layer\d+)_\d+_out"),  # Res2Net (ImageNet and CIFAR): last block of a stage
    re.compile(r"(level\d+)_(?:.*_)?root_relu"),  # DLA Res2Net: last root of a level
    re.compile(r"(conv\d+)_block\d+_out"),  # keras.applications ResNet/ResNetV2
)
BATCH = 16


@dataclasses.dataclass
class CamResult:
    """Maps (N, H, W) in [0, 1], the class explained per image, its score, and the layer used."""

    maps: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    layer: str


def stage_layers(model) -> dict[str, str]:
    """Stage name -> the layer whose output is that stage (`layer1`.. for Res2Net, `level2`..
    for DLA, `conv2`.. for keras.applications ResNets); layers are in topological order, so a
    stage's output is its last match."""
    stages = {}
    for layer in model.layers:
        for pattern in STAGE_PATTERNS:
            match = pattern.fullmatch(layer.name)
            if match:
                stages[match.group(1)] = layer.name
    return stages


def _is_feature_map(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # no single output (shared or multi-output layer)
        return False


def resolve_layer(model, layer: str | None):
    """The layer whose output is explained: a stage name, a layer name with a 4-D output, or
    (None) the last 4-D output, i.e. the last stage before global pooling."""
    if layer is None:
        for candidate in reversed(model.layers):
            if _is_feature_map(candidate):
                return candidate
        raise ValueError(f"{model.name} has no layer with a 4-D (feature map) output.")
    stages = stage_layers(model)
    if layer in stages:
        return model.get_layer(stages[layer])
    names = {candidate.name: candidate for candidate in model.layers}
    if layer in names and _is_feature_map(names[layer]):
        return names[layer]
    valid = ", ".join(stages) if stages else "(none named)"
    what = "has no 4-D output" if layer in names else "is no stage or layer"
    raise UsageError(f"--layer {layer!r} {what} of {model.name}. Valid stages: {valid}; or the "
                     "name of any layer with a 4-D output (model.summary() lists them).")


def _score_head(model):
    """(tensor the tail ends at, function from it to the class scores before any softmax).

    A final softmax/sigmoid (a Dense with that activation, or an Activation layer) is skipped:
    Grad-CAM explains the class logit, not the normalised probability."""
    import keras

    last = model.layers[-1]
    name = getattr(getattr(last, "activation", None), "__name__", "")
    if name in ("softmax", "sigmoid"):
        if isinstance(last, keras.layers.Activation):
            return last.input, lambda h: h
        if isinstance(last, keras.layers.Dense):
            def logits(h):
                out = keras.ops.matmul(h, keras.ops.cast(last.kernel, h.dtype))
                return out + keras.ops.cast(last.bias, h.dtype) if last.use_bias else out
            return last.input, logits
    return model.output, lambda h: h


def _split(model, feature_layer):
    import keras

    head_input, to_scores = _score_head(model)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    body = keras.Model(inputs, feature_layer.output)
    try:
        tail = keras.Model(feature_layer.output, head_input)
    except ValueError as err:
        stages = ", ".join(stage_layers(model)) or "a block output"
        raise UsageError(f"--layer {feature_layer.name!r}: later layers also read layers before "
                         "it (a skip connection crosses it), so its map alone does not decide "
                         f"the score; choose a stage output ({stages}).") from err
    return body, tail, to_scores


def _class_score_gradients(tail, to_scores, features, classes: np.ndarray):
    """d(score of `classes[i]` for image i) / d(features), on the active Keras backend."""
    import keras

    backend = keras.backend.backend()

    def scores_of(feature_maps):
        return keras.ops.cast(to_scores(tail(feature_maps, training=False)), "float32")

    if backend == "tensorflow":
        import tensorflow as tf

        features = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(features)
            chosen = tf.gather(scores_of(features), classes, axis=1, batch_dims=1)
            total = tf.reduce_sum(chosen)
        return tape.gradient(total, features)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        index = jnp.asarray(classes)[:, None]
        return jax.grad(lambda f: jnp.sum(jnp.take_along_axis(scores_of(f), index, axis=1)))(
            jnp.asarray(features))
    raise NotImplementedError(f"Grad-CAM needs the TensorFlow or JAX backend (KERAS_BACKEND="
                              f"tensorflow or jax); this process runs {backend!r}.")


def cam_weighting(features: np.ndarray, gradients: np.ndarray, plus: bool = False) -> np.ndarray:
    """(N, h, w) = ReLU(sum_k w_k A_k) from feature maps A and gradients dY/dA (N, h, w, K).

    Grad-CAM: w_k = mean of dY/dA_k. Grad-CAM++: w_k = sum_ij a_ij relu(dY/dA_k,ij) with
    a = g^2 / (2 g^2 + sum_ab A_ab g^3) (the closed form for an exponential score)."""
    features = features.astype(np.float64)
    gradients = gradients.astype(np.float64)
    if plus:
        squared, cubed = gradients ** 2, gradients ** 3
        denominator = 2 * squared + features.sum(axis=(1, 2), keepdims=True) * cubed
        alpha = squared / np.where(denominator != 0, denominator, 1.0)
        weights = (alpha * np.maximum(gradients, 0)).sum(axis=(1, 2))
    else:
        weights = gradients.mean(axis=(1, 2))
    return np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0)


def _upsample_and_normalise(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import keras

    resized = keras.ops.image.resize(maps[..., None].astype("float32"), size,
                                     interpolation="bilinear", antialias=False)
    resized = np.maximum(np.asarray(keras.ops.convert_to_numpy(resized))[..., 0], 0)
    peak = resized.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, resized / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def class_activation_maps(model, images, class_index: int | None = None,
                          layer: str | None = None, plus: bool = False) -> CamResult:
    """Grad-CAM (or Grad-CAM++ with `plus=True`) maps of `model` for preprocessed `images`.

    `images`: (N, H, W, C) or (H, W, C), already normalised as the model expects.
    `class_index`: the class explained for every image (None: each image's top class).
    `layer`: a stage name (`layer4`, ...) or layer name; None: the last feature map.
    Returns maps (N, H, W) in [0, 1] at the image size, the classes and their scores.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C); got shape {images.shape}.")
    if len(model.outputs) != 1 or len(model.output.shape) != 2:
        raise ValueError(f"{model.name} is not a classifier with one (batch, classes) output.")
    num_classes = int(model.output.shape[-1])
    if class_index is not None and not 0 <= class_index < num_classes:
        raise UsageError(f"--class {class_index} is out of range: {model.name} has "
                         f"{num_classes} classes (0..{num_classes - 1}).")
    feature_layer = resolve_layer(model, layer)
    body, tail, to_scores = _split(model, feature_layer)
    maps, classes, scores = [], [], []
    for start in range(0, len(images), BATCH):
        features = body(images[start:start + BATCH], training=False)
        logits = np.asarray(to_scores(tail(features, training=False)), dtype=np.float64)
        chosen = (np.argmax(logits, axis=1) if class_index is None
                  else np.full(len(logits), class_index)).astype(np.int32)
        gradients = _class_score_gradients(tail, to_scores, features, chosen)
        maps.append(cam_weighting(np.asarray(features), np.asarray(gradients), plus))
        classes.append(chosen)
        scores.append(logits[np.arange(len(chosen)), chosen])
    return CamResult(_upsample_and_normalise(np.concatenate(maps), images.shape[1:3]),
                     np.concatenate(classes), np.concatenate(scores), feature_layer.name)


def grad_cam(model, images, class_index: int | None = None, layer: str | None = None,
             plus: bool = False) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] for preprocessed `images` (see
    `class_activation_maps`, which also returns the classes explained)."""
    return class_activation_maps(model, images, class_index, layer, plus).maps


def colorize(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a jet-coloured uint8 RGB image (blue = 0, red = 1). Hand-written, so
    the CLI needs no plotting library."""
    x = np.clip(cam, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)
    return np.round(rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heat map blended over the uint8 RGB `image` with weight `alpha`."""
    blended = (1 - alpha) * image.astype(np.float64) + alpha * colorize(cam)
    return np.round(blended).clip(0, 255).astype(np.uint8)


# --- Command line -------------------------------------------------------------------------


def _load(model_name: str, weights: str | None):
    """(model, its `PretrainedConfig` evaluation transform), the way `predict` loads it: a
    variant name takes its checkpoint's own settings (`keras_res2net.pretrained_config`)."""
    from keras_res2net import predict, variants

    if model_name.endswith(".keras"):
        if weights:
            raise UsageError("--weights does not apply to a .keras --model (it holds its "
                             "weights).")
        model = predict.load_keras_model(model_name)
        shape = model.input_shape
        if len(shape) != 4 or shape[-1] != 3 or not shape[1] or shape[1] != shape[2]:
            raise UsageError(f"--model {model_name}: input shape {shape} is not square RGB "
                             "images.")
        return model, predict.keras_eval_transform(model_name, shape[1])
    if not weights:
        raise UsageError(f"--model {model_name} needs --weights ('imagenet', a .weights.h5 or a "
                         "checkpoint), or pass a .keras file as --model.")
    try:
        variants.get_variant(model_name)
    except ValueError as err:
        raise UsageError(f"--model: {err}") from err
    from keras_res2net.models import create_model

    return create_model(model_name, weights=weights), variants.pretrained_config(model_name)


def _output_names(paths: list[str], suffix: str) -> list[str]:
    stems = [os.path.splitext(os.path.basename(path))[0] + suffix for path in paths]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise UsageError(f"images with the same name would overwrite each other's maps "
                         f"({', '.join(repeated)}); rename them or run them separately.")
    return stems


def run(paths: list[str], model_name: str, weights: str | None, out_dir: str,
        class_index: int | None = None, layer: str | None = None, plus: bool = False,
        alpha: float = 0.5, log=print) -> list[tuple[str, str]]:
    """Write a blended PNG and a raw .npy map per image; return their paths."""
    from keras_res2net import predict
    from keras_res2net.imagenet import imagenet_classes, preprocess_input

    if class_index is not None and class_index < 0:
        raise UsageError(f"--class must be >= 0; got {class_index}.")
    if not 0 < alpha <= 1:
        raise UsageError(f"--alpha must be in (0, 1]; got {alpha}.")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out_dir {out_dir}: exists and is not a folder.")
    stems = _output_names(paths, "_gradcampp" if plus else "_gradcam")
    predict.check_images(paths)  # every image readable before the model is built
    model, config = _load(model_name, weights)
    images = np.stack([predict.load_eval_image(path, config) for path in paths])
    result = class_activation_maps(model, preprocess_input(images, config.mean, config.std),
                                   class_index, layer, plus)
    labels = ([label for _, label in imagenet_classes()]
              if model.output.shape[-1] == 1000 else None)
    written = []
    for path, stem, image, cam, cls, score in zip(paths, stems, images, result.maps,
                                                  result.classes, result.scores, strict=True):
        png, npy = os.path.join(out_dir, stem + ".png"), os.path.join(out_dir, stem + ".npy")
        with atomic_file(png) as temporary:
            from PIL import Image

            Image.fromarray(overlay(image, cam, alpha)).save(temporary, format="PNG")
        with atomic_file(npy) as temporary:
            np.save(temporary, cam)
        label = f" ({labels[cls]})" if labels else ""
        log(f"{path}: class {cls}{label}, score {score:.3f}, map of {result.layer} -> {png}, "
            f"{npy}")
        written.append((png, npy))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.strip().splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--model", required=True, help="a variant name or a .keras file")
    parser.add_argument("--weights", default=None,
                        help="for a variant name: 'imagenet', a .weights.h5 or a checkpoint")
    parser.add_argument("--class", dest="class_index", type=int, default=None,
                        help="class to explain (default: each image's top class)")
    parser.add_argument("--layer", default=None,
                        help="stage (layer1..layer4; level2..level5 for DLA) or layer name "
                             "(default: the last stage)")
    parser.add_argument("--plus", action="store_true", help="Grad-CAM++ instead of Grad-CAM")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat map opacity (0, 1]")
    parser.add_argument("--out_dir", required=True, help="folder for the PNG and .npy files")
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        run(args.images, args.model, args.weights, args.out_dir, args.class_index, args.layer,
            args.plus, args.alpha)
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, PROG, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
