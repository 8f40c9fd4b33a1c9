"""The five published mmdetection Res2Net detectors, stage by stage against mmdetection 3.3.

`tests/fixtures/mmdet/` holds what mmdetection itself computed (tools/make_mmdet_fixtures.py,
`make fixtures-mmdet`) for each config, on a one-block-per-stage R2 backbone with the heads at
their published sizes: seeded weights (regenerated here bit for bit by `mmdet_weights`), two
generated images of mixed orientation in one padded batch, and the tensors along the way.
Here the same state dict goes through the project's converter (`from_mmdet`) into the Keras
detector, which must reproduce:

- backbone (C2..C5) and FPN (P2..P6) features and the RPN's raw outputs, at probe positions;
- the RPN proposals after NMS (every one of mmdetection's, in the resized image);
- each box stage's RoI features (adaptive RoIAlign, HTC's semantic features added), class
  logits and deltas on mmdetection's own RoIs; each mask stage's logits on the final boxes;
- HTC's semantic head;
- the final detections in original-image pixels, end to end from the images: each of
  mmdetection's 50 best per image has a Keras detection of the same class with box IoU >=
  0.99 and score within 1e-3, and their pasted binary masks have IoU >= 0.97; where a float32
  tie at an RPN cut swaps a proposal and one goes missing, the RoI stage on mmdetection's
  own proposals finds all 50 (see there).

The network input is mmdetection's resized uint8 image, so these compare the network; our
own resize of the original is compared separately (OpenCV's fixed-point bilinear).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from mmdet_weights import FIXTURES, load_fixture, rebuild_state_dict

from keras_res2net.detection import configs
from keras_res2net.detection.convert import from_mmdet
from keras_res2net.detection.modeling.detector import padding_mask, select_class
from keras_res2net.detection.ops.boxes import pairwise_iou
from keras_res2net.imagenet import preprocess_input

EXPERIMENTS = {
    "faster_rcnn": "faster_rcnn_res2net101_fpn_coco",
    "mask_rcnn": "mask_rcnn_res2net101_fpn_coco",
    "cascade_rcnn": "cascade_rcnn_res2net101_fpn_coco",
    "cascade_mask_rcnn": "cascade_mask_rcnn_res2net101_fpn_coco",
    "htc": "htc_res2net101_fpn_coco",
}
MASK_MODELS = ["mask_rcnn", "cascade_mask_rcnn", "htc"]
# `MMDET_FIXTURES=DIR` points the same tests at other fixtures, e.g. the full-size R2-101 ones
# `tools/make_mmdet_fixtures.py --depth 101 --scale 1333x800 --out DIR` writes (not committed).
FIXTURE_DIR = pathlib.Path(os.environ.get("MMDET_FIXTURES", FIXTURES))
NAMES = [name for name in EXPERIMENTS if (FIXTURE_DIR / f"{name}.json").exists()]
if FIXTURE_DIR == FIXTURES:
    assert NAMES == list(EXPERIMENTS), f"committed fixtures missing: {NAMES}"
LEVELS = ("P2", "P3", "P4", "P5", "P6")
TOP_DETECTIONS = 50
# Intermediate tensors: float32 noise of a different summation order, relative to the
# tensor's largest magnitude (mmdetection's own CPU and GPU runs differ by as much).
RELATIVE = 2e-4


def fixture_config(name: str, fixture) -> configs.ExperimentConfig:
    """The registered experiment at the fixture's test scale; HTC merges masks as 3.3 does."""
    config = configs.get_experiment(EXPERIMENTS[name])
    config.data.max_size = tuple(fixture.meta["test_scale"])
    if config.model.htc is not None:
        config.model.htc.test_mask_merge = "last"  # mmdetection 3.3 (the fixtures' version)
    return config


