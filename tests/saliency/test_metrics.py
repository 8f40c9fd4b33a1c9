"""The field's metrics (pysodmetrics through `SaliencyMetrics`) against hand computations on
4x4 masks, and the field's conventions: 8-bit maps min-max normalised, binary masks."""

from __future__ import annotations

import numpy as np
import pytest

from keras_res2net.saliency.metrics import SaliencyMetrics, evaluate_maps

BETA2 = 0.3


def f_measure(precision: float, recall: float) -> float:
    return (1 + BETA2) * precision * recall / (BETA2 * precision + recall)


def test_binary_map_against_hand_computation():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255  # 4 salient pixels
    prediction = np.zeros((4, 4))
    prediction[:2, :3] = 1.0  # 6 predicted: the 4, and 2 false positives
    result = evaluate_maps([prediction], [mask])
    assert result["MAE"] == pytest.approx(2 / 16)
    # Every threshold above 0 sees P = 4/6, R = 1; the threshold 0 calls all 16 salient.
    above_zero, at_zero = f_measure(4 / 6, 1.0), f_measure(4 / 16, 1.0)
    assert result["maxF"] == pytest.approx(above_zero)
    assert result["meanF"] == pytest.approx((255 * above_zero + at_zero) / 256)


def test_empty_mask_structure_and_alignment_against_hand_computation():
    """Without salient pixels, S = 1 - mean(map) and E counts the pixels called background
    over (n - 1): 12 of 16 here, at every threshold but 0 (which calls all salient)."""
    prediction = np.zeros((4, 4))
    prediction[0] = 1.0
    result = evaluate_maps([prediction], [np.zeros((4, 4), bool)])
    assert result["Sm"] == pytest.approx(1 - 4 / 16)
    assert result["maxEm"] == pytest.approx(12 / 15)
    assert result["meanEm"] == pytest.approx(255 * (12 / 15) / 256)


def test_maps_are_min_max_normalised_and_masks_binarised_as_the_field_does():
    """A map of 0.2 / 0.6 exactly where a soft mask is >= 0.5 scores perfectly: the map is
    stretched to 0..1 (MATLAB's mapminmax) and the mask binarised at 0.5."""
    soft_mask = np.full((4, 4), 0.3)
    soft_mask[1:3, 1:3] = 0.7
    prediction = np.where(soft_mask >= 0.5, 0.6, 0.2)
    metrics = SaliencyMetrics()
    metrics.add(prediction[..., None], soft_mask)
    result = metrics.results()
    assert result["MAE"] == pytest.approx(0.0)
    assert result["maxF"] == pytest.approx(1.0)
    assert result["Sm"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in size"):
        metrics.add(prediction, np.zeros((5, 4)))
