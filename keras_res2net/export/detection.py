"""`res2net-export --task detection`: the detector's SavedModel, checked like every artifact.

The trained detector (`detector.weights.h5` and the config of the run folder's
`experiment.json`, or of `--experiment` when it has none) is written with
`detection.export.export_saved_model` to a staging path (`verify.staged_path`), reloaded with
`tf.saved_model.load`, run on a few generated shapes images and compared with the Keras
model's own detections on the same images: equal detection counts, the classes of the
detections (agreement), the largest box coordinate difference, bounded as float32 artifacts
are (`verify.FLOAT_TOLERANCE` of the box scale), and the largest score and mask probability
differences (`verify.FLOAT_TOLERANCE`). Check images on which the model detects nothing prove
nothing: a check with no detection on any image fails and says so. Only a passing artifact is
moved to the output path; one report line, then the summary table, as for the classifiers.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from keras_res2net.export import verify
from keras_res2net.export.cli import Plan

CHECK_IMAGES = 3
MAX_CHECK_SIZE = 512  # check images are square, the experiment's short side up to this


def check_images(size: int, count: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """`count` generated shapes images (uint8, size x size), deterministic by `seed`."""
    from keras_res2net.detection.data.synthetic import make_image

    rng = np.random.default_rng(seed)
    return np.stack([make_image(rng, size, 4)[0] for _ in range(count)])


@dataclasses.dataclass
class DetectionComparison:
    """What the check measured over the valid detections of every check image."""

    box_diff: float = float("inf")  # max |diff| of box coordinates (pixels)
    score_diff: float = float("inf")  # max |diff| of scores
    mask_diff: float = 0.0  # max |diff| of mask probabilities (0 without masks)
    agreement: float = 0.0  # fraction of detections whose class is equal
    detections: int = 0  # valid detections compared, over all images
    problem: str = ""


def compare_detections(reference: dict, served: dict) -> DetectionComparison:
    """Compare the served detections with the model's: counts, classes, boxes, scores, masks.

    A comparison with no detection on any image compared nothing, so it is a problem, not a
    100% agreement: an artifact that returned nothing at all would pass it."""
    ref_count = np.asarray(reference["num_detections"]).astype(int)
    out_count = np.asarray(served["num_detections"]).astype(int)
    result = DetectionComparison()
    if not np.array_equal(ref_count, out_count):
        result.problem = (f"detection counts differ: {out_count.tolist()} vs the model's "
                          f"{ref_count.tolist()}")
        return result
    if set(served) != set(reference):
        result.problem = (f"outputs differ: {sorted(served)} vs the model's "
                          f"{sorted(reference)}")
        return result
    diffs = {"boxes": [0.0], "scores": [0.0], "masks": [0.0]}
    agree = 0
    for i, count in enumerate(ref_count):
        for key, values in diffs.items():
            if key not in reference:
                continue
            ref = np.asarray(reference[key], np.float32)[i, :count]
            out = np.asarray(served[key], np.float32)[i, :count]
            if not np.all(np.isfinite(out)):
                result.problem = f"non-finite {key}"
                return result
            if count:
                values.append(float(np.max(np.abs(out - ref))))
        agree += int(np.sum(np.asarray(served["classes"])[i, :count]
                            == np.asarray(reference["classes"])[i, :count]))
    result.detections = int(ref_count.sum())
    result.box_diff, result.score_diff, result.mask_diff = (
        max(diffs["boxes"]), max(diffs["scores"]), max(diffs["masks"]))
    if not result.detections:
        result.agreement = 0.0
        result.problem = (f"no detections on any of the {len(ref_count)} check images: "
                          "nothing was compared, so the artifact is not shown to detect "
                          "what the model detects")
        return result
    result.agreement = agree / result.detections
    return result


def run_exports(args: argparse.Namespace, plan: Plan) -> list[verify.CheckResult]:
    """Export and check the detection SavedModel; print its line and the summary table."""
    import tensorflow as tf

    from keras_res2net.detection import experiment_io
    from keras_res2net.detection.export import export_saved_model
    from keras_res2net.detection.task import DetectionTask

    # The config the weights were trained with (its --max_size sets the check images' size).
    config, weights = experiment_io.open_run(args.checkpoint, args.experiment)
    model = DetectionTask(config).build_model()
    model.load_weights(weights)
    size = min(min(config.data.max_size), MAX_CHECK_SIZE)
    divisor = config.data.size_divisor
    images = check_images(size)
    padded_size = -(-size // divisor) * divisor
    padded = np.zeros((len(images), padded_size, padded_size, 3), np.float32)
    padded[:, :size, :size] = images
    sizes = np.full((len(images), 2), size, np.float32)
    reference = {k: np.asarray(v) for k, v in
                 model({"images": padded, "image_sizes": sizes}, training=False).items()}
    outputs = ", ".join(sorted(reference))
    print(f"{plan.stem}: input uint8 RGB images (batch, height, width, 3), outputs "
          f"{outputs}; checked on {len(images)} generated {size}x{size} shapes images")
    path = plan.paths["savedmodel"]
    result = verify.CheckResult("savedmodel", path, agreement_name="class agreement")
    try:
        with verify.staged_path(path, args.force) as temp:
            export_saved_model(model, temp, size_divisor=divisor, verbose=False)
            result.size_bytes = verify.path_size(temp)
            serve = tf.saved_model.load(temp).signatures["serving_default"]

            def run(batch: np.ndarray) -> dict:
                return {k: v.numpy() for k, v in serve(images=tf.constant(batch)).items()}

            served = run(images)
            result.samples = len(images)
            found = compare_detections(reference, served)
            result.max_abs_diff, result.agreement = found.box_diff, found.agreement
            tolerance = verify.FLOAT_TOLERANCE * max(1.0, float(np.max(np.abs(
                reference["boxes"]))))
            result.bound = (f"boxes |diff| <= {tolerance:.1e}, scores"
                            f"{' and masks' if 'masks' in reference else ''} |diff| <= "
                            f"{verify.FLOAT_TOLERANCE:.0e}, classes equal")
            result.notes.append(
                f"{found.detections} detections compared: scores max|diff| "
                f"{found.score_diff:.2e}" + (f", masks max|diff| {found.mask_diff:.2e}"
                                             if "masks" in reference else ""))
            result.passed = (not found.problem and found.box_diff <= tolerance
                             and found.score_diff <= verify.FLOAT_TOLERANCE
                             and found.mask_diff <= verify.FLOAT_TOLERANCE
                             and found.agreement == 1.0)
            if not result.passed:
                result.error = ("check failed: "
                                + (found.problem or f"outside the bound {result.bound}"))
                raise verify.ExportError(result.error)
            if args.latency_runs:
                result.latency_ms = verify.median_latency_ms(run, images[:1],
                                                             args.latency_runs)
    except Exception as err:
        result.passed = False
        result.error = result.error or f"export failed: {type(err).__name__}: {err}"
        result.error += " (nothing written)"
    print(result.line())
    for note in result.notes:
        print(f"         {note}")
    print()
    print(verify.summary_table([result]))
    return [result]
