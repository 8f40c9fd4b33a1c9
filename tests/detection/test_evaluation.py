"""COCO evaluation of perfect and of shifted detections on generated shapes."""

import numpy as np
import pytest

from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.evaluation import CocoEvaluator


def _evaluate(shapes_val, shift: float):
    dataset = load_coco(*shapes_val)
    evaluator = CocoEvaluator(dataset.coco, dataset.category_ids)
    for record in dataset.records:
        boxes = record.boxes.copy()
        widths = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += shift * widths[:, None]
        evaluator.add(record.image_id, boxes, np.linspace(0.9, 0.5, len(boxes)),
                      record.classes, record.load_masks())
    return evaluator.evaluate(verbose=False)


def test_perfect_detections_score_one(shapes_val):
    metrics = _evaluate(shapes_val, 0.0)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AR100"] == pytest.approx(1.0)


def test_shifted_boxes_lose_the_strict_thresholds(shapes_val):
    # A horizontal shift of 0.23 widths leaves IoU 0.77 / 1.23 = 0.626: matched at IoU
    # thresholds 0.50, 0.55, 0.60 only, so AP = 3/10, AP50 = 1 and AP75 = 0.
    metrics = _evaluate(shapes_val, 0.23)["bbox"]
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)


@pytest.mark.parametrize("shift", [0.0, 0.23])
def test_faster_coco_eval_matches_pycocotools(shapes_val, shift):
    """The opt-in C++ evaluator gives the 12 numbers pycocotools gives (boxes and masks)."""
    import faster_coco_eval  # noqa: F401  (the `detection` extra, part of `test`: no skip)
    dataset = load_coco(*shapes_val)
    rng = np.random.default_rng(1)
    evaluators = {name: CocoEvaluator(dataset.coco, dataset.category_ids, evaluator=name)
                  for name in ("pycocotools", "faster")}
    for record in dataset.records:
        boxes = record.boxes.copy()
        widths = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += shift * widths[:, None]
        boxes += rng.normal(0, 1.5, boxes.shape)  # imperfect detections, varied IoUs
        masks = np.roll(record.load_masks(), int(round(shift * 10)), axis=2)
        scores = rng.uniform(0.1, 1.0, len(boxes))
        for evaluator in evaluators.values():
            evaluator.add(record.image_id, boxes, scores, record.classes, masks)
    expected = evaluators["pycocotools"].evaluate(verbose=False)
    got = evaluators["faster"].evaluate(verbose=False)
    assert expected["bbox"]["AP"] > 0.1  # not a degenerate comparison
    for iou_type in ("bbox", "segm"):
        for name, value in expected[iou_type].items():
            assert got[iou_type][name] == pytest.approx(value, abs=1e-6), (iou_type, name)


def test_unknown_evaluator_is_refused(shapes_val):
    dataset = load_coco(*shapes_val)
    with pytest.raises(ValueError, match="evaluator must be one of"):
        CocoEvaluator(dataset.coco, dataset.category_ids, evaluator="fast")
