"""Cascade (Mask) R-CNN against mmdetection's semantics, on hand-computable cases.

Stage-wise sampling thresholds (`sample_rois`), refinement between stages (`refine` and
the task's loop, spied on), stage loss weights, test-time score / mask averaging, one train
step per cascade, and the registered COCO experiments.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from cascade_fixtures import (
    IMAGE,
    STAGE_IOUS,
    STAGE_STDS,
    STAGE_WEIGHTS,
    np_decode,
    np_encode,
    np_iou,
    np_sigmoid,
    np_softmax,
    spy_samples,
    tiny_batch,
    tiny_config,
)

from keras_res2net.detection import configs
from keras_res2net.detection.modeling.cascade import (
    CascadeRCNN,
    average_stage_masks,
    average_stage_scores,
)
from keras_res2net.detection.modeling.heads import MaskHead
from keras_res2net.detection.targets import sample_rois
from keras_res2net.detection.task import DetectionTask

# -- sample_rois: the per-stage IoU thresholds ---------------------------------------------

GT = np.array([0.0, 0.0, 100.0, 100.0], np.float32)
# RoI [0, 0, 100, h] has IoU h / 100 with GT. The last one (IoU 0.9) is an invalid proposal.
HEIGHTS = (55.0, 65.0, 75.0, 30.0, 10.0, 10.0, 10.0, 90.0)


def _stage_case():
    rois = np.array([[[0, 0, 100, h] for h in HEIGHTS]], np.float32)
    roi_valid = np.array([[True] * 7 + [False]])
    # Row 1 is padding that sits exactly on RoI 3 (IoU 1 with it): it must never match.
    gt_boxes = np.array([[GT, [0, 0, 100, 30]]], np.float32)
    gt_classes = np.array([[2, 3]], np.int32)
    gt_valid = np.array([[True, False]])
    return rois, roi_valid, gt_boxes, gt_classes, gt_valid


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_sample_rois_positives_follow_the_stage_iou(stage):
    rois, roi_valid, gt_boxes, gt_classes, gt_valid = _stage_case()
    sample = sample_rois(rois, roi_valid, gt_boxes, gt_classes, gt_valid,
                         iou=STAGE_IOUS[stage], num_samples=8, pos_fraction=0.5,
                         stds=STAGE_STDS[stage], seed=keras.random.SeedGenerator(stage))
    s = {k: np.asarray(v)[0] for k, v in sample._asdict().items()}
    # Candidates: 7 valid RoIs + the one valid GT; all 8 fit (<= 4 positives, 8 samples).
    assert s["is_sampled"].all()
    heights = {0: {55.0, 65.0, 75.0, 100.0}, 1: {65.0, 75.0, 100.0}, 2: {75.0, 100.0}}[stage]
    sampled = s["rois"][s["is_sampled"]]
    assert not np.any(np.all(sampled == [0, 0, 100, 90], axis=1)), "invalid RoI sampled"
    pos_heights = {float(h) for h in s["rois"][s["is_pos"], 3]}
    assert pos_heights == heights
    # Positives first, then negatives, then unsampled padding.
    n_pos = len(heights)
    assert s["is_pos"][:n_pos].all() and not s["is_pos"][n_pos:].any()
    # Positives carry the GT class and match GT row 0 (never the padding row, even for
    # the RoI identical to it); negatives are background.
    np.testing.assert_array_equal(s["classes"], np.where(s["is_pos"], 2, 0))
    assert (s["matched"][s["is_pos"]] == 0).all()
    # The ground truth is added as a RoI: a positive at every stage, flagged is_gt.
    assert s["is_gt"].sum() == 1
    gt_row = np.flatnonzero(s["is_gt"])[0]
    assert s["is_pos"][gt_row]
    np.testing.assert_array_equal(s["rois"][gt_row], GT)
    # Box targets: the stage's stds.
    pos_rois = s["rois"][s["is_pos"]]
    expected = np_encode(np.broadcast_to(GT, pos_rois.shape), pos_rois, STAGE_STDS[stage])
    np.testing.assert_allclose(s["box_targets"][s["is_pos"]], expected, rtol=1e-5, atol=1e-5)


def test_sample_rois_caps_positives_at_the_fraction():
    # 10 RoIs at IoU 0.8 and 3 at IoU 0.1: at most 8 * 0.25 = 2 positives, every negative.
    rois = np.array([[[0, 0, 100, 80]] * 10 + [[0, 0, 100, 10]] * 3], np.float32)
    sample = sample_rois(rois, np.ones((1, 13), bool), GT[None, None], np.array([[1]]),
                         np.array([[True]]), iou=0.7, num_samples=8, pos_fraction=0.25,
                         stds=STAGE_STDS[2], seed=keras.random.SeedGenerator(1))
    is_pos, is_sampled = np.asarray(sample.is_pos)[0], np.asarray(sample.is_sampled)[0]
    assert is_pos.sum() == 2 and is_pos[:2].all()
    assert is_sampled.sum() == 5
    np.testing.assert_array_equal(np.asarray(sample.rois)[0, 2:5, 3], [10, 10, 10])


# -- refine: decode with the stage's stds, clip, no gradient -------------------------------

@pytest.fixture(scope="module")
def cascade():
    keras.utils.set_random_seed(0)
    task = DetectionTask(tiny_config("cascade_rcnn_res2net50_fpn_synthetic"))
    return task, task.build_model()


@pytest.fixture(scope="module")
def cascade_mask():
    keras.utils.set_random_seed(0)
    task = DetectionTask(tiny_config("cascade_mask_rcnn_res2net50_fpn_synthetic"))
    return task, task.build_model()


def test_refine_decodes_with_each_stage_stds_and_clips(cascade):
    _, model = cascade
    assert isinstance(model, CascadeRCNN) and model.num_stages == 3
    image_shape = np.array([[IMAGE, IMAGE]], np.float32)  # (height, width) of each image
    rois = np.array([[[10, 10, 30, 50], [50, 10, 60, 20]]], np.float32)  # w 20, w 10
    deltas = np.array([[[[1.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 4.0, 4.0]]]], np.float32)
    logits = np.zeros((1, 2, 4), np.float32)
    shifts = []
    for stage in range(3):
        refined = np.asarray(model.refine(rois, logits, deltas, stage, image_shape))
        assert refined.shape == (1, 2, 4)
        np.testing.assert_allclose(refined, np_decode(deltas[:, :, 0], rois, STAGE_STDS[stage]),
                                   rtol=1e-5, atol=1e-4)
        shifts.append(refined[0, 0, 0] - rois[0, 0, 0])
        # RoI 1 grows by exp(4 * std_w): at stage 0 past the right edge (x2 66.1), clipped.
        assert refined[0, 1, 2] <= IMAGE
    # The same unit dx moves a 20-px box by 0.1 * 20, 0.05 * 20, 0.033 * 20 pixels.
    np.testing.assert_allclose(shifts, [2.0, 1.0, 0.66], rtol=1e-4)
    assert np.asarray(model.refine(rois, logits, deltas, 0, image_shape))[0, 1, 2] == IMAGE


def test_refine_class_specific_picks_label_or_best_class(cascade):
    _, model = cascade
    rois = np.array([[[10, 10, 30, 30], [10, 10, 30, 30]]], np.float32)
    # Class k (0-based) shifts dx by k + 1; RoI 0 is a positive of class 3 (1-based),
    # RoI 1 a negative whose most likely object class is 2 (1-based).
    deltas = np.zeros((1, 2, 3, 4), np.float32)
    deltas[..., 0] = [1.0, 2.0, 3.0]
    logits = np.array([[[9.0, 5.0, 1.0, 0.0], [9.0, 0.0, 5.0, 1.0]]], np.float32)
    refined = np.asarray(model.refine(rois, logits, deltas, 0, np.array([[64.0, 64.0]]),
                                      classes=np.array([[3, 0]], np.int32)))
    np.testing.assert_allclose(refined[0, :, 0] - 10.0, [3 * 0.1 * 20, 2 * 0.1 * 20], rtol=1e-5)


def test_refine_stops_the_gradient(cascade):
    _, model = cascade
    rois = tf.constant([[[10.0, 10.0, 30.0, 50.0]]])
    deltas = tf.Variable(tf.fill((1, 1, 1, 4), 0.5))
    with tf.GradientTape() as tape:
        refined = model.refine(rois, tf.zeros((1, 1, 4)), deltas, 1, np.array([[64.0, 64.0]]))
        total = tf.reduce_sum(refined)
    assert tape.gradient(total, deltas) is None


# -- the task's stage loop: thresholds, refinement, GT dropped, loss weights ---------------

def _spy_losses(monkeypatch, task, model, model_class):
    """One eager `build_losses`; records each `_sample` call and each stage's box branch."""
    samples, boxes = spy_samples(monkeypatch), []
    box_fn = model_class.box_branch

    def spy_box(self, features, rois, stage, semantic_feature=None, training=False):
        logits, deltas = box_fn(self, features, rois, stage, semantic_feature, training)
        boxes.append({"stage": stage, "rois": np.asarray(rois), "logits": np.asarray(logits),
                      "deltas": np.asarray(deltas)})
        return logits, deltas

    monkeypatch.setattr(model_class, "box_branch", spy_box)
    losses = task.build_losses(model, tiny_batch(), training=True)
    monkeypatch.undo()
    return {k: float(v) for k, v in losses.items()}, samples, boxes


