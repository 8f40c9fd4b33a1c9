"""HTC: mask information flow, the interleaved mask branch and the semantic branch.

Information flow: stage t's mask head adds conv_res(features of head t-1), the chain running
heads 0..t-1 on the same RoIs, so stage t's loss reaches every earlier mask head (and no
earlier head without the flow). Interleaving: stage t's mask head trains on a re-sample of the
RoIs stage t's box head refined. Semantic branch: its RoI features are added to the box
(7x7, as mmdetection's 14x14 average-pooled 2x2) and mask (14x14) RoI features, and its
loss (weight 0.2) trains the semantic head.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from cascade_fixtures import (
    STAGE_IOUS,
    STAGE_STDS,
    STAGE_WEIGHTS,
    np_decode,
    np_sigmoid,
    spy_samples,
    tiny_batch,
    tiny_config,
)

from keras_res2net.detection import losses as loss_lib
from keras_res2net.detection.modeling.htc import HybridTaskCascade
from keras_res2net.detection.modeling.semantic import semantic_roi_features
from keras_res2net.detection.task import DetectionTask

MAX_POS = 4  # tiny config: 16 RoIs * 25% positives


@pytest.fixture(scope="module")
def htc():
    keras.utils.set_random_seed(0)
    task = DetectionTask(tiny_config("htc_without_semantic_res2net50_fpn_synthetic"))
    model = task.build_model()
    images = tiny_batch()["images"]
    features = model.extract(images)
    rois = np.array([[[4, 4, 30, 30], [10, 10, 40, 50], [0, 0, 64, 64]],
                     [[10, 20, 50, 60], [30, 5, 60, 40], [5, 5, 20, 20]]], np.float32)
    return task, model, features, rois


def test_heads_have_conv_res_after_the_first_and_no_semantic_branch(htc):
    task, model, features, rois = htc
    assert isinstance(model, HybridTaskCascade) and len(model.mask_heads) == 3
    assert model.mask_heads[0].conv_res is None
    assert all(h.conv_res is not None for h in model.mask_heads[1:])
    assert model.semantic_head is None and model.semantic(features) == (None, None)
    logits = model.stage_mask_logits(features, rois)
    assert [tuple(x.shape) for x in logits] == [(2, 3, 28, 28, 3)] * 3
    for stage in range(3):  # the training chain (mask_branch) is the test-time chain
        got = model.mask_branch(features, rois, stage)
        assert tuple(got.shape) == (2, 3, 28, 28, 3)
        np.testing.assert_allclose(np.asarray(got), np.asarray(logits[stage]), atol=1e-5)


def test_stage_mask_logits_chain_the_previous_heads_features(htc):
    _, model, features, rois = htc
    pooled = model._pool_rois(features, rois, 14)
    heads = model.mask_heads
    out0, feat0 = heads[0](pooled, return_features=True)
    out1, feat1 = heads[1](pooled, feat0, return_features=True)
    out2 = heads[2](pooled, feat1)
    chained = model.stage_mask_logits(features, rois)
    for got, expected in zip(chained, (out0, out1, out2), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    # The residual matters: without it stage 2 would be a different function of the RoIs.
    assert np.abs(np.asarray(out2) - np.asarray(heads[2](pooled))).max() > 1e-4
    # With head 2's conv_res zeroed, ReLU(conv_res(.)) adds nothing: the plain head.
    weights = [np.array(w) for w in heads[2].conv_res.weights]
    try:
        for w in heads[2].conv_res.weights:
            w.assign(np.zeros(w.shape, np.float32))
        np.testing.assert_allclose(np.asarray(model.mask_branch(features, rois, 2)),
                                   np.asarray(heads[2](pooled)), atol=1e-5)
    finally:
        for w, value in zip(heads[2].conv_res.weights, weights, strict=True):
            w.assign(value)


def _mask_grads(model, features, rois, stage):
    """{head: {weight path suffix: whether stage's mask logits give it a nonzero gradient}}."""
    heads = model.mask_heads
    variables = [w for h in heads for w in h.trainable_weights]
    with tf.GradientTape() as tape:
        logits = model.mask_branch(features, rois, stage, training=True)
        loss = tf.reduce_sum(tf.square(logits))
    grads = dict(zip([id(v) for v in variables], tape.gradient(loss, variables), strict=True))
    return [{w.path.split("/", 1)[1]: grads[id(w)] is not None
             and bool(np.any(np.asarray(grads[id(w)]) != 0)) for w in h.trainable_weights}
            for h in heads]


def test_stage_mask_gradients_reach_every_earlier_head(htc):
    _, model, features, rois = htc
    for stage in range(3):
        grads = _mask_grads(model, features, rois, stage)
        for head, reached in enumerate(grads):
            for path, has_grad in reached.items():
                if head > stage:
                    expected = False  # later heads are not run
                elif head == stage:
                    expected = True  # every weight of the stage's own head, conv_res included
                else:
                    expected = "deconv" not in path and "mask_logits" not in path
                assert has_grad == expected, (stage, head, path)
    conv_res = [p for p in _mask_grads(model, features, rois, 2)[1] if "conv_res" in p]
    assert conv_res, "head 1's conv_res must exist and receive stage 2's gradient"


def test_without_info_flow_stage_loss_only_reaches_its_own_head(htc, monkeypatch):
    _, model, features, rois = htc
    monkeypatch.setattr(model.config.htc, "mask_info_flow", False)
    grads = _mask_grads(model, features, rois, 2)
    assert not any(grads[0].values()) and not any(grads[1].values())
    assert all(has for path, has in grads[2].items() if "conv_res" not in path)
    assert not any(has for path, has in grads[2].items() if "conv_res" in path)
    pooled = model._pool_rois(features, rois, 14)
    np.testing.assert_allclose(np.asarray(model.stage_mask_logits(features, rois)[2]),
                               np.asarray(model.mask_heads[2](pooled)), atol=1e-5)


def test_forward_averages_the_chained_stage_masks(htc):
    _, model, _, _ = htc
    images = tiny_batch()["images"][:1]
    outputs = {k: np.asarray(v) for k, v in model(images).items()}
    count = int(outputs["num_detections"][0])
    assert count > 0
    pooled = model._pool_rois(model.extract(images), outputs["boxes"], 14)
    heads = model.mask_heads
    out0, feat0 = heads[0](pooled, return_features=True)
    out1, feat1 = heads[1](pooled, feat0, return_features=True)
    out2 = heads[2](pooled, feat1)
    classes = np.maximum(outputs["classes"] - 1, 0)[:, :, None, None, None]
    probs = [np_sigmoid(np.take_along_axis(np.asarray(x), classes, -1)[..., 0])
             for x in (out0, out1, out2)]
    np.testing.assert_allclose(outputs["masks"][:, :count], np.mean(probs, 0)[:, :count],
                               atol=1e-5)


# -- the interleaved mask branch in the task -----------------------------------------------

def _spy_losses(monkeypatch, task, model):
    """One eager `build_losses`: every `_sample` call and the RoIs each mask branch gets."""
    samples, masks = spy_samples(monkeypatch), []
    mask_fn = HybridTaskCascade.mask_branch

    def spy_mask(self, features, rois, stage, semantic_feature=None, training=False):
        masks.append((stage, np.asarray(rois)))
        return mask_fn(self, features, rois, stage, semantic_feature, training)

    monkeypatch.setattr(HybridTaskCascade, "mask_branch", spy_mask)
    boxes = []
    box_fn = HybridTaskCascade.box_branch

    def spy_box(self, features, rois, stage, semantic_feature=None, training=False):
        logits, deltas = box_fn(self, features, rois, stage, semantic_feature, training)
        boxes.append(np.asarray(deltas))
        return logits, deltas

    monkeypatch.setattr(HybridTaskCascade, "box_branch", spy_box)
    mask_losses = []
    mask_loss_fn = loss_lib.mask_loss

    def spy_mask_loss(*args):
        value = mask_loss_fn(*args)
        mask_losses.append(float(value))
        return value

    monkeypatch.setattr(loss_lib, "mask_loss", spy_mask_loss)
    losses = task.build_losses(model, tiny_batch(), training=True)
    monkeypatch.undo()
    losses = {k: float(v) for k, v in losses.items()}
    for stage, value in enumerate(mask_losses):  # mask losses carry the stage weights too
        assert losses[f"s{stage}_mask_loss"] == pytest.approx(STAGE_WEIGHTS[stage] * value)
    assert len(mask_losses) == 3
    return losses, samples, masks, boxes


def test_interleaved_mask_branch_trains_on_a_resample_of_refined_rois(htc, monkeypatch):
    task, model, _, _ = htc
    losses, samples, masks, deltas = _spy_losses(monkeypatch, task, model)
    assert "semantic_loss" not in losses
    assert set(losses) == {"rpn_cls_loss", "rpn_box_loss", "total_loss"} | {
        f"s{s}_{n}_loss" for s in range(3) for n in ("cls", "box", "mask")}
    assert len(samples) == 6 and [m[0] for m in masks] == [0, 1, 2]
    for stage in range(3):
        box_sample, mask_sample = samples[2 * stage], samples[2 * stage + 1]
        assert box_sample["iou"] == mask_sample["iou"] == STAGE_IOUS[stage]
        assert mask_sample["stds"] == STAGE_STDS[stage]
        refined = np_decode(deltas[stage][:, :, 0], box_sample["rois"], STAGE_STDS[stage])
        # The mask re-sample draws from the box sample refined by this stage, GT dropped...
        np.testing.assert_allclose(mask_sample["in_rois"], refined, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(mask_sample["in_valid"],
                                      box_sample["is_sampled"] & ~box_sample["is_gt"])
        # ...and the mask head gets that re-sample's positive slots, not the box sample's.
        np.testing.assert_array_equal(masks[stage][1], mask_sample["rois"][:, :MAX_POS])
        assert not np.array_equal(masks[stage][1], box_sample["rois"][:, :MAX_POS])
        if stage < 2:  # the same refined RoIs feed the next box stage
            np.testing.assert_array_equal(samples[2 * stage + 2]["in_rois"],
                                          mask_sample["in_rois"])


def test_not_interleaved_mask_branch_uses_the_box_sample(htc, monkeypatch):
    task, model, _, _ = htc
    monkeypatch.setattr(model.config.htc, "interleaved", False)
    assert task.config.model.htc.interleaved is False
    _, samples, masks, _ = _spy_losses(monkeypatch, task, model)
    assert len(samples) == 3
    for stage in range(3):
        np.testing.assert_array_equal(masks[stage][1], samples[stage]["rois"][:, :MAX_POS])


def test_htc_train_step_trains_every_head_and_conv_res(htc):
    task, model, _, _ = htc
    heads = [*model.box_heads, *model.mask_heads]
    before = {w.path: np.array(w) for h in heads for w in h.trainable_weights}
    assert any("conv_res" in p for p in before)
    losses = task.train_step(tiny_batch(), model, keras.optimizers.SGD(0.5))
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert all(float(losses[f"s{s}_mask_loss"]) > 0 for s in range(3))
    still = [w.path for h in heads for w in h.trainable_weights
             if np.array_equal(np.array(w), before[w.path])]
    assert not still, still


@pytest.fixture(scope="module")
def htc_semantic():
    keras.utils.set_random_seed(0)
    task = DetectionTask(tiny_config("htc_res2net50_fpn_synthetic"))
    return task, task.build_model()


def _semantic_batch() -> dict:
    batch = tiny_batch()
    labels = np.zeros(batch["images"].shape[:3], np.uint8)
    for b in range(2):
        for box, cls in zip(batch["boxes"][b], batch["classes"][b], strict=True):
            x1, y1, x2, y2 = box.astype(int)
            labels[b, y1:y2, x1:x2] = cls
    labels[:, :2] = 255  # an ignored band
    return {**batch, "semantic": labels}


def test_semantic_roi_features_are_added_as_mmdetection_pools_them(htc_semantic):
    _, model = htc_semantic
    images = tiny_batch()["images"]
    features = model.extract(images)
    logits, semantic = model.semantic(features)
    assert tuple(logits.shape) == (2, 8, 8, 4) and tuple(semantic.shape) == (2, 8, 8, 16)
    rois = np.array([[[4, 4, 30, 30], [10, 10, 40, 50]]] * 2, np.float32)
    fpn = model._pool_rois(features, rois, 14)
    at14 = np.asarray(semantic_roi_features(semantic, rois, 14,
                                            sampling_ratio=model.config.roi.sampling_ratio))
    np.testing.assert_allclose(np.asarray(model.roi_features(features, rois, 14, semantic)),
                               np.asarray(fpn) + at14, atol=1e-5)
    # Box branch: mmdetection pools 14x14 and average-pools each 2x2 window down to 7x7.
    mmdet7 = at14.reshape(2, 2, 7, 2, 7, 2, 16).mean(axis=(3, 5))
    np.testing.assert_allclose(np.asarray(model.roi_features(features, rois, 7, semantic)),
                               np.asarray(model._pool_rois(features, rois, 7)) + mmdet7,
                               atol=1e-5)


def test_semantic_loss_trains_the_semantic_head_and_needs_the_maps(htc_semantic):
    task, model = htc_semantic
    batch = _semantic_batch()
    with tf.GradientTape() as tape:
        losses = task.build_losses(model, batch)
    # The logits come from the convs, not the embedding (mmdetection's order).
    head = [w for w in model.semantic_head.trainable_weights if "embedding" not in w.path]
    grads = tape.gradient(losses["semantic_loss"], head)
    dead = [w.path for w, g in zip(head, grads, strict=True)
            if g is None or float(tf.reduce_max(tf.abs(g))) == 0]
    assert not dead, dead
    # Weighted 0.2, and ignoring the band: equals 0.2 * the loss of the labels alone.
    logits, _ = model.semantic(model.extract(batch["images"], training=True))
    expected = 0.2 * float(loss_lib.semantic_loss(logits, batch["semantic"]))
    np.testing.assert_allclose(float(losses["semantic_loss"]), expected, rtol=1e-5)
    # The box heads' losses depend on the semantic feature: it reaches them through RoIs.
    with tf.GradientTape() as tape:
        losses = task.build_losses(model, batch)
    grads = tape.gradient(losses["s0_cls_loss"], model.semantic_head.conv_embedding.weights)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    with pytest.raises(ValueError, match="semantic label maps"):
        task.build_losses(model, tiny_batch())
