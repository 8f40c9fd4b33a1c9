"""`res2net-export --task detection` to ONNX, TFLite and TensorRT: the static deploy graph.

The run folders hold a small synthetic detector (tiny heads, 30 proposals) made deliberately
confident: its class and mask logits are scaled up, so an untrained model has detections
above the score threshold with well-separated scores (near-equal scores would make the
comparison depend on tie-breaking, not on the artifact) and masks far from 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.detection import configs, deploy, experiment_io
from keras_res2net.detection.task import DetectionTask
from keras_res2net.export import cli

TINY_HEADS = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8, mask_convs=1)


def confident_run(folder, experiment: str = "mask_rcnn_res2net50_fpn_synthetic"):
    """A run folder (weights + experiment.json) of a small confident `experiment`."""
    from keras_res2net.export.detection_latency import confident_run as make

    return make(folder, experiment, heads=TINY_HEADS, post_nms_topk=30)


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    return confident_run(tmp_path_factory.mktemp("runs") / "mask")


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


def test_detector_exports_to_onnx_tflite_and_the_tensorrt_command(tmp_path, mask_run, capsys):
    out = tmp_path / "out"
    code = cli.main(["--task", "detection", "--checkpoint", str(mask_run), "--format", "onnx",
                     "tflite", "tensorrt", "--output", str(out), "--latency-runs", "1"])
    text = capsys.readouterr().out
    assert code == 1, text  # the engine cannot be built without TensorRT
    stem = "mask_rcnn_res2net50_fpn_synthetic_128x128"
    for label in ("onnx fp32", "tflite fp32"):
        line = next(x for x in text.splitlines() if x.startswith(f"[ok] {label}"))
        assert "class agreement 100.00% (3 images)" in line, line
    assert "NonMaxSuppression" in text and "NON_MAX_SUPPRESSION_V4" in text
    assert "TensorRT: all in the TensorRT ONNX parser's list" in text
    assert f"trtexec --onnx={out / stem}.onnx --saveEngine={out / stem}_fp32.engine" in text
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.onnx", f"{stem}_fp32.tflite"]
    # Independently of the CLI's verdict: each runtime against the Keras detector.
    config, weights = experiment_io.open_run(mask_run)
    static = deploy.static_config(config)
    model = DetectionTask(static).build_model()
    model.load_weights(weights)
    image = np.random.default_rng(3).integers(0, 256, (90, 120, 3), np.uint8)
    canvas, original = deploy.letterbox(image, (128, 128), config.data.max_size)
    want = deploy.keras_reference(model, static, canvas[None], original[None], (128, 128))
    count = int(want["num_detections"][0])
    assert count > 0
    import onnxruntime as ort

    from keras_res2net.export import tflite

    session = ort.InferenceSession(str(out / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(
        None, {"images": canvas[None], "image_sizes": original[None]}), strict=True))
    runner = tflite.interpreter_class()(model_path=str(out / f"{stem}_fp32.tflite"))
    tflite_out = runner.get_signature_runner()(images=canvas[None], image_sizes=original[None])
    for got in (onnx_out, tflite_out):
        assert int(got["num_detections"][0]) == count
        order = np.argsort(-want["scores"][0, :count])
        np.testing.assert_allclose(got["boxes"][0, :count], want["boxes"][0, order], atol=1e-3)
        np.testing.assert_array_equal(got["classes"][0, :count], want["classes"][0, order])
        masks = deploy.paste_detections(got, 0, 90, 120)
        assert masks.shape == (count, 90, 120) and masks.any()
        # boxes are in the caller's 90x120 pixels, not the 128x128 canvas
        assert got["boxes"][0, :count, [0, 2]].max() <= 120 + 1e-3
        assert got["boxes"][0, :count, [1, 3]].max() <= 90 + 1e-3


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "100x128"], "each side must be a positive multiple of the backbone "
                                  "stride 32"),
    (["--quantize", "int8"], "--quantize int8 is not offered for --task detection"),
    (["--format", "keras"], "--format keras does not apply to --task detection"),
    (["--nchw"], "--nchw do(es) not apply to --task detection"),
    (["--format", "onnx", "--quantize", "fp16"], "an fp16 ONNX detector computes box decoding"),
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
@pytest.mark.parametrize("experiment", [
    "faster_rcnn_res2net50_fpn_synthetic", "cascade_rcnn_res2net50_fpn_synthetic",
    "cascade_mask_rcnn_res2net50_fpn_synthetic", "htc_res2net50_fpn_synthetic"])
def test_every_architecture_exports_to_onnx_and_tflite(tmp_path, capsys, experiment):
    """Faster R-CNN, the cascades and HTC (semantic branch included) through the CLI: both
    static artifacts pass their checks (Mask R-CNN: the test above)."""
    run = confident_run(tmp_path / "run", experiment)
    code = cli.main(["--task", "detection", "--checkpoint", str(run), "--format", "onnx",
                     "tflite", "--output", str(tmp_path / "out"), "--latency-runs", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert text.count("class agreement 100.00% (3 images)") == 2, text