class Case:
    """One config: the converted detector, its fixture and the shared forward pieces."""

    def __init__(self, name: str):
        self.name = name
        self.fixture = load_fixture(name, FIXTURE_DIR)
        self.arrays = self.fixture.arrays
        self.meta = self.fixture.meta
        self.config = fixture_config(name, self.fixture)
        self.model = from_mmdet(rebuild_state_dict(self.fixture), self.config)
        images = self.meta["images"]
        height, width = images[0]["batch_input_shape"]
        self.images = np.zeros((len(images), height, width, 3), np.float32)
        for i, image in enumerate(images):
            resized = self.arrays[f"img{i}.resized"]
            assert list(resized.shape[:2]) == image["img_shape"]
            self.images[i, : resized.shape[0], : resized.shape[1]] = resized
        self.sizes = np.array([image["img_shape"] for image in images], np.float32)
        normalised = preprocess_input(self.images) * padding_mask(self.images.shape, self.sizes)
        # Compiled: eagerly, Keras keeps every backbone activation alive (over 15 GB for the
        # full-size R2-101 fixtures at 1216x1216, batch 2; 2.6 GB as a tf.function).
        self.backbone_features = tf.function(
            lambda x: self.model.backbone(x, training=False))(normalised)
        self.features = self.model.fpn(self.backbone_features)
        self.semantic_feature = None
        if hasattr(self.model, "semantic"):
            self.semantic_logits, self.semantic_feature = self.model.semantic(self.features)

    @property
    def cascade(self) -> bool:
        return self.config.model.cascade is not None

    def image_rois(self, rois: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, N, 4) padded per-image RoIs from mmdetection's (R, 5), and each image's rows."""
        rows = [np.flatnonzero(rois[:, 0] == i) for i in range(len(self.images))]
        count = max(len(r) for r in rows)
        batch = np.zeros((len(self.images), count, 4), np.float32)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = rois[r, 1:]
        return batch, rows

    def flat(self, per_image: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
        """Undo `image_rois`: (B, N, ...) back to mmdetection's row order (R, ...)."""
        out = np.zeros((sum(len(r) for r in rows), *per_image.shape[2:]), per_image.dtype)
        for i, r in enumerate(rows):
            out[r] = per_image[i, : len(r)]
        return out


@pytest.fixture(scope="module", params=NAMES)
def case(request) -> Case:
    return Case(request.param)


def assert_probe(arrays: dict, name: str, nchw: np.ndarray, relative: float = RELATIVE):
    """Our tensor (already NCHW) equals mmdetection's at the probed indices, and in shape."""
    assert tuple(nchw.shape) == tuple(arrays[f"{name}.shape"]), name
    expected = arrays[f"{name}.val"]
    actual = nchw.reshape(-1)[arrays[f"{name}.idx"]]
    scale = float(arrays[f"{name}.stats"][2])
    error = float(np.abs(actual - expected).max())
    assert error <= relative * scale, f"{name}: max|diff| {error:.3g} vs scale {scale:.3g}"
    return error / scale


def nchw(x) -> np.ndarray:
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def test_backbone_fpn_and_rpn_outputs(case):
    arrays = case.arrays
    for index, level in enumerate(LEVELS[:4]):
        assert_probe(arrays, f"backbone.{index}", nchw(case.backbone_features[level]))
    for index, level in enumerate(LEVELS):
        assert_probe(arrays, f"neck.{index}", nchw(case.features[level]))
    scores, deltas, _ = case.model.rpn(case.features)
    for index, level in enumerate(LEVELS):
        height, width = case.features[level].shape[1:3]
        logits = np.asarray(scores[level]).reshape(len(case.images), height, width, -1)
        boxes = np.asarray(deltas[level]).reshape(len(case.images), height, width, -1)
        assert_probe(arrays, f"rpn.cls_score.{index}", nchw(logits))
        assert_probe(arrays, f"rpn.bbox_pred.{index}", nchw(boxes))


def test_rpn_proposals(case):
    """Every mmdetection proposal has a Keras proposal in the same place (IoU >= 0.999)."""
    scores, deltas, anchors = case.model.rpn(case.features)
    rpn = case.config.model.rpn
    proposals, valid = case.model.propose(scores, deltas, anchors, case.sizes,
                                          rpn.post_nms_topk, rpn.test_pre_nms_topk)
    proposals, valid = np.asarray(proposals), np.asarray(valid)
    for i in range(len(case.images)):
        expected = case.arrays[f"rpn.proposals{i}.bboxes"]
        ours = proposals[i][valid[i]]
        assert len(ours) == len(expected)
        iou = np.asarray(pairwise_iou(expected, ours)).max(axis=1)
        # The 300 best all match; further down, near-equal scores at a level's nms_pre cut or
        # NMS ties may swap a few of the 1000 (mmdetection's own CPU and GPU runs do too).
        assert iou[:300].min() >= 0.999, np.flatnonzero(iou[:300] < 0.999)
        assert (iou >= 0.999).mean() >= 0.99, np.sort(iou)[:5]


