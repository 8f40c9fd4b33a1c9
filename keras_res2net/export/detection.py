"""`res2net-export --task detection`: the detector's artifacts, each checked like every export.

The trained detector (`detector.weights.h5` and the config of the run folder's
`experiment.json`, or of `--experiment` when it has none) is exported as:

- `savedmodel`: `detection.export.export_saved_model`, uint8 images of any size, the model's
  own test-time graph; compared in order with the model's detections (`compare_detections`),
  boxes within `verify.FLOAT_TOLERANCE` of the box scale, scores and masks within
  `verify.FLOAT_TOLERANCE`.
- `onnx`, `tflite`, `tensorrt`: the static graph of `detection.deploy` at `--input-size`
  (fixed proposals and detections, fixed-grid RoIAlign, the runtime's NMS op), run by
  onnxruntime / LiteRT on generated shapes images letterboxed into the canvas and compared
  with the Keras detector configured the same way (`deploy.static_config`): detections are
  matched one to one by box (`match_detections`), and the check needs equal counts, 100%
  class agreement, the box bound and the mask IoU bound of `BOUNDS`; fp16 artifacts (TFLite
  and ONNX `--quantize fp16`) are matched by class and IoU with near-tied scores excused
  (`detection_match`: every detection with a margin above the fp16 error must agree, the
  rest is bounded). The difference between
  that reference and the model's default test-time settings (mmcv's adaptive RoIAlign,
  combined NMS) is reported once. TensorRT: built where `tensorrt` and a GPU are present;
  otherwise the ONNX file is checked against the parser's op list and the `trtexec` command
  printed, and the line fails (no engine was written).

Check images on which the model detects nothing prove nothing: such a check fails. Every
artifact is written to a staging path (`verify.staged_path`) and only moved to its output
path once it passed; one report line per artifact, then the summary table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os

import numpy as np

from keras_res2net.export import detection_artifacts, detection_match, verify
from keras_res2net.export.plan import Plan

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



@dataclasses.dataclass(frozen=True)
class Bound:
    """What a static artifact must keep: boxes within `box_fraction` of the canvas' long side
    (pixels of the caller's image), scores within `score`, pasted masks (at 0.5) IoU >=
    `mask_iou`, and always equal counts and 100% class agreement."""

    box_fraction: float
    score: float
    mask_iou: float

    def describe(self, box_px: float) -> str:
        return (f"counts equal, classes 100%, boxes |diff| <= {box_px:.2g} px, scores "
                f"|diff| <= {self.score:g}, mask IoU >= {self.mask_iou:g}")


# float32: the same arithmetic in another order; box coordinates move by ~1e-5 of the image
# (measured: <= 2e-5 px on 128 px canvases), so 1e-4 of the canvas' long side (0.013 px at
# 128, 0.13 px at 1344) is a 5-100x margin and still far below a pixel. Scores: 1e-4 as every
# float32 export. Mask IoU 0.99: a probability within float error of 0.5 may flip a pixel.
# fp16 is judged by `detection_match.FP16_BOUND` (near-tied scores may swap in NMS).
BOUNDS = {"float32": Bound(1e-4, 1e-4, 0.99)}


@dataclasses.dataclass
class MatchResult:
    """Static artifact vs reference, detections matched one to one by box."""

    counts: tuple[list, list] = ((), ())
    box_diff: float = 0.0
    score_diff: float = 0.0
    mask_iou: float = 1.0
    agreement: float = 0.0
    detections: int = 0
    problem: str = ""


def match_detections(reference: dict, served: dict, originals: np.ndarray) -> MatchResult:
    """Match each image's detections one to one (least total box difference, Hungarian), then
    measure the largest box and score differences, the smallest IoU of the masks pasted into
    the original images (`deploy.paste_detections`) and the class agreement. Unequal counts
    are a problem; the matched part is still measured (to report a difference)."""
    from scipy.optimize import linear_sum_assignment

    ref_count = np.asarray(reference["num_detections"]).astype(int)
    out_count = np.asarray(served["num_detections"]).astype(int)
    result = MatchResult(counts=(out_count.tolist(), ref_count.tolist()))
    if not np.array_equal(ref_count, out_count):
        result.problem = (f"detection counts differ: {out_count.tolist()} vs the Keras "
                          f"detector's {ref_count.tolist()}")
    agree = matched = 0
    for i, (n_ref, n_out) in enumerate(zip(ref_count, out_count, strict=True)):
        ref_boxes = np.asarray(reference["boxes"], np.float64)[i, :n_ref]
        out_boxes = np.asarray(served["boxes"], np.float64)[i, :n_out]
        if not np.all(np.isfinite(out_boxes)):
            result.problem = "non-finite boxes"
            return result
        if not min(n_ref, n_out):
            continue
        cost = np.abs(ref_boxes[:, None] - out_boxes[None]).max(-1)
        rows, cols = linear_sum_assignment(cost)
        matched += len(rows)
        result.box_diff = max(result.box_diff, float(cost[rows, cols].max()))
        result.score_diff = max(result.score_diff, float(np.abs(
            np.asarray(reference["scores"])[i, rows] - np.asarray(served["scores"])[i, cols]
        ).max()))
        agree += int(np.sum(np.asarray(reference["classes"])[i, rows]
                            == np.asarray(served["classes"])[i, cols]))
        if "masks" in reference:
            height, width = (int(v) for v in originals[i])
            ref_masks = deploy_paste(reference, i, height, width)[rows]
            out_masks = deploy_paste(served, i, height, width)[cols]
            inter = np.logical_and(ref_masks, out_masks).sum((1, 2))
            union = np.logical_or(ref_masks, out_masks).sum((1, 2))
            iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
            result.mask_iou = min(result.mask_iou, float(iou.min()))
    result.detections = matched
    result.agreement = agree / matched if matched else 0.0
    if not matched and not result.problem:
        result.problem = (f"no detections on any of the {len(ref_count)} check images: "
                          "nothing was compared, so the artifact is not shown to detect "
                          "what the model detects")
    return result


def deploy_paste(outputs: dict, index: int, height: int, width: int) -> np.ndarray:
    from keras_res2net.detection.deploy import paste_detections

    return paste_detections(outputs, index, height, width).astype(bool)


def judge_static(found: MatchResult, kind: str, input_size) -> tuple[bool, str, float]:
    """(passed, bound text, box bound in pixels) of a float32 static artifact's `found`."""
    bound = BOUNDS[kind]
    box_px = bound.box_fraction * max(input_size)
    passed = (not found.problem and found.agreement == 1.0 and found.box_diff <= box_px
              and found.score_diff <= bound.score and found.mask_iou >= bound.mask_iou)
    return passed, bound.describe(box_px), box_px


@dataclasses.dataclass
class Verdict:
    """One static artifact's check: passed, the bound, the figures of the report line."""

    passed: bool
    bound: str
    box_diff: float
    agreement: float  # float32: class agreement of matched pairs; fp16: matched fraction
    detections: int
    note: str
    problem: str


def judge_artifact(reference: dict, served: dict, originals: np.ndarray, kind: str,
                   input_size, detection_config) -> Verdict:
    """float32: the strict match (`match_detections`, `BOUNDS`); fp16: matched by class and
    IoU with near-ties excused (`detection_match`)."""
    masks = "masks" in reference
    if kind == "fp16":
        bound = detection_match.FP16_BOUND
        found = detection_match.match_fp16(
            reference, served, originals, score_threshold=detection_config.score_threshold,
            nms_iou=detection_config.nms_iou, max_detections=detection_config.max_detections,
            bound=bound)
        note = (f"{found.matched} of {found.total} detections matched (class, IoU >= "
                f"{bound.match_iou:g}), {found.near_tied} near-tied, counts {found.counts[0]} "
                f"vs {found.counts[1]}: boxes max|diff| {found.box_diff:.2e} px "
                f"({found.box_relative:.1e} of the box), scores max|diff| "
                f"{found.score_diff:.2e}" + (f", mask IoU mean {found.mask_iou_mean:.4f} min "
                                             f"{found.mask_iou_min:.4f}" if masks else ""))
        return Verdict(not found.problem, bound.describe(), found.box_diff, found.fraction,
                       found.matched, note, found.problem)
    found = match_detections(reference, served, originals)
    passed, text, _ = judge_static(found, kind, input_size)
    note = (f"{found.detections} detections matched, counts {found.counts[0]}: scores "
            f"max|diff| {found.score_diff:.2e}"
            + (f", mask IoU min {found.mask_iou:.4f}" if masks else ""))
    return Verdict(passed, text, found.box_diff, found.agreement, found.detections, note,
                   found.problem or ("" if passed else f"outside the bound {text}"))


def static_check_images(input_size, count: int = CHECK_IMAGES) -> tuple[np.ndarray, list]:
    """Generated shapes images of three shapes (the canvas' short side square, wider, taller)
    letterboxed into the canvas: (canvases (n, H, W, 3), original sizes (n, 2)) and the raw
    images."""
    side = min(min(input_size), MAX_CHECK_SIZE)
    raw = check_images(side, max(count, CHECK_IMAGES))
    crops = [raw[0], raw[1][: side * 3 // 4], raw[2][:, : side * 3 // 4]][:count]
    return raw, crops


def letterboxed(crops, input_size, max_size) -> tuple[np.ndarray, np.ndarray]:
    from keras_res2net.detection.deploy import letterbox

    pairs = [letterbox(crop, input_size, max_size) for crop in crops]
    return (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))


def run_static(run, canvases: np.ndarray, originals: np.ndarray) -> dict:
    """The artifact's outputs on every image (one call each), stacked."""
    outputs = [run(canvases[i:i + 1], originals[i:i + 1]) for i in range(len(canvases))]
    return {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}


def check_static(result: verify.CheckResult, run, canvases, originals, reference: dict,
                 kind: str, input_size, latency_runs: int, detection_config) -> None:
    """Run, match and judge one static artifact; raises ExportError if it fails."""
    served = run_static(run, canvases, originals)
    result.samples = len(canvases)
    verdict = judge_artifact(reference, served, originals, kind, input_size, detection_config)
    result.max_abs_diff, result.agreement = verdict.box_diff, verdict.agreement
    result.passed, result.bound = verdict.passed, verdict.bound
    result.notes.append(verdict.note)
    if not result.passed:
        result.error = "check failed: " + verdict.problem
        raise verify.ExportError(result.error)
    if latency_runs:
        result.latency_ms = verify.median_latency_ms(
            lambda pair: run(*pair), (canvases[:1], originals[:1]), latency_runs)


def export_static(fmt: str, label: str, path: str, args, write, load, reference, canvases,
                  originals, kind: str, input_size, inspect=None,
                  detection_config=None) -> verify.CheckResult:
    """Stage, write, run, check one static artifact; move it into place only if it passed."""
    result = verify.CheckResult(label, path, agreement_name=(
        "matched (class, IoU)" if kind == "fp16" else "class agreement"))
    try:
        with verify.staged_path(path, args.force) as temp:
            write(temp)
            result.size_bytes = verify.path_size(temp)
            check_static(result, load(temp), canvases, originals, reference, kind,
                         input_size, args.latency_runs, detection_config)
            if inspect is not None:
                result.notes.extend(inspect(temp))
    except Exception as err:
        result.passed = False
        result.error = result.error or f"export failed: {type(err).__name__}: {err}"
        result.error += " (nothing written)"
    return result


def report(result: verify.CheckResult, results: list) -> verify.CheckResult:
    print(result.line())
    for note in result.notes:
        print(f"         {note}")
    results.append(result)
    return result


def run_exports(args: argparse.Namespace, plan: Plan) -> list[verify.CheckResult]:
    """Export and check every planned detector artifact; one line each, then the table."""
    results: list[verify.CheckResult] = []
    if "savedmodel" in plan.paths:
        report(export_savedmodel(args, plan), results)
    if set(plan.paths) - {"savedmodel"}:
        export_static_formats(args, plan, results)
    print()
    print(verify.summary_table(results))
    return results


def load_detector(config, weights):
    from keras_res2net.detection.task import DetectionTask

    model = DetectionTask(config).build_model()
    model.load_weights(weights)
    return model


def export_static_formats(args: argparse.Namespace, plan: Plan, results: list) -> None:
    """ONNX, TFLite and TensorRT of the static graph (`detection.deploy`)."""
    from keras_res2net.detection import deploy, experiment_io

    config, weights = experiment_io.open_run(args.checkpoint, args.experiment)
    static = deploy.static_config(config)
    model = load_detector(static, weights)
    input_size = plan.input_size
    _, crops = static_check_images(input_size)
    canvases, originals = letterboxed(crops, input_size, config.data.max_size)
    reference = deploy.keras_reference(model, static, canvases, originals, input_size)
    default = deploy.keras_reference(load_detector(config, weights), config, canvases,
                                     originals, input_size)
    shift = match_detections(default, reference, originals)
    outputs = ", ".join(sorted(reference))
    print(f"{plan.stem} static graph: inputs images (1, {input_size[0]}, {input_size[1]}, 3) "
          f"float32 RGB [0, 255] letterboxed, image_sizes (1, 2); outputs {outputs}; "
          f"RoIAlign sampling_ratio {static.model.roi.sampling_ratio}, "
          f"{static.model.rpn.post_nms_topk} proposals, "
          f"{static.model.detection.max_detections} detections; checked on {len(crops)} "
          f"generated shapes images of sizes "
          f"{', '.join(f'{int(h)}x{int(w)}' for h, w in originals)}")
    print(f"  vs the default test-time settings (RoIAlign sampling_ratio "
          f"{config.model.roi.sampling_ratio}, combined NMS): counts {shift.counts[0]} vs "
          f"{shift.counts[1]}, matched boxes max|diff| {shift.box_diff:.3g} px, class "
          f"agreement {shift.agreement:.2%}"
          + (f", mask IoU min {shift.mask_iou:.3f}" if "masks" in reference else ""))
    common = dict(reference=reference, canvases=canvases, originals=originals,
                  input_size=input_size, detection_config=static.model.detection)
    kind = "fp16" if args.quantize == "fp16" else "float32"
    onnx_outside: list = []

    @functools.cache
    def graph():
        """The static graph, traced once for every format (a detector takes seconds)."""
        return deploy.deploy_function(model, static, input_size)

    def inspect_onnx(path):
        lines, outside = detection_artifacts.inspect_onnx(path)
        onnx_outside[:] = outside
        return lines

    if "onnx" in plan.paths:
        report(export_static(
            "onnx", f"onnx {args.quantize or 'fp32'}", plan.paths["onnx"], args,
            lambda p: detection_artifacts.write_onnx(model, static, input_size, p, args.opset,
                                                     args.quantize, function=graph()),
            detection_artifacts.load_onnx, kind=kind, inspect=inspect_onnx, **common),
            results)
    if "tflite" in plan.paths:
        report(export_static(
            "tflite", f"tflite {args.quantize or 'fp32'}", plan.paths["tflite"], args,
            lambda p: detection_artifacts.write_tflite(model, static, input_size, p,
                                                       args.quantize, function=graph()),
            lambda p: detection_artifacts.load_tflite(p, input_size), kind=kind,
            inspect=tflite_notes, **common), results)
    if "tensorrt" in plan.paths:
        report(tensorrt_result(args, plan, results, onnx_outside), results)


def tflite_notes(path: str) -> list[str]:
    from keras_res2net.export import tflite

    return tflite.inspect_ops(path)


def tensorrt_result(args, plan: Plan, results: list, outside: list) -> verify.CheckResult:
    """The TensorRT line: the engine is built only where TensorRT and a GPU are; otherwise
    the checked ONNX file, its op check and the trtexec command that builds the engine."""
    from keras_res2net.export import tensorrt_engine

    precision = args.precision or "fp32"
    path, onnx_path = plan.paths["tensorrt"], plan.paths["onnx"]
    result = verify.CheckResult(f"tensorrt {precision}", path)
    onnx_ok = any(r.path == onnx_path and r.passed for r in results)
    if not onnx_ok:
        result.error = "engine not built: the ONNX export it builds from failed."
        return result
    if outside:
        result.error = (f"engine not built: the ONNX file holds ops outside the TensorRT "
                        f"parser's list ({', '.join(outside)}).")
        return result
    command = (f"trtexec --onnx={onnx_path} --saveEngine={path}"
               + (" --fp16" if precision == "fp16" else ""))
    reason = tensorrt_engine.unavailable_reason() or (
        "building the detector engine here is not implemented; use trtexec")
    result.error = (f"engine not built: TensorRT cannot build here ({reason}). The checked "
                    f"ONNX file {os.path.basename(onnx_path)} has only ops of the TensorRT "
                    f"ONNX parser (static shapes, so no optimisation profile); build the "
                    f"engine on the target with:\n           {command}")
    return result


def export_savedmodel(args: argparse.Namespace, plan: Plan) -> verify.CheckResult:
    """The dynamic SavedModel (any image size), checked in order against the model."""
    import tensorflow as tf

    from keras_res2net.detection import experiment_io
    from keras_res2net.detection.export import export_saved_model

    # The config the weights were trained with (its --max_size sets the check images' size).
    config, weights = experiment_io.open_run(args.checkpoint, args.experiment)
    model = load_detector(config, weights)
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
    return result
