"""`res2net-export --task detection` to ONNX, TFLite and TensorRT: the static deploy graph.

The run folders hold synthetic detectors made deliberately confident: their class and mask
logits are scaled up, so an untrained model has detections above the score threshold with
well-separated scores (near-equal scores would make the float32 comparison depend on
tie-breaking, not on the artifact) and masks far from 0.5. Most tests use tiny heads (FPN 16,
FC 32, 30 proposals); one export (`mask_export`, at a non-default 96x128 canvas) is shared by
the tests that read it, the architecture sweep runs at 128x128, and the fp16 test keeps the full
synthetic Mask R-CNN, on which a float32-style check of fp16 failed.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.detection import configs, deploy, experiment_io
from keras_res2net.detection.task import DetectionTask
from keras_res2net.export import cli

TINY_HEADS = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8, mask_convs=1)
CANVAS = (96, 128)  # not the synthetic experiments' default 128x128, and not square


def confident_run(folder, experiment: str = "mask_rcnn_res2net50_fpn_synthetic",
                  heads=TINY_HEADS, post_nms_topk: int | None = 30):
    """A run folder (weights + experiment.json) of a confident `experiment`."""
    from keras_res2net.export.detection_latency import confident_run as make

    return make(folder, experiment, heads=heads, post_nms_topk=post_nms_topk)


def export(argv: list[str]) -> tuple[int, str]:
    """(exit status, stdout) of `res2net-export --task detection ARGV`."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = cli.main(["--task", "detection", *argv])
    return code, text.getvalue()


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    return confident_run(tmp_path_factory.mktemp("runs") / "mask")


@pytest.fixture(scope="module")
def mask_export(tmp_path_factory, mask_run):
    """One export of the tiny Mask R-CNN to ONNX, TFLite and the TensorRT command at the
    96x128 canvas: (output folder, exit status, report)."""
    out = tmp_path_factory.mktemp("export") / "out"
    code, text = export(["--checkpoint", str(mask_run), "--format", "onnx", "tflite",
                         "tensorrt", "--input-size", "96x128", "--output", str(out),
                         "--latency-runs", "1"])
    return out, code, text


def load_static(run):
    """(config, static config, the Keras detector built with the static settings)."""
    config, weights = experiment_io.open_run(run)
    static = deploy.static_config(config)
    model = DetectionTask(static).build_model()
    model.load_weights(weights)
    return config, static, model


def test_static_nms_equals_combined_nms():
    """The runtimes' NMS (class offsets, NonMaxSuppressionV4) keeps what TF's combined NMS
    keeps, for per-class boxes and for the RPN's one-box-many-levels layout."""
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 100, (2, 60, 3, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 50, (2, 60, 3, 2))], -1)
    scores = rng.uniform(0, 1, (2, 60, 3))
    for box_input in (boxes, boxes[:, :, :1]):
        want = tf.image.combined_non_max_suppression(
            box_input.astype(np.float32), scores.astype(np.float32), 25, 25, 0.5, 0.3,
            clip_boxes=False)
        got = deploy.static_per_class_nms(
            tf.constant(box_input, tf.float32), tf.constant(scores, tf.float32),
            iou_threshold=0.5, score_threshold=0.3, max_per_class=25, max_total=25)
        np.testing.assert_array_equal(got[3], want.valid_detections)
        np.testing.assert_allclose(got[0], want.nmsed_boxes, atol=1e-5)
        np.testing.assert_allclose(got[1], want.nmsed_scores, atol=1e-7)
        np.testing.assert_array_equal(got[2], want.nmsed_classes)