def box_stage_outputs(case: Case, stage: int, rois: np.ndarray):
    """Our stage `stage` RoI features, logits and deltas on mmdetection's RoIs."""
    model = case.model
    size = case.config.model.roi.box_pool_size
    if case.cascade:
        pooled = model.roi_features(case.features, rois, size, case.semantic_feature)
        logits, deltas = model.box_heads[stage](pooled)
    else:
        pooled = model._pool_rois(case.features, rois, size)
        logits, deltas = model.box_head(pooled)
    return np.asarray(pooled), np.asarray(logits), np.asarray(deltas)


def test_box_heads_on_mmdetections_rois(case):
    for stage in case.meta["stages"]["bbox"]:
        rois, rows = case.image_rois(case.arrays[f"bbox{stage}.rois"])
        pooled, logits, deltas = box_stage_outputs(case, stage, rois)
        assert_probe(case.arrays, f"bbox{stage}.head_input",
                     np.transpose(case.flat(pooled, rows), (0, 3, 1, 2)))
        kept = case.arrays[f"bbox{stage}.rows"]
        logits = case.flat(logits, rows)[kept]
        # mmdetection puts the background logit last; ours is first.
        logits = np.concatenate([logits[:, 1:], logits[:, :1]], axis=1)
        deltas = case.flat(deltas, rows)[kept].reshape(len(kept), -1)
        for ours, name in ((logits, "cls_score"), (deltas, "bbox_pred")):
            expected = case.arrays[f"bbox{stage}.{name}"]
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(ours, expected, atol=RELATIVE * scale,
                                       err_msg=f"stage {stage} {name}")


@pytest.mark.parametrize("case", [n for n in MASK_MODELS if n in NAMES], indirect=True)
def test_mask_heads_on_the_final_boxes(case):
    rois, rows = case.image_rois(case.arrays["mask.rois"])
    labels = [case.arrays[f"det{i}.labels"] for i in range(len(case.images))]
    classes = np.zeros(rois.shape[:2], np.int32)
    for i, label in enumerate(labels):
        classes[i, : len(label)] = label
    model = case.model
    if case.cascade:
        stage_logits = model.stage_mask_logits(case.features, rois, case.semantic_feature)
        pooled = model.roi_features(case.features, rois, case.config.model.roi.mask_pool_size,
                                    case.semantic_feature)
    else:
        stage_logits = [model.mask_branch(case.features, rois)]
        pooled = model._pool_rois(case.features, rois, case.config.model.roi.mask_pool_size)
    for stage in case.meta["stages"]["mask"]:
        assert_probe(case.arrays, f"mask{stage}.head_input",
                     np.transpose(case.flat(np.asarray(pooled), rows), (0, 3, 1, 2)))
        ours = case.flat(np.asarray(select_class(stage_logits[stage], classes)), rows)
        kept = case.arrays[f"mask{stage}.rows"]
        expected = case.arrays[f"mask{stage}.mask_pred"]
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(ours[kept], expected, atol=RELATIVE * scale,
                                   err_msg=f"mask stage {stage}")


@pytest.mark.parametrize("case", [n for n in ["htc"] if n in NAMES], indirect=True)
def test_htc_semantic_head(case):
    assert_probe(case.arrays, "semantic.pred", nchw(case.semantic_logits))
    assert_probe(case.arrays, "semantic.feat", nchw(case.semantic_feature))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(pairwise_iou(a.astype(np.float32), b.astype(np.float32)))


