"""Per-class NMS: suppression within a class only, score threshold, ordering."""

import numpy as np

from keras_res2net.detection.ops.nms import per_class_nms


def test_per_class_nms_by_hand():
    a = [0, 0, 10, 10]
    b = [1, 0, 11, 10]  # IoU 90/110 = 0.82 with a
    c = [50, 50, 60, 60]
    boxes = np.array([[[a, a], [b, b], [c, c]]], np.float32)  # (1, 3 boxes, 2 classes, 4)
    scores = np.array([[[0.9, 0.01], [0.8, 0.7], [0.6, 0.04]]], np.float32)
    out_boxes, out_scores, out_classes, valid = per_class_nms(
        boxes, scores, iou_threshold=0.5, score_threshold=0.05, max_per_class=10, max_total=5)
    # Class 0: a (0.9) suppresses b (0.8), c survives. Class 1: b (0.7) alone above 0.05.
    assert int(valid[0]) == 3
    np.testing.assert_allclose(np.asarray(out_scores)[0, :3], [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out_classes)[0, :3], [0, 1, 0])
    np.testing.assert_allclose(np.asarray(out_boxes)[0, :3], [a, b, c])
    np.testing.assert_allclose(np.asarray(out_scores)[0, 3:], 0.0)
