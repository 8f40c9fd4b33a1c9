"""Faster R-CNN / Mask R-CNN with FPN: the model that holds the layers and runs inference.

`TwoStageDetector` owns what every two-stage detector here shares: backbone, FPN, RPN,
proposals, RoI pooling and the final NMS. `MaskRCNN` adds one box head and (optionally) one
mask head; the cascades (modeling/cascade.py) add several. The pieces (`extract`, `rpn`,
`propose`, `box_branch`, `mask_branch`) are what the task's train step composes with
targets and losses; `call` runs the inference path: proposals, box head, per-class NMS and
masks for the kept detections. Images are RGB in [0, 255], padded to a multiple of 32;
outputs are in the padded image's pixel coordinates.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_res2net.detection.configs import ModelConfig
from keras_res2net.detection.modeling.anchors import multilevel_anchors
from keras_res2net.detection.modeling.fpn import FPN
from keras_res2net.detection.modeling.heads import BoxHead, MaskHead, RPNHead
from keras_res2net.detection.modeling.roi_align import multilevel_roi_align
from keras_res2net.detection.ops import boxes as box_ops
from keras_res2net.detection.ops.nms import per_class_nms
from keras_res2net.imagenet import preprocess_input

ROI_LEVELS = ("P2", "P3", "P4", "P5")


class TwoStageDetector(keras.Model):
    """Backbone, FPN and RPN, with the proposal and detection steps every variant shares."""

    def __init__(self, config: ModelConfig, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.backbone = backbone
        heads = config.heads
        num_anchors = len(config.anchors.scales) * len(config.anchors.ratios)
        self.fpn = FPN(heads.fpn_channels, name="fpn")
        self.rpn_head = RPNHead(heads.fpn_channels, num_anchors, name="rpn_head")

    # -- pieces ---------------------------------------------------------------------------
    @staticmethod
    def unpack(inputs):
        """`(images, image_sizes)` of a model input: an image batch, or a dict with
        "images" and optionally "image_sizes" (default: every image fills the batch)."""
        sizes = None
        if isinstance(inputs, dict):
            sizes = inputs.get("image_sizes")
            inputs = inputs["images"]
        return inputs, TwoStageDetector.image_sizes(inputs, sizes)

    @staticmethod
    def image_sizes(images, image_sizes=None):
        """(B, 2) float32 (height, width) of each image; the padded size when not given."""
        if image_sizes is not None:
            return ops.cast(image_sizes, "float32")
        shape = ops.shape(images)
        size = ops.cast(ops.stack([shape[1], shape[2]]), "float32")
        return ops.broadcast_to(size[None], (shape[0], 2))

    def extract(self, images, training: bool = False, image_sizes=None) -> dict:
        """FPN features P2..P6 of raw RGB images, normalised, then zero on the padding."""
        if training and getattr(self, "backbone_folded", False):
            raise ValueError(f"{self.name!r} has its backbone BatchNorm folded for inference "
                             "(detection.fold.fold_detector): train the unfolded detector.")
        backbone_training = training and not self.config.backbone.norm_eval
        normalised = preprocess_input(images)
        if image_sizes is not None:
            normalised = normalised * padding_mask(ops.shape(images), image_sizes)
        features = self.backbone(normalised, training=backbone_training)
        return self.fpn(features)

    def rpn(self, features: dict):
        """Per-level objectness logits, deltas and anchors (dicts keyed by level)."""
        scores, deltas = self.rpn_head(features)
        shapes = {lv: (ops.shape(f)[1], ops.shape(f)[2]) for lv, f in features.items()}
        anchors = multilevel_anchors(shapes, self.config.anchors.strides,
                                     self.config.anchors.scales, self.config.anchors.ratios)
        return scores, deltas, anchors

    def propose(self, scores: dict, deltas: dict, anchors: dict, image_sizes,
                post_nms_topk: int, pre_nms_topk: int | None = None):
        """Top-k per level, decode, clip to each image, NMS per level: (B, P, 4) boxes and
        (B, P) validity. `pre_nms_topk` defaults to the training value."""
        rpn = self.config.rpn
        pre_nms_topk = pre_nms_topk or rpn.pre_nms_topk
        all_boxes, all_scores, all_levels = [], [], []
        for index, level in enumerate(scores):
            logits = scores[level]
            count = logits.shape[1]  # None when the image size is only known at run time
            k = (ops.minimum(pre_nms_topk, ops.shape(logits)[1]) if count is None
                 else min(pre_nms_topk, count))
            top_scores, top_index = ops.top_k(logits, k)
            top_deltas = ops.take_along_axis(deltas[level], top_index[..., None], axis=1)
            top_anchors = ops.take(anchors[level], top_index, axis=0)
            boxes = box_ops.decode(top_deltas, top_anchors)
            boxes = box_ops.clip_to_images(boxes, image_sizes)
            all_boxes.append(boxes)
            all_scores.append(ops.sigmoid(top_scores))
            all_levels.append(ops.full_like(top_scores, index, dtype="int32"))
        boxes = ops.stop_gradient(ops.concatenate(all_boxes, axis=1))
        probs = ops.stop_gradient(ops.concatenate(all_scores, axis=1))
        levels = ops.concatenate(all_levels, axis=1)
        # One NMS "class" per level, as mmdetection's batched NMS over level ids;
        # empty boxes (mmdetection's min_bbox_size=0 filter) get a score below threshold.
        nonempty = box_ops.area(boxes) > 0.0
        own_level = ops.one_hot(levels, len(scores)) > 0
        per_level = ops.where(own_level, ops.where(nonempty, probs, -1.0)[..., None], -1.0)
        nms_boxes, _, _, valid = per_class_nms(
            boxes[:, :, None, :], per_level, iou_threshold=rpn.nms_iou, score_threshold=0.0,
            max_per_class=post_nms_topk, max_total=post_nms_topk)
        valid_mask = ops.arange(post_nms_topk)[None, :] < ops.cast(valid, "int32")[:, None]
        return ops.stop_gradient(nms_boxes), valid_mask

    def _pool_rois(self, features: dict, rois, output_size: int):
        """Multi-level RoIAlign of `rois` (no gradient through the boxes themselves)."""
        return multilevel_roi_align({lv: features[lv] for lv in ROI_LEVELS},
                                    ops.stop_gradient(rois), output_size=output_size,
                                    sampling_ratio=self.config.roi.sampling_ratio)

    def inference_proposals(self, images, image_sizes=None):
        """FPN features, RPN proposals (B, P, 4) and their validity for inference
        (mmdetection's test-time `nms_pre`); sizes default to the padded batch's."""
        image_sizes = self.image_sizes(images, image_sizes)
        features = self.extract(images, training=False, image_sizes=image_sizes)
        scores, deltas, anchors = self.rpn(features)
        rpn = self.config.rpn
        proposals, valid = self.propose(scores, deltas, anchors, image_sizes,
                                        rpn.post_nms_topk, rpn.test_pre_nms_topk)
        return features, proposals, valid

    def call(self, inputs, training: bool = False) -> dict:
        """Detections: boxes (B, D, 4) xyxy, scores, classes (1..K, 0 = padding),
        num_detections (B,), and masks (B, D, 28, 28) probabilities in box coordinates."""
        images, image_sizes = self.unpack(inputs)
        features, proposals, valid = self.inference_proposals(images, image_sizes)
        return self.detect_proposals(features, proposals, valid, image_sizes)

    def detect_proposals(self, features: dict, proposals, valid, image_sizes) -> dict:
        """The RoI stage of inference on given (B, P, 4) proposals: what `call` returns.

        Separate so that a test can feed the same proposals as a reference implementation."""
        raise NotImplementedError

    def detect(self, boxes, probs):
        """Per-class NMS of (B, N, K or 1, 4) boxes and (B, N, K) probabilities.

        Returns the output dict (classes 1..K, 0 = padding) and the 0-based classes.
        """
        det = self.config.detection
        det_boxes, det_scores, det_classes, num = per_class_nms(
            boxes, probs, iou_threshold=det.nms_iou, score_threshold=det.score_threshold,
            max_per_class=det.max_detections, max_total=det.max_detections)
        present = ops.arange(det.max_detections)[None, :] < ops.cast(num, "int32")[:, None]
        outputs = {"boxes": det_boxes, "scores": det_scores,
                   "classes": ops.where(present, det_classes + 1, 0),
                   "num_detections": num}
        return outputs, det_classes


class MaskRCNN(TwoStageDetector):
    """Two-stage detector; `config.include_mask=False` gives Faster R-CNN."""

    def __init__(self, config: ModelConfig, backbone: keras.Model, **kwargs):
        super().__init__(config, backbone, **kwargs)
        heads = config.heads
        self.box_head = BoxHead(config.num_classes, heads.fc_dim, name="box_head")
        self.mask_head = (MaskHead(config.num_classes, heads.mask_channels, heads.mask_convs,
                                   name="mask_head") if config.include_mask else None)

    def box_branch(self, features: dict, rois, training: bool = False):
        """Class logits (B, N, K+1) and class-specific deltas (B, N, K, 4) for RoIs."""
        pooled = self._pool_rois(features, rois, self.config.roi.box_pool_size)
        return self.box_head(pooled, training=training)

    def mask_branch(self, features: dict, rois, training: bool = False):
        """Mask logits (B, N, 28, 28, K) for RoIs."""
        pooled = self._pool_rois(features, rois, self.config.roi.mask_pool_size)
        return self.mask_head(pooled, training=training)

    # -- inference ------------------------------------------------------------------------
    def detect_proposals(self, features: dict, proposals, valid, image_sizes) -> dict:
        logits, box_deltas = self.box_branch(features, proposals)
        probs = ops.softmax(logits, axis=-1)[..., 1:]
        probs = probs * ops.cast(valid, probs.dtype)[..., None]
        stds = self.config.roi.box_stds
        boxes = box_ops.decode(box_deltas, ops.expand_dims(proposals, 2), stds)
        boxes = box_ops.clip_to_images(boxes, image_sizes)
        outputs, det_classes = self.detect(boxes, probs)
        if self.mask_head is not None:
            mask_logits = self.mask_branch(features, outputs["boxes"])
            outputs["masks"] = ops.sigmoid(select_class(mask_logits, det_classes))
        return outputs


def padding_mask(shape, image_sizes):
    """(B, H, W, 1) float32: 1 inside each image's (height, width), 0 on the padding."""
    rows = ops.cast(ops.arange(shape[1]), "float32")[None, :, None]
    cols = ops.cast(ops.arange(shape[2]), "float32")[None, None, :]
    sizes = ops.cast(image_sizes, "float32")
    inside = (rows < sizes[:, 0, None, None]) & (cols < sizes[:, 1, None, None])
    return ops.cast(inside, "float32")[..., None]


def select_class(mask_logits, classes):
    """Pick channel `classes` (0-based, (B, N)) of (B, N, S, S, K) logits -> (B, N, S, S)."""
    one_hot = ops.one_hot(classes, ops.shape(mask_logits)[-1], dtype=mask_logits.dtype)
    return ops.sum(mask_logits * one_hot[:, :, None, None, :], axis=-1)
