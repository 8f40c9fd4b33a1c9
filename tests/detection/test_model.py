"""The detector end to end on a tiny config: shapes, frozen stages, one training step."""

import dataclasses

import keras
import numpy as np
import pytest
from cascade_fixtures import tiny_config

from keras_res2net.detection import configs
from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.task import DetectionTask


def _tiny_config(**backbone) -> configs.ExperimentConfig:
    config = tiny_config("mask_rcnn_res2net50_fpn_synthetic")
    config.model.backbone = dataclasses.replace(config.model.backbone, **backbone)
    return config


def test_registry_holds_the_reference_experiments():
    names = configs.list_experiments()
    assert {"faster_rcnn_res2net101_fpn_coco", "mask_rcnn_res2net101_fpn_coco"} <= set(names)
    mask = configs.get_experiment("mask_rcnn_res2net101_fpn_coco")
    assert mask.model.include_mask and mask.model.backbone.frozen_stages == 1
    assert mask.model.roi.box_stds == (0.1, 0.1, 0.2, 0.2) and mask.model.rpn.nms_iou == 0.7
    faster = configs.get_experiment("faster_rcnn_res2net101_fpn_coco")
    assert not faster.model.include_mask
    # mmdetection's train_cfg: no RPN border check; low-quality R-CNN matches for Mask only.
    assert mask.model.rpn.allowed_border == faster.model.rpn.allowed_border == -1
    assert mask.model.roi.match_low_quality and not faster.model.roi.match_low_quality
    assert mask.data.filter_empty_gt and mask.data.min_image_size == 32
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        configs.get_experiment("nope")