def test_letterbox_resizes_as_the_data_pipeline():
    from keras_res2net.detection.data.pipeline import resize_and_pad

    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
    canvas, original = deploy.letterbox(image, (128, 128), (128, 128))
    example = {"image": image, "boxes": np.zeros((0, 4), np.float32),
               "classes": np.zeros((0,), np.int32), "masks": np.zeros((0, 50, 70), np.uint8),
               "image_id": np.int64(0)}
    want = resize_and_pad(example, (128, 128), 32, None)
    np.testing.assert_array_equal(original, [50, 70])
    np.testing.assert_array_equal(deploy.resized_size(original, (128, 128), (128, 128)),
                                  want["image_sizes"])
    padded = want["images"].numpy()  # 91x128 padded to 96x128; the canvas is 128x128
    np.testing.assert_allclose(canvas[:96], padded, atol=1.0)  # rounding of .5 levels
    assert np.mean(canvas[:96] != padded) < 0.01 and not canvas[96:].any()


@pytest.mark.slow
def test_detector_exports_to_onnx_tflite_and_the_tensorrt_command(mask_export):
    out, code, text = mask_export
    assert code == 1, text  # the engine cannot be built without TensorRT
    stem = "mask_rcnn_res2net50_fpn_synthetic_96x128"
    for label in ("onnx fp32", "tflite fp32"):
        line = next(x for x in text.splitlines() if x.startswith(f"[ok] {label}"))
        assert "class agreement 100.00% (3 images)" in line, line
    assert "inputs images (1, 96, 128, 3)" in text
    assert "NonMaxSuppression" in text and "NON_MAX_SUPPRESSION_V4" in text
    assert "TensorRT: all in the TensorRT ONNX parser's list" in text
    assert f"trtexec --onnx={out / stem}.onnx --saveEngine={out / stem}_fp32.engine" in text
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.onnx", f"{stem}_fp32.tflite"]


