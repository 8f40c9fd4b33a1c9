"""Cascade R-CNN, Cascade Mask R-CNN and HTC (mmdetection's CascadeRoIHead / HybridTaskCascade).

A cascade runs several box stages one after the other: each stage pools the boxes the
previous stage regressed and regresses them again, trained at a stricter IoU threshold
(see the task). At test time the stages' class logits are averaged and the last stage's
boxes kept; every stage's mask head runs on the final boxes and their sigmoid masks are
averaged. `HybridTaskCascade` adds mask information flow (each mask head also receives the
previous heads' mask features) and the optional semantic branch, whose RoI features are
added to the box and mask RoI features.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_res2net.detection.configs import ModelConfig
from keras_res2net.detection.modeling.detector import TwoStageDetector, select_class
from keras_res2net.detection.modeling.heads import BoxHead, MaskHead
from keras_res2net.detection.ops import boxes as box_ops


class CascadeRCNN(TwoStageDetector):
    """Cascade (Mask) R-CNN: `config.cascade` stages of box heads (and mask heads)."""

    def __init__(self, config: ModelConfig, backbone: keras.Model, **kwargs):
        super().__init__(config, backbone, **kwargs)
        if config.cascade is None:
            raise ValueError("CascadeRCNN needs ModelConfig.cascade.")
        heads = config.heads
        agnostic = config.cascade.class_agnostic
        self.box_heads = [BoxHead(config.num_classes, heads.fc_dim, class_agnostic=agnostic,
                                  name=f"box_head_s{stage}")
                          for stage in range(self.num_stages)]
        self.mask_heads = [MaskHead(config.num_classes, heads.mask_channels, heads.mask_convs,
                                    with_conv_res=self._mask_residual(stage),
                                    name=f"mask_head_s{stage}")
                           for stage in range(self.num_stages)] if config.include_mask else []

    @property
    def num_stages(self) -> int:
        return self.config.cascade.num_stages

    def _mask_residual(self, stage: int) -> bool:
        """Whether stage `stage`'s mask head takes the previous stage's mask features."""
        return False

    # -- pieces the task composes ---------------------------------------------------------
    def semantic(self, features: dict, training: bool = False):
        """`(logits, feature)` of the semantic branch; `(None, None)` without one."""
        return None, None

    def roi_features(self, features: dict, rois, output_size: int, semantic_feature=None):
        """Multi-level RoIAlign of `rois`; HTC adds the semantic feature's RoI pooling."""
        return self._pool_rois(features, rois, output_size)

    def box_branch(self, features: dict, rois, stage: int, semantic_feature=None,
                   training: bool = False):
        """Stage `stage`'s class logits (B, N, K+1) and deltas (B, N, 1 or K, 4)."""
        pooled = self.roi_features(features, rois, self.config.roi.box_pool_size,
                                   semantic_feature)
        return self.box_heads[stage](pooled, training=training)

    def mask_branch(self, features: dict, rois, stage: int, semantic_feature=None,
                    training: bool = False):
        """Stage `stage`'s mask logits (B, N, 28, 28, K): its head alone (HTC overrides)."""
        pooled = self.roi_features(features, rois, self.config.roi.mask_pool_size,
                                   semantic_feature)
        return self.mask_heads[stage](pooled, training=training)

    def stage_mask_logits(self, features: dict, rois, semantic_feature=None,
                          num_stages: int | None = None, training: bool = False) -> list:
        """Mask logits of the first `num_stages` stages (all by default) for the same RoIs."""
        pooled = self.roi_features(features, rois, self.config.roi.mask_pool_size,
                                   semantic_feature)
        count = self.num_stages if num_stages is None else num_stages
        return [self.mask_heads[stage](pooled, training=training) for stage in range(count)]

    def decode_boxes(self, rois, deltas, stage: int, image_sizes):
        """Stage `stage`'s regressed boxes (B, N, 1 or K, 4), clipped to each image."""
        boxes = box_ops.decode(deltas, ops.expand_dims(rois, 2),
                               self.config.cascade.stage_box_stds[stage])
        return box_ops.clip_to_images(boxes, image_sizes)

    def refine(self, rois, logits, deltas, stage: int, image_sizes, classes=None):
        """The boxes stage `stage` hands to the next one (B, N, 4), without gradient.

        Class-agnostic heads have one box per RoI. Class-specific heads use the box of
        `classes` (1..K) where given and positive, else of the most likely object class,
        as mmdetection's `refine_bboxes`.
        """
        boxes = self.decode_boxes(rois, deltas, stage, image_sizes)
        if ops.shape(boxes)[2] == 1:
            return ops.stop_gradient(boxes[:, :, 0])
        best = ops.argmax(logits[..., 1:], axis=-1)
        if classes is not None:
            best = ops.where(classes > 0, classes - 1, best)
        pick = ops.one_hot(best, ops.shape(boxes)[2], dtype=boxes.dtype)
        return ops.stop_gradient(ops.sum(boxes * pick[..., None], axis=2))

    # -- inference ------------------------------------------------------------------------
    def detect_proposals(self, features: dict, rois, valid, image_sizes) -> dict:
        """Detections as `MaskRCNN`'s: stage logits averaged, last stage's boxes, masks
        merged over the stages' mask heads (`merge_stage_masks`)."""
        _, semantic_feature = self.semantic(features)
        stage_logits = []
        for stage in range(self.num_stages):
            logits, deltas = self.box_branch(features, rois, stage, semantic_feature)
            stage_logits.append(logits)
            if stage < self.num_stages - 1:
                rois = self.refine(rois, logits, deltas, stage, image_sizes)
        boxes = self.decode_boxes(rois, deltas, self.num_stages - 1, image_sizes)
        probs = average_stage_scores(stage_logits)[..., 1:]
        probs = probs * ops.cast(valid, probs.dtype)[..., None]
        outputs, det_classes = self.detect(boxes, probs)
        if self.mask_heads:
            logits = self.stage_mask_logits(features, outputs["boxes"], semantic_feature)
            outputs["masks"] = self.merge_stage_masks(logits, det_classes)
        return outputs

    def merge_stage_masks(self, stage_logits: list, classes):
        """Test-time mask of each detection: the mean of the stages' sigmoid masks (Cascade
        Mask R-CNN in every mmdetection version)."""
        return average_stage_masks(stage_logits, classes)


def average_stage_scores(stage_logits: list):
    """Softmax of the stages' mean class logits (mmdetection averages logits, then softmax)."""
    return ops.softmax(sum(stage_logits) / len(stage_logits), axis=-1)


def average_stage_masks(stage_logits: list, classes):
    """Mean over stages of the sigmoid mask of each detection's class (0-based `classes`)."""
    probs = [ops.sigmoid(select_class(logits, classes)) for logits in stage_logits]
    return sum(probs) / len(probs)
