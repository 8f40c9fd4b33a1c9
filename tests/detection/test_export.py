"""SavedModel export: the serving signature returns the model's detections."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.detection import configs
from keras_res2net.detection.export import export_saved_model
from keras_res2net.detection.task import DetectionTask
from keras_res2net.detection.trainer import WEIGHTS


def _trained_dir(tmp_path):
    """A model folder as train/coco.py leaves it (fresh weights of the synthetic experiment)."""
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    keras.utils.set_random_seed(0)
    model = DetectionTask(config).build_model()
    folder = tmp_path / "run"
    folder.mkdir()
    model.save_weights(folder / WEIGHTS)
    return folder


@pytest.mark.slow
def test_export_cli_writes_and_checks_the_detection_saved_model(tmp_path, capsys):
    """`res2net-export --format savedmodel` of the synthetic Mask R-CNN: the CLI's check
    passes, nothing is left staged, and the SavedModel serves the Keras model's detections
    (boxes, scores, classes and masks) on an image the signature has to pad."""
    from keras_res2net.export import cli

    checkpoint = _trained_dir(tmp_path)
    code = cli.main(["--task", "detection", "--experiment", "mask_rcnn_res2net50_fpn_synthetic",
                     "--checkpoint", str(checkpoint), "--format", "savedmodel", "--output",
                     str(tmp_path / "out"), "--latency-runs", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    index = next(i for i, text in enumerate(lines) if text.startswith("[ok] savedmodel"))
    assert "class agreement 100.00% (3 images)" in lines[index]
    assert "scores and masks |diff| <= 1e-04" in lines[index]
    compared = int(lines[index + 1].split()[0])  # "N detections compared: scores ..."
    assert compared > 0 and "masks max|diff|" in lines[index + 1], out
    path = tmp_path / "out" / "mask_rcnn_res2net50_fpn_synthetic_savedmodel"
    assert (path / "saved_model.pb").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]  # no staging left

    # Apart from the CLI's verdict: the signature pads an image of any size to the size
    # divisor and returns what the Keras detector returns on that padded image.
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    image = np.random.default_rng(0).integers(0, 256, (1, 70, 90, 3), dtype=np.uint8)
    served = serve(images=tf.constant(image))
    padded = np.zeros((1, 96, 96, 3), np.float32)
    padded[:, :70, :90] = image
    model = DetectionTask(configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
                          ).build_model()
    model.load_weights(checkpoint / WEIGHTS)
    expected = model({"images": padded, "image_sizes": np.array([[70.0, 90.0]])})
    assert set(served) == {"boxes", "scores", "classes", "num_detections", "masks"}
    assert served["masks"].shape == (1, 100, 28, 28)
    count = int(expected["num_detections"][0])
    assert count > 0, "no detections: the comparison below would compare padding only"
    for key in ("boxes", "scores", "classes", "num_detections", "masks"):
        np.testing.assert_allclose(served[key], expected[key], atol=1e-4, err_msg=key)
    # Real masks, not padding: probabilities that vary inside the detected boxes.
    assert np.ptp(np.asarray(served["masks"])[0, :count]) > 0.01


def test_export_cli_refuses_a_run_folder_without_weights(tmp_path, capsys):
    from keras_res2net.export import cli

    code = cli.main(["--task", "detection", "--experiment", "mask_rcnn_res2net50_fpn_synthetic",
                     "--checkpoint", str(tmp_path), "--format", "savedmodel", "onnx",
                     "--output", str(tmp_path / "out")])
    assert code == 2 and "no detector.weights.h5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_detections_reports_differences():
    from keras_res2net.export.detection import compare_detections

    masks = np.full((1, 2, 28, 28), 0.5, np.float32)
    reference = {"num_detections": np.array([2]), "boxes": np.array([[[0, 0, 10, 10],
                                                                       [5, 5, 8, 8.0]]]),
                 "classes": np.array([[1, 2]]), "scores": np.array([[0.9, 0.3]]),
                 "masks": masks}
    same = compare_detections(reference, reference)
    assert (same.box_diff, same.score_diff, same.mask_diff, same.agreement,
            same.detections, same.problem) == (0.0, 0.0, 0.0, 1.0, 2, "")
    moved = {**reference, "boxes": reference["boxes"] + [[[0, 0, 0, 0.5], [0, 0, 0, 0]]],
             "classes": np.array([[1, 3]]), "scores": np.array([[0.9, 0.55]]),
             "masks": masks + np.eye(28, dtype=np.float32) * 0.25}
    found = compare_detections(reference, moved)
    assert (found.box_diff, found.agreement, found.problem) == (0.5, 0.5, "")
    assert np.isclose(found.score_diff, 0.25) and np.isclose(found.mask_diff, 0.25)
    fewer = {**reference, "num_detections": np.array([1])}
    assert "detection counts differ" in compare_detections(reference, fewer).problem
    no_masks = {k: v for k, v in reference.items() if k != "masks"}
    assert "outputs differ" in compare_detections(reference, no_masks).problem


def test_compare_detections_refuses_an_empty_comparison():
    """No detections on any image is not 100% agreement: it compared nothing."""
    from keras_res2net.export.detection import compare_detections

    empty = {"num_detections": np.array([0, 0]), "boxes": np.zeros((2, 100, 4)),
             "classes": np.zeros((2, 100), int), "scores": np.zeros((2, 100))}
    found = compare_detections(empty, empty)
    assert found.detections == 0 and found.agreement == 0.0
    assert "no detections on any of the 2 check images" in found.problem


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [
    "cascade_rcnn_res2net101_fpn_coco", "htc_res2net101_fpn_coco"])
def test_cascade_and_htc_experiments_serve_detections(tmp_path, experiment):
    """The COCO experiments' heads as configured in structure (80 classes, three stages, 4
    mask convs, HTC's interleaved masks, mask information flow and 183-class semantic head):
    the cascade without masks and HTC with every branch, between them each part of the
    cascade serving graph (Cascade Mask R-CNN's masks are HTC's without the information flow;
    both are served in test_detection_export.py's static graphs; 50-70 s saved),
    narrowed to keep CI quick: a one-block-per-stage backbone, a 32-wide FPN and mask head,
    64-wide FCs and 100 proposals instead of 1000. At the configured widths (256, 1024) each
    experiment wrote and reloaded a SavedModel of ~160 MB (three stages' 12.8M-weight fc1);
    the serving graph is the same code at any width.

    Untrained 80-class heads score every class near 1/81, below the experiments' 0.05 score
    threshold: the threshold is lowered so that there are detections to compare (with none,
    empty outputs on both sides would be "equal"). Their near-equal scores may order two
    detections differently in the two graphs, so detections are matched by class and box."""
    config = configs.get_experiment(experiment)
    config.model.detection.score_threshold = 0.001
    config.model.backbone = dataclasses.replace(config.model.backbone, layers=(1, 1, 1, 1),
                                                base_width=8)
    config.model.rpn.post_nms_topk = 100
    config.model.heads = dataclasses.replace(config.model.heads, fpn_channels=32, fc_dim=64,
                                             mask_channels=32)
    keras.utils.set_random_seed(0)
    model = DetectionTask(config).build_model()
    export_saved_model(model, tmp_path / "saved", verbose=False)
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    image = np.random.default_rng(1).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    served = serve(images=tf.constant(image))
    expected = model({"images": np.pad(image, [(0, 0), (0, 0), (0, 16), (0, 0)]).astype(
        np.float32), "image_sizes": np.array([[64.0, 80.0]] * 2)})
    keys = {"boxes", "scores", "classes", "num_detections"}
    assert set(served) == (keys if experiment.startswith("cascade_rcnn") else keys | {"masks"})
    assert np.all(np.asarray(expected["num_detections"]) > 0), expected["num_detections"]
    np.testing.assert_array_equal(served["num_detections"], expected["num_detections"])
    for i, count in enumerate(np.asarray(expected["num_detections"]).astype(int)):
        order = _match(served, expected, i, count)
        for key in sorted(set(served) - {"num_detections"}):  # scores and masks too
            np.testing.assert_allclose(np.asarray(served[key])[i, :count],
                                       np.asarray(expected[key])[i, order], atol=1e-4,
                                       err_msg=key)


def _match(served, expected, i: int, count: int) -> np.ndarray:
    """For image i, the index of the expected detection each served one is (same class,
    boxes within 1e-3 px): a permutation of range(count), or the test fails."""
    got = np.asarray(served["boxes"])[i, :count]
    want = np.asarray(expected["boxes"])[i, :count]
    cost = np.abs(got[:, None] - want[None]).max(-1)
    same_class = (np.asarray(served["classes"])[i, :count, None]
                  == np.asarray(expected["classes"])[i, None, :count])
    cost = np.where(same_class, cost, np.inf)
    order = cost.argmin(1)
    assert sorted(order.tolist()) == list(range(count)), "detections do not match one to one"
    assert cost[np.arange(count), order].max() <= 1e-3, cost[np.arange(count), order].max()
    return order