def unmatched_detections(case: Case, outputs: dict) -> list[list[int]]:
    """Per image, which of mmdetection's 50 best detections have no Keras detection of the
    same class with box IoU >= 0.99 and score within 1e-3; matched pairs' pasted masks must
    have IoU >= 0.97."""
    from keras_res2net.detection.task import DetectionTask

    images = case.meta["images"]
    batch = {"image_ids": np.arange(len(images)),
             "scales": np.array([image["scale_factor"][::-1] for image in images]),
             "original_sizes": np.array([image["ori_shape"] for image in images])}
    results = DetectionTask(case.config).postprocess(outputs, batch)
    missing_per_image = []
    for i, ours in enumerate(results):
        boxes = case.arrays[f"det{i}.bboxes"][:TOP_DETECTIONS]
        scores = case.arrays[f"det{i}.scores"][:TOP_DETECTIONS]
        labels = case.arrays[f"det{i}.labels"][:TOP_DETECTIONS]
        assert len(boxes) == TOP_DETECTIONS and scores.min() > 0.05
        iou = box_iou(boxes, ours["boxes"])
        same = labels[:, None] == ours["classes"][None] - 1
        close = np.abs(scores[:, None] - ours["scores"][None]) <= 1e-3
        match = np.where(same & close, iou, 0.0)
        found = match.max(axis=1) >= 0.99
        missing_per_image.append(np.flatnonzero(~found).tolist())
        if "masks" in ours and found.any():
            width = images[i]["ori_shape"][1]
            expected = np.unpackbits(case.arrays[f"det{i}.masks"][:TOP_DETECTIONS], axis=-1,
                                     count=width).astype(bool)[found]
            pasted = ours["masks"][match.argmax(axis=1)[found]].astype(bool)
            inter = (expected & pasted).sum(axis=(1, 2))
            union = (expected | pasted).sum(axis=(1, 2))
            mask_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
            assert mask_iou.min() >= 0.97, f"image {i}: mask IoU {np.sort(mask_iou)[:3]}"
    return missing_per_image


def detections_from_mmdetections_proposals(case: Case) -> dict:
    """The whole RoI stage (every cascade refinement, score averaging, per-class NMS, masks)
    run on mmdetection's own proposals instead of ours."""
    proposals = np.zeros((len(case.images), case.config.model.rpn.post_nms_topk, 4), np.float32)
    valid = np.zeros(proposals.shape[:2], bool)
    for i in range(len(case.images)):
        boxes = case.arrays[f"rpn.proposals{i}.bboxes"]
        proposals[i, : len(boxes)], valid[i, : len(boxes)] = boxes, True
    return case.model.detect_proposals(case.features, proposals, valid, case.sizes)


@pytest.mark.slow
def test_final_detections_and_masks(case):
    """From the images to detections and pasted masks in original-image pixels: each of
    mmdetection's 50 best per image found. The proposals may differ in a tie at a level's
    nms_pre cut (two logits 5e-6 apart in the HTC fixture), which can change one final
    detection: an image may miss one only where its proposals differ, and then the RoI stage
    alone, on mmdetection's proposals, must find all 50 (where nothing is missing, that run
    would repeat what this one proved)."""
    outputs = tf.function(case.model)({"images": case.images, "image_sizes": case.sizes})
    missing = unmatched_detections(case, outputs)
    assert all(len(m) <= 1 for m in missing), missing
    if any(missing):
        _, proposals, valid = case.model.inference_proposals(case.images, case.sizes)
        differ = [box_iou(case.arrays[f"rpn.proposals{i}.bboxes"],
                          np.asarray(proposals[i])[np.asarray(valid[i])]).max(axis=1).min()
                  < 0.999 for i in range(len(case.images))]
        assert all(differ[i] for i, m in enumerate(missing) if m), (missing, differ)
        strict = unmatched_detections(case, detections_from_mmdetections_proposals(case))
        assert strict == [[] for _ in case.images], strict


def test_our_resize_matches_mmcv_within_one_level():
    """The pipeline's bilinear resize (TF, rounded) against mmcv's (OpenCV, fixed point):
    sizes equal, pixel values within one level."""
    from keras_res2net.detection.data.pipeline import resize_and_pad

    fixture = load_fixture(NAMES[0], FIXTURE_DIR)
    for i, image in enumerate(fixture.meta["images"]):
        original = fixture.arrays[f"img{i}.original"]
        example = {"image": tf.constant(original), "boxes": tf.zeros((0, 4)),
                   "classes": tf.zeros((0,), tf.int32),
                   "masks": tf.zeros((0, *original.shape[:2]), tf.uint8),
                   "image_id": tf.constant(0, tf.int64)}
        out = resize_and_pad(example, tuple(fixture.meta["test_scale"]), 32, None)
        assert list(np.asarray(out["image_sizes"]).astype(int)) == image["img_shape"]
        height, width = image["img_shape"]
        ours = np.asarray(out["images"])[:height, :width]
        expected = fixture.arrays[f"img{i}.resized"].astype(np.float32)
        assert np.abs(ours - expected).max() <= 1.0
