"""The detector as a static graph for the edge runtimes (ONNX, TFLite, TensorRT).

`deploy_function(model, input_size)` traces a trained detector (any of the five
architectures) into a `tf.function` whose every shape is fixed:

- input `images` (1, H, W, 3) float32 RGB in [0, 255]: the caller's image letterboxed into an
  H x W canvas (`letterbox`: resized by the model's own rule, pasted top-left, zero padding),
  and `image_sizes` (1, 2) float32, the caller's original (height, width). The graph computes
  the resize factor itself (`resize_factor`, the data pipeline's `resized_size` rule, also
  kept inside the canvas), clips to the resized image as the model does and returns boxes in
  the caller's pixels.
- outputs `boxes` (1, D, 4) xyxy, `scores` (1, D), `classes` (1, D) int32 (1..K, 0 =
  padding), `num_detections` (1,) int32 and, with a mask head, `masks` (1, D, 28, 28)
  probabilities in box coordinates (`paste_detections` puts them in the image).

The detector's own layers and weights run unchanged; two steps are made static:

- RoIAlign samples a fixed `sampling_ratio x sampling_ratio` grid per bin (the model's
  `sampling_ratio > 0` path: gathers and multiplies only), because mmcv's adaptive count
  (`sampling_ratio=0`) needs per-RoI sample counts known only at run time. The detector is
  rebuilt with that setting (`static_config`), weights shared through the weights file.
- NMS: the model's `tf.image.combined_non_max_suppression` has no ONNX/TFLite builtin, so
  while tracing it is replaced (`static_nms`) by one class-aware NMS per image through
  `NonMaxSuppressionV4` with padding, which tf2onnx lowers to ONNX `NonMaxSuppression` and
  the TFLite converter to its `NON_MAX_SUPPRESSION_V4` builtin. Classes (and the RPN's
  pyramid levels) are kept apart by shifting each class's boxes to its own region (boxes
  scaled to [0, 1] first, then offset by 2 x class), torchvision's `batched_nms` trick: the
  same result as per-class NMS followed by the top `max_total` scores, which is what the
  model's call computes (its `max_per_class` equals `max_total`). Candidates are the
  `max_candidates` best (box, class) pairs (mmdeploy's `pre_top_k`); the RPN's never lose one.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np

DEFAULT_SAMPLING_RATIO = 2  # mmdetection 1.x / Detectron's RoIAlign setting
MAX_CANDIDATES = 5000  # mmdeploy's pre_top_k for the two-stage detectors


def static_config(config, sampling_ratio: int = DEFAULT_SAMPLING_RATIO):
    """A copy of the experiment `config` whose RoIAlign takes a fixed sample grid."""
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio {sampling_ratio}: the static graph needs >= 1.")
    config = copy.deepcopy(config)
    config.model.roi.sampling_ratio = sampling_ratio
    return config


def resize_factor(original, canvas, max_size):
    """The factor that resizes an image of `original` (..., 2) (h, w) to fit both the
    experiment's `max_size` (long side, short side) and the (H, W) `canvas`; `original` is a
    NumPy array (the host helper) or a TF tensor (inside the graph)."""
    h, w = original[..., 0], original[..., 1]
    if isinstance(original, np.ndarray):
        stack, maximum, minimum, reduce_min = np.stack, np.maximum, np.minimum, np.min
    else:
        tf = _tf()
        stack, maximum, minimum, reduce_min = tf.stack, tf.maximum, tf.minimum, tf.reduce_min
    factors = stack([max_size[0] / maximum(h, w), max_size[1] / minimum(h, w),
                     canvas[0] / h, canvas[1] / w])
    return reduce_min(factors, axis=0)


def resized_size(original, canvas, max_size):
    """(h, w) of the resized image (rounded half up, as the data pipeline)."""
    factor = resize_factor(original, canvas, max_size)
    if isinstance(original, np.ndarray):
        return np.floor(original * factor[..., None] + 0.5)
    tf = _tf()
    return tf.floor(original * factor[..., None] + 0.5)


def _tf():
    import tensorflow as tf

    return tf


def _bilinear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights of a half-pixel bilinear resize (tf.image.resize, no
    antialiasing), so `letterbox` needs NumPy only."""
    coords = np.maximum((np.arange(target) + 0.5) * source / target - 0.5, 0.0)
    low = np.minimum(np.floor(coords).astype(int), source - 1)
    high = np.minimum(low + 1, source - 1)
    frac = coords - low
    weights = np.zeros((target, source))
    weights[np.arange(target), low] += 1.0 - frac
    weights[np.arange(target), high] += frac
    return weights


