"""The detector with its backbone BatchNorm folded: same detections, and its bad input.

A tiny synthetic Mask R-CNN (R2-50 v1b with one block per stage, narrow heads, 64 px),
seeded, with randomised backbone BN statistics and affine terms (fresh ones are the identity,
which a fold that dropped the shift would still pass), so that it has confident detections
(scores up to 0.93) to compare.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_res2net.detection.fold import fold_detector

SIZE = 64
# Folded vs plain in float32, measured on this model: boxes 1.1e-3 px (64 px image, large
# activations from the random weights), scores 1e-5, mask probabilities 7e-5.
BOX_BOUND_PX = 5e-3
SCORE_BOUND = 1e-4
MASK_BOUND = 1e-3
LOGIT_FACTOR = 0.1  # class and mask logits: distinct scores up to 0.93, none saturated


def batchnorms(model: keras.Model) -> int:
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def tiny_detector(factor: float = LOGIT_FACTOR) -> keras.Model:
    """The tiny Mask R-CNN: every weight drawn from a seeded NumPy generator (the heads'
    module-level initialisers are seeded at import, not by set_random_seed), the backbone BN
    statistics and affine terms randomised, class and mask logits scaled by `factor`."""
    from keras_res2net.detection import configs
    from keras_res2net.detection.task import DetectionTask

    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    config.model.heads = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8,
                                            mask_convs=1)
    config.model.rpn.post_nms_topk = 30
    config.data.max_size = (SIZE, SIZE)
    model = DetectionTask(config).build_model()
    rng = np.random.default_rng(0)
    for weight in model.weights:  # He-normal kernels, zero biases
        if len(weight.shape) >= 2:
            fan_in = int(np.prod(weight.shape[:-1]))
            weight.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), weight.shape))
        elif "bias" in weight.path:
            weight.assign(np.zeros(weight.shape))
    for layer in model.backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0.0, 0.3, n))
            layer.moving_mean.assign(rng.normal(0.0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    for logits in (model.box_head.cls, model.mask_head.logits):
        logits.kernel.assign(logits.kernel * factor)
    return model


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


@pytest.fixture(scope="module")
def folded(detector):
    """(the folded detector, the lines fold_detector logged)."""
    messages = []
    return fold_detector(detector, log=messages.append), messages


@pytest.fixture(scope="module")
def image():
    from keras_res2net.detection.data.synthetic import make_image

    return make_image(np.random.default_rng(3), SIZE, 3)[0].astype(np.float32)


def test_folded_detector_detects_the_same(detector, folded, image):
    """No BN left in the folded backbone; same counts and classes, boxes, scores and masks
    within float32 bounds; the unfolded detector is untouched."""
    folded, messages = folded
    assert messages == ["res2net50_v1b_26w_4s_pyramid: folded 27 of 27 BatchNorm layers into "
                        "the convolution before them."]
    assert batchnorms(folded.backbone) == 0 and batchnorms(detector.backbone) == 27
    inputs = {"images": image[None]}
    expected = {k: np.asarray(v) for k, v in detector(inputs, training=False).items()}
    got = {k: np.asarray(v) for k, v in folded(inputs, training=False).items()}
    count = int(expected["num_detections"][0])
    assert count >= 20 and expected["scores"][0, 0] > 0.9  # confident detections
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(got["classes"], expected["classes"])
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=BOX_BOUND_PX, rtol=0)
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=SCORE_BOUND, rtol=0)
    np.testing.assert_allclose(got["masks"], expected["masks"], atol=MASK_BOUND, rtol=0)


def test_bad_input_on_the_detector_path(detector, folded, image, monkeypatch):
    """Folding twice is a no-op with a warning; a folded detector refuses to train; a
    detector compiled for training with trainable backbone BN is refused."""
    folded, _ = folded
    with pytest.warns(UserWarning, match="has no BatchNormalization layer; returning it"):
        assert fold_detector(folded) is folded
    with pytest.raises(ValueError, match="folded for inference .* train the unfolded"):
        folded.extract(image[None], training=True)
    monkeypatch.setattr(detector, "optimizer", keras.optimizers.SGD(0.01), raising=False)
    with pytest.raises(ValueError, match="compiled for training and 27 BatchNorm layers of "
                       "its backbone are trainable"):
        fold_detector(detector)


@pytest.mark.slow  # two detector builds through the CLI (~30 s on 2 loaded cores)
def test_predict_folds_by_default_and_no_fold_gives_the_same_results(small_run, tmp_path,
                                                                   capsys):
    """The CLI folds (one stderr line) unless --no-fold; the COCO results agree."""
    from keras_res2net.detection.data.synthetic import make_image, save_png
    from keras_res2net.detection.predict import main

    path = tmp_path / "shapes.png"
    save_png(make_image(np.random.default_rng(5), SIZE, 3)[0], path)
    records = {}
    for flag in ("", "--no-fold"):
        results = tmp_path / f"results{flag}.json"
        assert main([str(path), "--checkpoint", str(small_run), "--results", str(results),
                     *([flag] if flag else [])]) == 0
        err = capsys.readouterr().err
        assert ("folded 27 of 27 BatchNorm" in err) == (not flag), err
        records[flag] = json.loads(results.read_text())
    folded, plain = records[""], records["--no-fold"]
    assert len(plain) > 0 and len(folded) == len(plain)
    assert [r["category_id"] for r in folded] == [r["category_id"] for r in plain]
    assert [r["segmentation"] for r in folded] == [r["segmentation"] for r in plain]
    np.testing.assert_allclose([r["bbox"] for r in folded], [r["bbox"] for r in plain],
                               atol=BOX_BOUND_PX)
    np.testing.assert_allclose([r["score"] for r in folded], [r["score"] for r in plain],
                               atol=SCORE_BOUND)