def run_artifacts(out, stem: str, canvas, original) -> dict:
    """Each written artifact run by its own runtime on one letterboxed image."""
    import onnxruntime as ort

    from keras_res2net.export import tflite

    session = ort.InferenceSession(str(out / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(
        None, {"images": canvas[None], "image_sizes": original[None]}), strict=True))
    runner = tflite.interpreter_class()(model_path=str(out / f"{stem}_fp32.tflite"))
    tflite_out = runner.get_signature_runner()(images=canvas[None], image_sizes=original[None])
    return {"onnx": onnx_out, "tflite": tflite_out}


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(120, 70), (45, 200)])
def test_static_artifacts_return_boxes_in_the_callers_pixels(mask_export, mask_run, height,
                                                             width):
    """Exported at 96x128 (not the default), fed a portrait and a wide image of other sizes:
    the boxes come back in the caller's pixels, equal to the Keras detector's boxes on the
    same resized image divided by the resize factor computed here by hand."""
    out, _, _ = mask_export
    config, static, model = load_static(mask_run)
    image = np.random.default_rng(3).integers(0, 256, (height, width, 3), np.uint8)
    canvas, original = deploy.letterbox(image, CANVAS, config.data.max_size)
    # the data pipeline's rule: long side <= 128, short side <= 128, and inside the canvas
    factor = min(128 / max(height, width), 128 / min(height, width), 96 / height, 128 / width)
    resized = np.floor(np.array([height, width]) * factor + 0.5)
    np.testing.assert_array_equal(deploy.resized_size(original, CANVAS, config.data.max_size),
                                  resized)
    # the Keras detector (its own combined NMS) on the canvas, boxes in the canvas' pixels
    raw = model({"images": canvas[None], "image_sizes": resized[None].astype(np.float32)},
                training=False)
    count = int(raw["num_detections"][0])
    assert count > 0
    order = np.argsort(-np.asarray(raw["scores"][0, :count]), kind="stable")
    scale = np.array([resized[1] / width, resized[0] / height] * 2)
    want = np.asarray(raw["boxes"][0, :count])[order] / scale
    for name, got in run_artifacts(out, "mask_rcnn_res2net50_fpn_synthetic_96x128", canvas,
                                   original).items():
        assert int(got["num_detections"][0]) == count, name
        np.testing.assert_allclose(got["boxes"][0, :count], want, atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(got["classes"][0, :count],
                                      np.asarray(raw["classes"][0, :count])[order])
        assert got["boxes"][0, :count, [0, 2]].max() <= width + 1e-3, name
        assert got["boxes"][0, :count, [1, 3]].max() <= height + 1e-3, name
        masks = deploy.paste_detections(got, 0, height, width)
        assert masks.shape == (count, height, width) and masks.any()


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "100x128"], "each side must be a positive multiple of the backbone "
                                  "stride 32"),
    (["--quantize", "int8"], "--quantize int8 is not offered for --task detection"),
    (["--format", "keras"], "--format keras does not apply to --task detection"),
    (["--nchw"], "--nchw do(es) not apply to --task detection"),
    (["--format", "savedmodel", "--quantize", "fp16"],
     "--quantize fp16 applies to --format tflite or onnx for detectors"),
])
def test_bad_detection_options_exit_2_before_any_work(tmp_path, mask_run, capsys, argv,
                                                       message):
    base = ["--task", "detection", "--checkpoint", str(mask_run), "--output",
            str(tmp_path / "out")]
    if "--format" not in argv:
        base += ["--format", "tflite", "onnx"]
    assert cli.main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_folder_without_weights_or_experiment_exits_2(tmp_path, mask_run, capsys):
    no_json = tmp_path / "no_json"
    no_json.mkdir()
    (no_json / "detector.weights.h5").write_bytes(
        (mask_run / "detector.weights.h5").read_bytes())
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "experiment.json").write_bytes((mask_run / "experiment.json").read_bytes())
    for folder, message in ((no_json, "pass --experiment NAME"),
                            (no_weights, "no detector.weights.h5")):
        code = cli.main(["--task", "detection", "--checkpoint", str(folder), "--format",
                         "onnx", "--output", str(tmp_path / "out")])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_check_removes_the_artifact(tmp_path):
    """An artifact whose boxes are 1 px off fails its check and is not left anywhere; the
    same artifact without the shift passes and is moved into place."""
    import argparse

    from keras_res2net.export import detection

    boxes = np.array([[[10, 10, 40, 30], [50, 60, 90, 100.0]]], np.float32)
    reference = {"boxes": boxes, "scores": np.array([[0.9, 0.6]], np.float32),
                 "classes": np.array([[2, 1]], np.int32), "num_detections": np.array([2])}
    canvases = np.zeros((1, 128, 128, 3), np.float32)
    originals = np.array([[128.0, 128.0]], np.float32)
    args = argparse.Namespace(force=False, latency_runs=1)

    def export(shift: float, name: str):
        def write(path):
            with open(path, "wb") as handle:
                handle.write(b"artifact")

        def load(path):
            assert open(path, "rb").read() == b"artifact"  # runs the staged file
            return lambda image, original: {**reference, "boxes": boxes + shift}

        return detection.export_static(
            "onnx", "onnx fp32", str(tmp_path / name), args, write, load, reference, canvases,
            originals, "float32", (128, 128))

    failed = export(1.0, "bad.onnx")
    assert not failed.passed and failed.max_abs_diff == 1.0
    assert "outside the bound" in failed.error and "(nothing written)" in failed.error
    passed = export(0.0, "good.onnx")
    assert passed.passed and passed.agreement == 1.0, passed.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx"]


def test_match_detections_pairs_by_box_and_measures_masks():
    """Order does not matter, a class change does, and masks are compared once pasted."""
    from keras_res2net.export.detection import match_detections

    masks = np.zeros((1, 2, 28, 28), np.float32)
    masks[0, 0, :, :14] = 1.0  # left half of box 0
    masks[0, 1] = 1.0
    reference = {"boxes": np.array([[[0, 0, 20, 20], [30, 30, 60, 50.0]]]),
                 "scores": np.array([[0.9, 0.8]]), "classes": np.array([[1, 2]]),
                 "num_detections": np.array([2]), "masks": masks}
    swapped = {k: (v[:, ::-1] if k != "num_detections" else v) for k, v in reference.items()}
    same = match_detections(reference, swapped, np.array([[64, 64]]))
    assert (same.box_diff, same.agreement, same.mask_iou, same.problem) == (0.0, 1.0, 1.0, "")
    other = {**swapped, "classes": np.array([[2, 2]]), "masks": np.ones_like(masks)}
    found = match_detections(reference, other, np.array([[64, 64]]))
    assert found.agreement == 0.5 and 0.45 < found.mask_iou < 0.55  # half of box 0's mask
    fewer = match_detections(reference, {**reference, "num_detections": np.array([1])},
                             np.array([[64, 64]]))
    assert "detection counts differ" in fewer.problem