def letterbox(image: np.ndarray, canvas, max_size) -> tuple[np.ndarray, np.ndarray]:
    """`image` (h, w, 3) resized as the model's pipeline does (bilinear, rounded to integer
    levels) into a zero (H, W, 3) float32 canvas; returns (canvas, original size (2,))."""
    original = np.asarray(image.shape[:2], np.float32)
    new_h, new_w = (int(v) for v in resized_size(original, canvas, max_size))
    pixels = np.asarray(image, np.float64)
    resized = np.einsum("yh,hwc,xw->yxc", _bilinear_matrix(image.shape[0], new_h), pixels,
                        _bilinear_matrix(image.shape[1], new_w))
    out = np.zeros((*canvas, 3), np.float32)
    out[:new_h, :new_w] = np.round(np.clip(resized, 0.0, 255.0))
    return out, original


def paste_detections(outputs: dict, index: int, height: int, width: int,
                     threshold: float | None = 0.5) -> np.ndarray:
    """The masks of image `index` of the deployed graph's outputs pasted into its
    (height, width) original pixels: (num_detections, height, width)."""
    from keras_res2net.detection.ops.masks import paste_masks

    count = int(np.asarray(outputs["num_detections"])[index])
    return paste_masks(np.asarray(outputs["masks"])[index, :count],
                       np.asarray(outputs["boxes"])[index, :count], height, width, threshold)


def static_per_class_nms(boxes, scores, *, iou_threshold: float, score_threshold: float,
                         max_per_class: int, max_total: int,
                         max_candidates: int = MAX_CANDIDATES):
    """`ops.nms.per_class_nms` with static shapes and the runtimes' own NMS op (see the
    module doc). Boxes (B, N, K or 1, 4), scores (B, N, K); B, N and K must be static."""
    tf = _tf()
    if max_per_class < max_total:
        raise ValueError("the static NMS keeps the top max_total over all classes; it needs "
                         f"max_per_class ({max_per_class}) >= max_total ({max_total}).")
    batch, count, classes = (int(d) for d in scores.shape)
    boxes = tf.broadcast_to(tf.cast(boxes, tf.float32), (batch, count, classes, 4))
    boxes = tf.reshape(boxes, (batch, count * classes, 4))
    flat_scores = tf.reshape(tf.cast(scores, tf.float32), (batch, count * classes))
    labels = tf.constant(np.tile(np.arange(classes, dtype=np.int32), count))
    k = min(count * classes, max(count, max_candidates))
    top_scores, top_index = tf.math.top_k(flat_scores, k)
    results = []
    for b in range(batch):
        cand_boxes = tf.gather(boxes[b], top_index[b])
        cand_labels = tf.gather(labels, top_index[b])
        extent = tf.reduce_max(tf.abs(cand_boxes)) + 1.0
        shifted = cand_boxes / extent + 2.0 * tf.cast(cand_labels, tf.float32)[:, None]
        keep, valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=shifted, scores=top_scores[b], max_output_size=max_total,
            iou_threshold=iou_threshold, score_threshold=score_threshold,
            pad_to_max_output_size=True)
        present = tf.range(max_total) < valid
        weight = tf.cast(present, tf.float32)
        results.append((tf.gather(cand_boxes, keep) * weight[:, None],
                        tf.gather(top_scores[b], keep) * weight,
                        tf.where(present, tf.gather(cand_labels, keep), 0), valid))
    return tuple(tf.stack([r[i] for r in results]) for i in range(4))


