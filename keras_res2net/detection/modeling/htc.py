"""Hybrid Task Cascade (Chen et al., CVPR 2019; mmdetection's HybridTaskCascadeRoIHead).

On top of Cascade Mask R-CNN: mask information flow (stage t's mask head adds a 1x1-conv
projection of stage t-1's mask features, computed by running the earlier heads on the same
RoIs) and an optional fused semantic branch whose feature map is RoI-pooled and added to the
box (7x7) and mask (14x14) RoI features. mmdetection pools the semantic map at 14x14 and
average-pools to 7x7 for boxes: the same numbers as pooling at 7x7 with twice the samples
per bin, which is what this does. At test time the stages' masks are merged as
`HTCConfig.test_mask_merge` says (mmdetection 2.x and 3.x differ). The interleaved training
order lives in the task.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_res2net.detection.configs import ModelConfig
from keras_res2net.detection.modeling.cascade import CascadeRCNN
from keras_res2net.detection.modeling.detector import select_class
from keras_res2net.detection.modeling.semantic import FusedSemanticHead, semantic_roi_features

SEMANTIC_LEVEL = "P3"  # mmdetection's fusion_level=1: the stride-8 map


class HybridTaskCascade(CascadeRCNN):
    """HTC: `config.htc` switches information flow and the semantic branch."""

    def __init__(self, config: ModelConfig, backbone: keras.Model, **kwargs):
        if config.htc is None or not config.include_mask:
            raise ValueError("HybridTaskCascade needs ModelConfig.htc and include_mask=True.")
        super().__init__(config, backbone, **kwargs)
        htc = config.htc
        self.semantic_head = None
        if htc.semantic:
            self.semantic_head = FusedSemanticHead(
                htc.semantic_classes, channels=config.heads.fpn_channels,
                num_convs=htc.semantic_convs, fusion_level=SEMANTIC_LEVEL,
                name="semantic_head")

    def _mask_residual(self, stage: int) -> bool:
        return self.config.htc.mask_info_flow and stage > 0

    def semantic(self, features: dict, training: bool = False):
        if self.semantic_head is None:
            return None, None
        return self.semantic_head(features, training=training)

    def roi_features(self, features: dict, rois, output_size: int, semantic_feature=None):
        pooled = self._pool_rois(features, rois, output_size)
        if semantic_feature is None:
            return pooled
        # mmdetection pools the semantic map at the mask size (14) and averages down to the
        # box size: the same as pooling at the box size with the finer sample count.
        roi = self.config.roi
        factor = max(1, roi.mask_pool_size // output_size)
        semantic = semantic_roi_features(semantic_feature, ops.stop_gradient(rois),
                                         output_size=output_size,
                                         sampling_ratio=roi.sampling_ratio * factor,
                                         adaptive_grid=output_size * factor)
        return pooled + semantic

    def merge_stage_masks(self, stage_logits: list, classes):
        """`HTCConfig.test_mask_merge`: "mean" of the three stages' sigmoid masks
        (mmdetection 2.x, the published results) or the "last" stage's alone (mmdetection
        3.x; its head still receives the chained mask features of the earlier heads)."""
        merge = self.config.htc.test_mask_merge
        if merge == "last":
            return ops.sigmoid(select_class(stage_logits[-1], classes))
        if merge != "mean":
            raise ValueError(f"HTCConfig.test_mask_merge must be 'mean' or 'last'; got "
                             f"{merge!r}.")
        return super().merge_stage_masks(stage_logits, classes)

    def mask_branch(self, features: dict, rois, stage: int, semantic_feature=None,
                    training: bool = False):
        """Stage `stage`'s mask logits; the earlier heads only supply their features."""
        if not self.config.htc.mask_info_flow:
            return super().mask_branch(features, rois, stage, semantic_feature, training)
        pooled = self.roi_features(features, rois, self.config.roi.mask_pool_size,
                                   semantic_feature)
        carried = None
        for earlier in range(stage):
            carried = self.mask_heads[earlier].features(pooled, carried)
        return self.mask_heads[stage](pooled, carried, training=training)

    def stage_mask_logits(self, features: dict, rois, semantic_feature=None,
                          num_stages: int | None = None, training: bool = False) -> list:
        """Mask logits of the first `num_stages` stages, chaining the mask features."""
        if not self.config.htc.mask_info_flow:
            return super().stage_mask_logits(features, rois, semantic_feature, num_stages,
                                              training)
        pooled = self.roi_features(features, rois, self.config.roi.mask_pool_size,
                                   semantic_feature)
        count = self.num_stages if num_stages is None else num_stages
        logits, carried = [], None
        for stage in range(count):
            stage_logits, carried = self.mask_heads[stage](pooled, carried,
                                                           return_features=True,
                                                           training=training)
            logits.append(stage_logits)
        return logits