def test_train_step_trains_heads_and_keeps_frozen_stages(shapes_val):
    keras.utils.set_random_seed(0)
    config = _tiny_config(frozen_stages=1, norm_eval=True)
    task = DetectionTask(config)
    model = task.build_model()
    outputs = model(np.zeros((1, 96, 128, 3), np.float32))
    assert outputs["boxes"].shape == (1, 100, 4) and outputs["masks"].shape == (1, 100, 28, 28)

    frozen = {w.path: np.array(w) for w in model.backbone.weights
              if w.path.startswith(("conv1", "bn1", "layer1_"))}
    moving = {w.path: np.array(w) for w in model.backbone.non_trainable_weights
              if "moving" in w.path}
    assert frozen and moving
    heads = {w.path: np.array(w) for w in model.box_head.weights}
    batch = next(iter(task.build_inputs(load_coco(*shapes_val), training=True)))
    optimizer = task.build_optimizer()
    # Eager: the same train_step without tracing the whole detector into a graph (2-3 min
    # on two loaded cores); the trainer's tf.function step runs in the slow learning tests.
    losses = task.train_step(batch, model, optimizer)
    assert set(losses) == {"rpn_cls_loss", "rpn_box_loss", "cls_loss", "box_loss",
                           "mask_loss", "total_loss"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert float(losses["mask_loss"]) > 0.0  # positives exist: ground truth is added as RoIs
    for w in model.backbone.weights:
        if w.path in frozen:
            np.testing.assert_array_equal(np.array(w), frozen[w.path], err_msg=w.path)
        if w.path in moving:  # norm_eval: BatchNorm statistics never move
            np.testing.assert_array_equal(np.array(w), moving[w.path], err_msg=w.path)
    assert any(not np.array_equal(np.array(w), heads[w.path]) for w in model.box_head.weights)
    layer2 = [w for w in model.backbone.trainable_weights if w.path.startswith("layer2_")]
    assert layer2, "layer2 must stay trainable"


# -- mmdetection's test-time semantics: padding and per-image clipping -----------------------

@pytest.fixture(scope="module")
def loose_model():
    """A seeded tiny Mask R-CNN that keeps every candidate (score threshold 0)."""
    keras.utils.set_random_seed(3)
    config = _tiny_config()
    config.model.detection.score_threshold = 0.0
    return DetectionTask(config).build_model()


def _two_images():
    rng = np.random.default_rng(4)
    images = np.zeros((2, 96, 96, 3), np.float32)
    images[0, :64, :96] = rng.integers(0, 256, (64, 96, 3))
    images[1, :96, :40] = rng.integers(0, 256, (96, 40, 3))
    return images, np.array([[64.0, 96.0], [96.0, 40.0]], np.float32)


def test_padding_is_zero_after_normalising(loose_model):
    """What the padding holds does not matter, and it differs from padding raw black pixels
    (which normalise to -mean/std): mmdetection normalises first, then pads with zeros."""
    images, sizes = _two_images()
    noisy = images.copy()
    noisy[0, 64:] = 200.0
    noisy[1, :, 40:] = 17.0
    with_sizes = loose_model.extract(images, image_sizes=sizes)
    with_noise = loose_model.extract(noisy, image_sizes=sizes)
    raw_black = loose_model.extract(images)
    for level in ("P2", "P5"):
        np.testing.assert_allclose(np.asarray(with_noise[level]),
                                   np.asarray(with_sizes[level]), atol=1e-5)
        assert np.abs(np.asarray(raw_black[level]) - np.asarray(with_sizes[level])).max() > 1e-2


def test_boxes_are_clipped_to_each_images_own_size(loose_model):
    images, sizes = _two_images()
    _, proposals, valid = loose_model.inference_proposals(images, sizes)
    outputs = loose_model({"images": images, "image_sizes": sizes})
    padded = loose_model(images)
    for i, (height, width) in enumerate(sizes):
        for boxes in (np.asarray(proposals[i])[np.asarray(valid[i])],
                      np.asarray(outputs["boxes"][i])[: int(outputs["num_detections"][i])]):
            assert len(boxes) > 10
            assert boxes[:, 0::2].max() <= width + 1e-4 and boxes[:, 1::2].max() <= height + 1e-4
    # Without sizes the padded batch is the image: the portrait image's boxes cross x=40.
    assert np.asarray(padded["boxes"][1])[:, 2].max() > 40.0 + 1.0


def test_test_time_rpn_keeps_fewer_candidates_per_level(monkeypatch, loose_model):
    """mmdetection keeps nms_pre=1000 candidates per level at test time, 2000 in training."""
    seen = []
    original = loose_model.propose

    def spy(*args, **kwargs):
        seen.append(kwargs.get("pre_nms_topk", args[5] if len(args) > 5 else None))
        return original(*args, **kwargs)

    monkeypatch.setattr(loose_model, "propose", spy)
    loose_model.inference_proposals(np.zeros((1, 64, 64, 3), np.float32))
    assert seen == [loose_model.config.rpn.test_pre_nms_topk]
    coco = configs.get_experiment("mask_rcnn_res2net101_fpn_coco").model.rpn
    assert (coco.pre_nms_topk, coco.test_pre_nms_topk) == (2000, 1000)


def test_resize_rounds_half_up_like_mmcv():
    """mmcv's imrescale: int(side * factor + 0.5); TF's round() would go half to even."""
    from keras_res2net.detection.data.pipeline import resized_size

    # 427 x 641 into (1333, 800): factor min(1333/641, 800/427) = 1.8735..., sides computed
    # by hand with Python floats as mmcv does.
    for shape, max_size in (((427, 641), (1333, 800)), ((5, 3), (10, 5)), ((6, 2), (9, 9)),
                            ((300, 200), (512, 320))):
        factor = min(max_size[0] / max(shape), max_size[1] / min(shape))
        expected = [int(side * factor + 0.5) for side in shape]
        assert list(np.asarray(resized_size(shape, max_size))) == expected, shape
    # 5 x 3 scaled by 1.5 -> 7.5 x 4.5: half up gives 8 x 5 (banker's rounding 8 x 4).
    assert list(np.asarray(resized_size((5, 3), (10, 4.5)))) == [8, 5]