@contextlib.contextmanager
def static_nms(max_candidates: int = MAX_CANDIDATES):
    """While tracing, the detector's NMS is `static_per_class_nms`."""
    import functools

    from keras_res2net.detection.modeling import detector

    original = detector.per_class_nms
    detector.per_class_nms = functools.partial(static_per_class_nms,
                                               max_candidates=max_candidates)
    try:
        yield
    finally:
        detector.per_class_nms = original


def check_input_size(input_size, divisor: int) -> None:
    """Refuse a canvas that is not a multiple of the backbone's stride (`divisor`)."""
    bad = [side for side in input_size if side % divisor or side < divisor]
    if bad:
        raise ValueError(f"input size {input_size[0]}x{input_size[1]}: each side must be a "
                         f"positive multiple of the backbone stride {divisor}.")


def default_input_size(config) -> tuple[int, int]:
    """The experiment's test size as a landscape canvas: short side x long side, each
    rounded up to the stride (COCO: 800 x 1344; the synthetic experiments: 128 x 128)."""
    long_side, short_side = config.data.max_size
    divisor = config.data.size_divisor
    return (math.ceil(short_side / divisor) * divisor, math.ceil(long_side / divisor) * divisor)


def _static_graph(model, config, input_size):
    """(detect, input signature): the static graph's Python function and its inputs."""
    tf = _tf()
    height, width = input_size
    check_input_size(input_size, config.data.size_divisor)
    max_size = config.data.max_size

    def detect(images, image_sizes):
        resized = resized_size(image_sizes, (height, width), max_size)
        outputs = model({"images": images, "image_sizes": resized}, training=False)
        scale = resized / image_sizes  # (h, w) factors
        factors = tf.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)
        result = {"boxes": outputs["boxes"] / factors[:, None, :],
                  "scores": outputs["scores"],
                  "classes": tf.cast(outputs["classes"], tf.int32),
                  "num_detections": tf.cast(outputs["num_detections"], tf.int32)}
        if "masks" in outputs:
            result["masks"] = outputs["masks"]
        return result

    spec = [tf.TensorSpec((1, height, width, 3), tf.float32, name="images"),
            tf.TensorSpec((1, 2), tf.float32, name="image_sizes")]
    return detect, spec


def deploy_function(model, config, input_size, max_candidates: int = MAX_CANDIDATES):
    """The static graph of `model` (built from `static_config(config)`): a `tf.function`
    from (images, image_sizes) to the padded detections (module doc), already traced with
    the static NMS (its fixed input signature makes every later use reuse that trace)."""
    tf = _tf()
    detect, spec = _static_graph(model, config, input_size)
    function = tf.function(detect, input_signature=spec, autograph=False)
    with static_nms(max_candidates):
        function.get_concrete_function()
    return function


def write_savedmodel(model, config, input_size, path: str,
                     max_candidates: int = MAX_CANDIDATES, function=None) -> None:
    """The static graph as a SavedModel (`serving_default`), written with Keras'
    `ExportArchive`: what the TFLite converter takes (it freezes the variables from there;
    converting the `tf.function` directly leaves them as uninitialised resource variables).

    `function`: the graph already traced by `deploy_function` (the exporter traces it once
    for ONNX and TFLite: tracing a detector takes seconds); None traces it here."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    with static_nms(max_candidates):
        if function is None:
            detect, spec = _static_graph(model, config, input_size)
            archive.add_endpoint("serving_default", detect, input_signature=spec)
        else:
            archive.add_endpoint("serving_default", function)
        archive.write_out(str(path), verbose=False)


def keras_reference(model, config, images: np.ndarray, originals: np.ndarray,
                    input_size) -> dict:
    """What the Keras `model` detects on letterboxed `images` (n, H, W, 3) of `originals`
    (n, 2) sizes, boxes in original pixels, through its own (combined) NMS: the check's
    ground truth. One image at a time, as the deployed graph."""
    outputs = []
    for image, original in zip(images, originals, strict=True):
        resized = resized_size(original[None], input_size, config.data.max_size)
        out = {k: np.asarray(v) for k, v in
               model({"images": image[None], "image_sizes": resized}, training=False).items()}
        scale = (resized / original[None])[0]
        out["boxes"] = out["boxes"] / np.array([scale[1], scale[0], scale[1], scale[0]])
        outputs.append(out)
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