def _stage_losses(box, sample, beta=1.0):
    """The unweighted box-head losses of one stage, recomputed in numpy (mmdetection's
    CrossEntropyLoss and SmoothL1Loss, both averaged over the sampled RoIs)."""
    count = max(sample["is_sampled"].sum(), 1)
    log_probs = np.log(np_softmax(box["logits"].astype(np.float64)))
    nll = -np.take_along_axis(log_probs, sample["classes"][..., None], -1)[..., 0]
    cls_loss = (nll * sample["is_sampled"]).sum() / count
    diff = np.abs(box["deltas"][:, :, 0] - sample["box_targets"])
    smooth = np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum(-1)
    return cls_loss, (smooth * sample["is_pos"]).sum() / count


def test_stage_loop_samples_refines_and_weights_each_stage(cascade, monkeypatch):
    task, model = cascade
    gt = tiny_batch()
    losses, samples, boxes = _spy_losses(monkeypatch, task, model, CascadeRCNN)
    assert [s["iou"] for s in samples] == list(STAGE_IOUS)
    assert [s["stds"] for s in samples] == list(STAGE_STDS)
    assert [b["stage"] for b in boxes] == [0, 1, 2]
    assert any(s["is_gt"].any() for s in samples)
    for stage, (sample, box) in enumerate(zip(samples, boxes, strict=True)):
        np.testing.assert_array_equal(box["rois"], sample["rois"])
        for b in range(2):
            valid_gt = gt["boxes"][b][gt["classes"][b] > 0]
            # Positives are exactly the sampled RoIs at IoU >= the stage's threshold.
            best = np_iou(sample["rois"][b], valid_gt).max(1)
            np.testing.assert_array_equal(
                sample["is_pos"][b], sample["is_sampled"][b] & (best >= STAGE_IOUS[stage]))
            # is_gt rows are ground-truth boxes.
            for row in sample["rois"][b][sample["is_gt"][b]]:
                assert np.any(np.all(np.isclose(row, valid_gt), axis=1))
        # Box targets use the stage's stds.
        pos = sample["is_pos"]
        matched = np.take_along_axis(gt["boxes"], sample["matched"][..., None], 1)
        np.testing.assert_allclose(
            sample["box_targets"][pos],
            np_encode(matched[pos], sample["rois"][pos], STAGE_STDS[stage]), atol=1e-4)
        # The stage's reported losses are its weight times the unweighted losses.
        cls_loss, box_loss = _stage_losses(box, sample)
        weight = STAGE_WEIGHTS[stage]
        assert losses[f"s{stage}_cls_loss"] == pytest.approx(weight * cls_loss, rel=1e-4)
        assert losses[f"s{stage}_box_loss"] == pytest.approx(weight * box_loss, rel=1e-3,
                                                             abs=1e-7)
        if stage == 2:
            break
        # Next stage's candidates: this stage's sampled RoIs refined with its deltas and
        # stds; GT RoIs and unsampled slots are dropped (the sampler adds the GT back).
        nxt = samples[stage + 1]
        np.testing.assert_allclose(
            nxt["in_rois"], np_decode(box["deltas"][:, :, 0], sample["rois"],
                                      STAGE_STDS[stage]), rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(nxt["in_valid"], sample["is_sampled"] & ~sample["is_gt"])
        for b in range(2):
            kept = nxt["in_rois"][b][nxt["in_valid"][b]]
            for row in nxt["rois"][b][nxt["is_sampled"][b] & ~nxt["is_gt"][b]]:
                assert np.any(np.all(row == kept, axis=1)), "sampled RoI not from refined set"
    rpn = {"rpn_cls_loss", "rpn_box_loss", "total_loss"}
    assert set(losses) == rpn | {f"s{s}_{n}_loss" for s in range(3) for n in ("cls", "box")}


# -- test-time averaging -------------------------------------------------------------------

def test_average_stage_scores_is_softmax_of_mean_logits():
    stage_logits = [np.array([[[0.0, 4.0, 0.0]]], np.float32),
                    np.array([[[0.0, 0.0, 0.0]]], np.float32),
                    np.array([[[1.0, -2.0, 3.0]]], np.float32)]
    got = np.asarray(average_stage_scores(stage_logits))
    expected = np_softmax(np.mean(stage_logits, axis=0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    mean_of_softmax = np.mean([np_softmax(x) for x in stage_logits], axis=0)
    assert np.abs(got - mean_of_softmax).max() > 0.05  # the two rules differ here


def test_average_stage_masks_is_mean_of_sigmoids_of_the_class():
    rng = np.random.RandomState(3)
    stage_logits = [rng.normal(0, 3, (1, 2, 4, 4, 3)).astype(np.float32) for _ in range(3)]
    classes = np.array([[2, 0]], np.int32)
    got = np.asarray(average_stage_masks(stage_logits, classes))
    assert got.shape == (1, 2, 4, 4)
    picked = [np.stack([x[0, 0, ..., 2], x[0, 1, ..., 0]])[None] for x in stage_logits]
    np.testing.assert_allclose(got, np.mean([np_sigmoid(p) for p in picked], 0), rtol=1e-5)
    assert np.abs(got - np_sigmoid(np.mean(picked, 0))).max() > 0.01


def _spy_detect(monkeypatch, model):
    """Run `model` on one image; return its outputs and the (boxes, probs) given to NMS."""
    seen = {}
    detect = CascadeRCNN.detect

    def spy(self, boxes, probs):
        seen["boxes"], seen["probs"] = np.asarray(boxes), np.asarray(probs)
        return detect(self, boxes, probs)

    monkeypatch.setattr(CascadeRCNN, "detect", spy)
    outputs = model(tiny_batch()["images"][:1])
    monkeypatch.undo()
    return {k: np.asarray(v) for k, v in outputs.items()}, seen


def test_forward_averages_stage_scores_and_keeps_last_stage_boxes(cascade, monkeypatch):
    _, model = cascade
    bias = model.box_heads[0].cls.bias
    original = np.asarray(bias)
    bias.assign([0.0, 4.0, 0.0, 0.0])  # stage 0 alone favours class 1: averaging shows
    try:
        _, seen = _spy_detect(monkeypatch, model)
        images = tiny_batch()["images"][:1]
        features, rois, valid = model.inference_proposals(images)
        stage_logits = []
        for stage in range(3):
            logits, deltas = model.box_branch(features, rois, stage)
            stage_logits.append(np.asarray(logits, np.float64))
            prev = np.asarray(rois)
            rois = np_decode(np.asarray(deltas)[:, :, 0], prev, STAGE_STDS[stage])
            rois = rois.astype(np.float32)
    finally:
        bias.assign(original)
    probs = np_softmax(np.mean(stage_logits, 0))[..., 1:] * np.asarray(valid)[..., None]
    np.testing.assert_allclose(seen["probs"], probs, atol=1e-5)
    # Not the last stage's scores, nor the mean of the stages' softmaxes.
    last = np_softmax(stage_logits[-1])[..., 1:] * np.asarray(valid)[..., None]
    assert np.abs(seen["probs"] - last).max() > 0.05
    mean_softmax = np.mean([np_softmax(x) for x in stage_logits], 0)[..., 1:]
    assert np.abs(seen["probs"] - mean_softmax * np.asarray(valid)[..., None]).max() > 0.01
    # Boxes: the last stage's deltas on the RoIs the second stage refined, its stds.
    assert seen["boxes"].shape[2] == 1
    np.testing.assert_allclose(seen["boxes"][:, :, 0], rois, atol=1e-3)


def test_cascade_mask_forward_averages_stage_masks_on_final_boxes(cascade_mask):
    _, model = cascade_mask
    images = tiny_batch()["images"][:1]
    outputs = {k: np.asarray(v) for k, v in model(images).items()}
    count = int(outputs["num_detections"][0])
    assert count > 0 and outputs["masks"].shape == (1, 100, 28, 28)
    features = model.extract(images)
    pooled = model._pool_rois(features, outputs["boxes"], 14)
    classes = np.maximum(outputs["classes"] - 1, 0)
    per_stage = []
    for head in model.mask_heads:
        logits = np.asarray(head(pooled))
        per_stage.append(np_sigmoid(np.take_along_axis(
            logits, classes[:, :, None, None, None], -1)[..., 0]))
    expected = np.mean(per_stage, 0)
    np.testing.assert_allclose(outputs["masks"][:, :count], expected[:, :count], atol=1e-5)
    assert np.abs(expected - per_stage[-1])[:, :count].max() > 1e-3


def test_cascade_mask_branch_runs_only_its_stage_head(cascade_mask, monkeypatch):
    """Without information flow, stage t's mask loss needs head t alone: the earlier heads
    are neither run (wasted work on every training step) nor given gradient."""
    _, model = cascade_mask
    rois = np.array([[[4, 4, 30, 30], [10, 10, 40, 50]]], np.float32)
    features = model.extract(tiny_batch()["images"][:1])
    pooled = model._pool_rois(features, rois, 14)
    expected = [np.asarray(head(pooled)) for head in model.mask_heads]
    calls = []
    call = MaskHead.call

    def spy(self, *args, **kwargs):
        calls.append(self.name)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(MaskHead, "call", spy)
    for stage in range(3):
        calls.clear()
        got = model.mask_branch(features, rois, stage, training=True)
        assert calls == [f"mask_head_s{stage}"]
        np.testing.assert_allclose(np.asarray(got), expected[stage], atol=1e-5)


# -- one train step each -------------------------------------------------------------------

def _heads_train(task, model, heads, keys):
    """One eager train step with plain SGD: finite losses, the expected keys, and every
    given head's weights moved (SGD without decay moves only what has a gradient)."""
    before = {h.name: [np.array(w) for w in h.trainable_weights] for h in heads}
    losses = task.train_step(tiny_batch(), model, keras.optimizers.SGD(0.5))
    assert set(losses) == keys | {"rpn_cls_loss", "rpn_box_loss", "total_loss"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    for head in heads:
        moved = [not np.array_equal(np.array(w), old)
                 for w, old in zip(head.trainable_weights, before[head.name], strict=True)]
        assert all(moved), (head.name, [w.path for w, m in
                                        zip(head.trainable_weights, moved, strict=True)
                                        if not m])
    return losses


def test_cascade_rcnn_train_step_trains_every_stage(cascade):
    task, model = cascade
    keys = {f"s{s}_{n}_loss" for s in range(3) for n in ("cls", "box")}
    _heads_train(task, model, model.box_heads, keys)


def test_cascade_mask_rcnn_train_step_trains_every_stage(cascade_mask):
    task, model = cascade_mask
    keys = {f"s{s}_{n}_loss" for s in range(3) for n in ("cls", "box", "mask")}
    losses = _heads_train(task, model, [*model.box_heads, *model.mask_heads], keys)
    assert all(float(losses[f"s{s}_mask_loss"]) > 0 for s in range(3))


# -- experiments ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,mask,htc,semantic", [
    ("cascade_rcnn_res2net101_fpn_coco", False, False, False),
    ("cascade_mask_rcnn_res2net101_fpn_coco", True, False, False),
    ("htc_res2net101_fpn_coco", True, True, True),
    ("htc_without_semantic_res2net101_fpn_coco", True, True, False),
])
def test_coco_experiments_hold_the_issue_values(name, mask, htc, semantic):
    config = configs.get_experiment(name)
    model = config.model
    assert model.backbone.name == "res2net101_v1b_26w_4s"
    assert model.include_mask == mask
    cascade = model.cascade
    assert cascade.stage_ious == STAGE_IOUS and cascade.stage_loss_weights == STAGE_WEIGHTS
    assert cascade.stage_box_stds == STAGE_STDS and cascade.class_agnostic
    assert model.roi.num_samples == 512 and model.roi.pos_fraction == 0.25
    assert model.rpn.train_post_nms_topk == 2000
    assert model.rpn.allowed_border == 0  # RPN anchors across the image border are ignored
    assert config.train.epochs == 20 and config.train.decay_epochs == (16, 19)
    assert (model.htc is not None) == htc
    if htc:
        assert model.htc.interleaved and model.htc.mask_info_flow
        assert model.htc.semantic == semantic
        assert model.htc.semantic_classes == 183 and model.htc.semantic_loss_weight == 0.2
        assert (config.data.train_semantic is not None) == semantic
    assert model.architecture == (("htc" if htc else "cascade_mask_rcnn") if mask
                                  else "cascade_rcnn")