@pytest.mark.slow
@pytest.mark.parametrize("experiment, formats", [
    ("cascade_rcnn_res2net50_fpn_synthetic", ["tflite"]),
    ("cascade_mask_rcnn_res2net50_fpn_synthetic", ["onnx"]),
    ("htc_res2net50_fpn_synthetic", ["onnx", "tflite"])])
def test_cascades_and_htc_export_to_onnx_and_tflite(tmp_path, experiment, formats):
    """The cascades and HTC (semantic branch included) through the CLI at the experiments'
    128x128 canvas: the static artifacts pass their checks. With Mask R-CNN on both runtimes
    (the tests above), each runtime runs a two-stage and a cascade graph (ONNX: Cascade Mask
    R-CNN; TFLite: Cascade R-CNN, the graph without masks), plus HTC on both: its semantic
    branch (upsampling, its RoI features) is in no other graph. Faster R-CNN's graph is Mask
    R-CNN's without the mask branch, so it is not exported again here (35 s). Not 64x64:
    there the 30 proposals' ~70 detections per image crowd into near-ties that each runtime
    breaks differently (CI failed all four with counts off by one)."""
    run = confident_run(tmp_path / "run", experiment)
    code, text = export(["--checkpoint", str(run), "--format", *formats, "--output",
                         str(tmp_path / "out"), "--latency-runs", "0"])
    assert code == 0, text
    assert text.count("class agreement 100.00% (3 images)") == len(formats), text


def test_fp16_match_excuses_near_ties_and_nothing_else():
    """The fp16 check (`detection_match`): reordering and fp16-sized moves pass; an NMS swap
    of two overlapping boxes passes only when their scores are within the fp16 error (and
    lets through the box the lost one had suppressed); a confident detection lost, or every
    box scaled by 1.1 (a wrong resize factor), fails; so do too many excused changes."""
    from keras_res2net.export.detection_match import Fp16Bound, match_fp16

    def outputs(boxes, scores, classes):
        return {"boxes": np.array([boxes], np.float32), "scores": np.array([scores], np.float32),
                "classes": np.array([classes], np.int32), "num_detections": np.array([len(boxes)])}

    reference = outputs([[10, 10, 50, 40], [60, 60, 100, 110], [0, 70, 30, 100]],
                        [0.9, 0.7, 0.3], [1, 2, 1])
    originals = np.array([[128, 128]])

    loose = Fp16Bound(matched_fraction=0.5)  # few detections here: one swap is 25%

    def check(served, bound=loose):
        return match_fp16(reference, served, originals, score_threshold=0.05, nms_iou=0.5,
                          max_detections=100, bound=bound)

    moved = outputs([[0, 70.2, 30, 100], [10.1, 10, 50, 40], [60, 60, 100, 110.1]],
                    [0.305, 0.9, 0.69], [1, 1, 2])
    assert check(moved).problem == "" and check(moved).matched == 3
    # box 1 (IoU 0.67 with its swap) and what it had suppressed (IoU 0.58 with box 1, 0.36
    # with the swap) now kept
    swapped = outputs([[10, 10, 50, 40], [60, 70, 100, 120], [0, 70, 30, 100],
                       [60, 50, 100, 95]], [0.9, 0.705, 0.3, 0.4], [1, 2, 1, 2])
    found = check(swapped)
    assert found.problem == "" and (found.matched, found.total, found.near_tied) == (2, 4, 3)
    assert check(swapped, Fp16Bound()).problem == "only 2 of 4 detections matched"
    clear = {**swapped, "scores": np.array([[0.9, 0.6, 0.3, 0.4]], np.float32)}
    assert "class 2 score 0.700 box (60, 60, 100, 110) has no counterpart" in check(
        clear).problem
    assert "has no counterpart" in check(outputs([[10, 10, 50, 40], [60, 60, 100, 110]],
                                                 [0.9, 0.7], [1, 2])).problem
    barely = outputs([[10, 10, 50, 40], [60, 60, 100, 110]], [0.9, 0.7], [1, 2])
    near_threshold = {**reference, "scores": np.array([[0.9, 0.7, 0.06]], np.float32)}
    assert match_fp16(near_threshold, barely, originals, score_threshold=0.05, nms_iou=0.5,
                      max_detections=100, bound=loose).problem == ""
    # each scaled box looks like an equal-score NMS swap (so is excused alone); together
    # they are caught by the matched fraction
    scaled = {**reference, "boxes": reference["boxes"] * 1.1}
    assert check(scaled).problem == "only 0 of 3 detections matched"


