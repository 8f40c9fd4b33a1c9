"""The detector end to end on a tiny config: shapes, frozen stages, one training step."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
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
    assert not configs.get_experiment("faster_rcnn_res2net101_fpn_coco").model.include_mask
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        configs.get_experiment("nope")


def test_train_step_trains_heads_and_keeps_frozen_stages(shapes_val):
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
    losses = tf.function(lambda b: task.train_step(b, model, optimizer))(batch)
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
