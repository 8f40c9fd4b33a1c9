"""Batch-1 latency of a detector in Keras, SavedModel, TFLite fp32/fp16 and onnxruntime.

Used by `benchmarks/export_latency.py --task detection`. Each static artifact is written with
the exporter's own functions and checked against the Keras detector first (matched counts,
classes and boxes, `detection.BOUNDS`): a latency for a wrong artifact means nothing. The
runtimes are then called in alternation (one call each per round, so a load change on the
machine hits all of them alike) and the median of each is reported.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from keras_res2net.detection import deploy, experiment_io
from keras_res2net.export import detection, detection_artifacts


def confident_run(folder, experiment: str = "mask_rcnn_res2net50_fpn_synthetic",
                  factor: float = 8.0, heads=None, post_nms_topk: int | None = None,
                  build_size: tuple[int, int] | None = None):
    """A run folder of `experiment` with seeded random weights whose class and mask logits
    are scaled by `factor`: an untrained detector with detections above the score threshold
    and well-separated scores, for checks and benchmarks without a training run. The model is
    built on one blank image of `build_size` (default: the experiment's test size)."""
    import keras

    from keras_res2net.detection import configs
    from keras_res2net.detection.task import DetectionTask

    config = configs.get_experiment(experiment)
    if heads is not None:
        config.model.heads = heads
    if post_nms_topk is not None:
        config.model.rpn.post_nms_topk = post_nms_topk
    keras.utils.set_random_seed(0)
    model = DetectionTask(config).build_model()
    size = build_size or deploy.default_input_size(config)
    model({"images": np.zeros((1, *size, 3), np.float32)})
    for layer in model._flatten_layers():
        if type(layer).__name__ in ("BoxHead", "MaskHead"):
            logits = layer.cls if hasattr(layer, "cls") else layer.logits
            logits.kernel.assign(logits.kernel * factor)
    os.makedirs(folder, exist_ok=True)
    model.save_weights(os.path.join(folder, experiment_io.WEIGHTS_FILE))
    experiment_io.save_experiment(config, folder, experiment)
    return folder


def alternating_medians(runners: dict, args: tuple, runs: int) -> dict:
    """Median ms per runner over `runs` rounds, each round calling every runner once."""
    for run in runners.values():
        run(*args)
        run(*args)
    times = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run(*args)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark(checkpoint, input_size=None, runs: int = 20,
              check_images: int = detection.CHECK_IMAGES) -> list[tuple]:
    """Rows (runtime, median ms, check text) for the run folder `checkpoint`: Keras (default
    and static settings), the static SavedModel, TFLite fp32/fp16 and onnxruntime fp32/fp16,
    each artifact checked first on `check_images` generated images."""
    import tensorflow as tf

    config, weights = experiment_io.open_run(checkpoint)
    static = deploy.static_config(config)
    input_size = tuple(input_size or deploy.default_input_size(config))
    model = detection.load_detector(static, weights)
    _, crops = detection.static_check_images(input_size, check_images)
    canvases, originals = detection.letterboxed(crops, input_size, config.data.max_size)
    reference = deploy.keras_reference(model, static, canvases, originals, input_size)
    default_model = detection.load_detector(config, weights)
    keras_call = tf.function(lambda images, sizes: default_model(
        {"images": images, "image_sizes": sizes}, training=False), autograph=False)
    static_call = deploy.deploy_function(model, static, input_size)
    runners = {
        "keras (default settings)": lambda image, original: keras_call(
            image, deploy.resized_size(original, input_size, config.data.max_size)),
        "keras static graph": lambda image, original: static_call(image, original),
    }
    checks = {name: "reference" if "static" in name else "-" for name in runners}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="res2net-bench-") as folder:
        saved = os.path.join(folder, "saved")
        deploy.write_savedmodel(model, static, input_size, saved)
        signature = tf.saved_model.load(saved).signatures["serving_default"]
        runners["savedmodel (static)"] = lambda image, original: signature(
            images=tf.constant(image), image_sizes=tf.constant(original))
        for name, quantize in (("tflite fp32", None), ("tflite fp16", "fp16")):
            path = os.path.join(folder, f"{name.replace(' ', '_')}.tflite")
            detection_artifacts.write_tflite(model, static, input_size, path, quantize)
            sizes[name] = os.path.getsize(path)
            runners[name] = detection_artifacts.load_tflite(path, input_size)
        for name, quantize in (("onnxruntime fp32", None), ("onnxruntime fp16", "fp16")):
            path = os.path.join(folder, f"{name.replace(' ', '_')}.onnx")
            detection_artifacts.write_onnx(model, static, input_size, path, quantize=quantize)
            sizes[name] = os.path.getsize(path)
            runners[name] = detection_artifacts.load_onnx(path)
        for name in list(runners)[2:]:
            served = detection.run_static(runners[name], canvases, originals)
            verdict = detection.judge_artifact(
                reference, {k: np.asarray(v) for k, v in served.items()}, originals,
                "fp16" if "fp16" in name else "float32", input_size, static.model.detection)
            size = f"{sizes[name] / 2**20:.1f} MiB, " if name in sizes else ""
            checks[name] = (f"{size}{'ok' if verdict.passed else 'FAILED'}: boxes "
                            f"{verdict.box_diff:.1e} px, {verdict.detections} detections "
                            f"matched" + (f" ({verdict.problem})" if verdict.problem else ""))
        medians = alternating_medians(runners, (canvases[:1], originals[:1]), runs)
    return [(name, medians[name], checks[name]) for name in runners]