@pytest.mark.slow
def test_fp16_tflite_and_onnx_pass_on_the_full_synthetic_mask_rcnn(tmp_path):
    """The full synthetic Mask R-CNN (FPN 64, FC 256, 100 proposals), on which fp16 TFLite
    failed the float32-style check (a near-tied NMS swap): both fp16 artifacts pass the fp16
    check; the ONNX file holds float16 convolution weights, each only cast back to float32
    (float32 arithmetic); and, apart
    from the CLI's verdict, >= 90% of the Keras detector's detections have a same-class
    artifact box at IoU >= 0.9 on a new image."""
    import onnx
    import onnxruntime as ort

    from keras_res2net.export import detection_match, tflite

    run = confident_run(tmp_path / "run", heads=None, post_nms_topk=None)
    out = tmp_path / "out"
    code, text = export(["--checkpoint", str(run), "--format", "onnx", "tflite", "--quantize",
                         "fp16", "--output", str(out), "--latency-runs", "0"])
    assert code == 0, text
    for label in ("onnx fp16", "tflite fp16"):
        assert any(x.startswith(f"[ok] {label}") for x in text.splitlines()), text
    stem = "mask_rcnn_res2net50_fpn_synthetic_128x128"
    proto = onnx.load(str(out / f"{stem}_fp16.onnx"))
    types = {t.name: t.data_type for t in proto.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Cast"}
    conv_weights = [types.get(casts.get(n.input[1])) for n in proto.graph.node
                    if n.op_type == "Conv"]
    assert conv_weights and set(conv_weights) == {onnx.TensorProto.FLOAT16}
    half = {name for name, kind in types.items() if kind == onnx.TensorProto.FLOAT16}
    assert all(n.op_type == "Cast" for n in proto.graph.node if set(n.input) & half)

    config, static, model = load_static(run)
    image = np.random.default_rng(5).integers(0, 256, (100, 128, 3), np.uint8)
    canvas, original = deploy.letterbox(image, (128, 128), config.data.max_size)
    want = deploy.keras_reference(model, static, canvas[None], original[None], (128, 128))
    count = int(want["num_detections"][0])
    assert count > 0
    session = ort.InferenceSession(str(out / f"{stem}_fp16.onnx"),
                                   providers=["CPUExecutionProvider"])
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(
        None, {"images": canvas[None], "image_sizes": original[None]}), strict=True))
    runner = tflite.interpreter_class()(model_path=str(out / f"{stem}_fp16.tflite"))
    tflite_out = runner.get_signature_runner()(images=canvas[None], image_sizes=original[None])
    for got in (onnx_out, tflite_out):
        n = int(got["num_detections"][0])
        iou = detection_match.box_iou(want["boxes"][0, :count], got["boxes"][0, :n])
        same = want["classes"][0, :count, None] == got["classes"][0, None, :n]
        assert np.mean((iou * same).max(1) >= 0.9) >= 0.9
