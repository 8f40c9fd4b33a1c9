"""The detection task: builds the model, inputs, optimizer and losses; runs one step.

As the Model Garden's `MaskRCNNTask`: `build_model`, `build_inputs`, `build_losses`,
`train_step`, `validation_step`, plus `postprocess`, which maps detections back to the
original images for evaluation. Targets (anchor and RoI assignment, sampling, mask crops)
are computed inside the step from padded ground truth, so one `tf.function` covers it all.
The gradient tape is TensorFlow's: the training loop runs under `tf.distribute`.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_res2net.detection import losses as loss_lib
from keras_res2net.detection.configs import ExperimentConfig
from keras_res2net.detection.data.coco import CocoDataset, load_coco
from keras_res2net.detection.data.pipeline import build_dataset
from keras_res2net.detection.modeling.backbone import build_backbone
from keras_res2net.detection.modeling.detector import MaskRCNN, select_class
from keras_res2net.detection.modeling.roi_align import crop_masks
from keras_res2net.detection.ops import boxes as box_ops
from keras_res2net.detection.ops.assign import assign
from keras_res2net.detection.ops.masks import paste_masks
from keras_res2net.detection.ops.sampling import balanced_mask, sample_indices
from keras_res2net.detection.schedules import WarmupStepDecay


def _gather(values, indices):
    """Rows of (B, M, ...) `values` at (B, N) `indices`."""
    expanded = ops.reshape(indices, (*ops.shape(indices), *([1] * (len(values.shape) - 2))))
    return ops.take_along_axis(values, expanded, axis=1)


class DetectionTask:
    """Everything an experiment needs, built from its `ExperimentConfig`."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.seed = keras.random.SeedGenerator(config.train.seed)

    # -- builders -------------------------------------------------------------------------
    def build_model(self, backbone_weights: str | None = None) -> MaskRCNN:
        """The detector, with its variables created (one call on a small blank image)."""
        model = MaskRCNN(self.config.model, build_backbone(self.config.model.backbone,
                                                           backbone_weights))
        model(np.zeros((1, 64, 64, 3), np.float32))
        return model

    def load_data(self, data_dir, training: bool) -> CocoDataset:
        data = self.config.data
        json_path, images = ((data.train_json, data.train_images) if training
                             else (data.val_json, data.val_images))
        return load_coco(Path(data_dir) / json_path, Path(data_dir) / images,
                         needs_masks=self.config.model.include_mask)

    def build_inputs(self, dataset: CocoDataset, training: bool,
                     batch_size: int | None = None) -> tf.data.Dataset:
        data = self.config.data
        return build_dataset(dataset, batch_size=batch_size or data.batch_size,
                             max_size=data.max_size, size_divisor=data.size_divisor,
                             max_instances=data.max_instances,
                             training=training and data.random_flip,
                             cache=len(dataset.records) <= 5000, seed=self.config.train.seed)

    def build_optimizer(self) -> keras.optimizers.Optimizer:
        """SGD with momentum; the learning rate scales linearly from its per-16-image base."""
        train = self.config.train
        base = train.learning_rate * self.config.data.batch_size / 16.0
        decay = train.decay_steps
        if decay is None:
            decay = ()  # epoch-based boundaries are converted by the trainer
        schedule = WarmupStepDecay(base, train.warmup_steps, train.warmup_ratio, decay)
        if train.optimizer == "adamw":
            return keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay)
        if train.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' or 'adamw'; got {train.optimizer!r}.")
        return keras.optimizers.SGD(schedule, momentum=train.momentum,
                                    weight_decay=train.weight_decay)

    # -- losses ---------------------------------------------------------------------------
    def build_losses(self, model: MaskRCNN, inputs: dict, training: bool = True) -> dict:
        """All losses for a batch of padded ground truth; `total_loss` is their sum."""
        cfg = self.config.model
        images, gt_boxes = inputs["images"], ops.cast(inputs["boxes"], "float32")
        gt_classes = ops.cast(inputs["classes"], "int32")
        gt_valid = gt_classes > 0
        image_shape = (ops.cast(ops.shape(images)[1], "float32"),
                       ops.cast(ops.shape(images)[2], "float32"))
        features = model.extract(images, training=training)
        scores, deltas, anchors = model.rpn(features)

        # RPN targets over all levels at once.
        logits = ops.concatenate(list(scores.values()), axis=1)
        rpn_deltas = ops.concatenate(list(deltas.values()), axis=1)
        all_anchors = ops.concatenate(list(anchors.values()), axis=0)
        batch = ops.shape(images)[0]
        anchors_b = ops.broadcast_to(all_anchors[None], (batch, *ops.shape(all_anchors)))
        labels, matched, _ = assign(anchors_b, gt_boxes, gt_valid, pos_iou=cfg.rpn.pos_iou,
                                    neg_iou=cfg.rpn.neg_iou, min_pos_iou=cfg.rpn.min_pos_iou,
                                    low_quality_matches=True)
        pos, neg = balanced_mask(labels, cfg.rpn.num_samples, cfg.rpn.pos_fraction, self.seed)
        targets = box_ops.encode(_gather(gt_boxes, matched), anchors_b)
        rpn_cls, rpn_box = loss_lib.rpn_losses(logits, rpn_deltas, targets, pos, neg)

        # Second stage: proposals plus ground truth, assigned and sampled.
        topk = cfg.rpn.train_post_nms_topk or cfg.rpn.post_nms_topk
        proposals, valid = model.propose(scores, deltas, anchors, image_shape, topk)
        rois = ops.concatenate([proposals, gt_boxes], axis=1)
        roi_valid = ops.concatenate([valid, gt_valid], axis=1)
        labels, matched, _ = assign(rois, gt_boxes, gt_valid, pos_iou=cfg.roi.pos_iou,
                                    neg_iou=cfg.roi.neg_iou)
        labels = ops.where(roi_valid, labels, -1)
        index, is_pos, is_sampled = sample_indices(labels, cfg.roi.num_samples,
                                                   cfg.roi.pos_fraction, self.seed)
        rois = _gather(rois, index)
        matched = _gather(matched, index)
        classes = ops.where(is_pos, _gather(gt_classes, matched), 0)
        box_targets = box_ops.encode(_gather(gt_boxes, matched), rois, cfg.roi.box_stds)
        cls_logits, box_deltas = model.box_branch(features, rois, training=training)
        cls_loss, box_loss = loss_lib.box_head_losses(cls_logits, box_deltas, classes,
                                                      box_targets, is_pos, is_sampled)
        result = {"rpn_cls_loss": rpn_cls, "rpn_box_loss": rpn_box, "cls_loss": cls_loss,
                  "box_loss": box_loss}
        if cfg.include_mask:
            # Positives come first in the sample, so the first `max_pos` RoIs hold them all.
            max_pos = int(cfg.roi.num_samples * cfg.roi.pos_fraction)
            mask_rois = rois[:, :max_pos]
            mask_logits = model.mask_branch(features, mask_rois, training=training)
            mask_logits = select_class(mask_logits, ops.maximum(classes[:, :max_pos] - 1, 0))
            size = ops.shape(mask_logits)[2]
            mask_targets = crop_masks(inputs["masks"], ops.stop_gradient(mask_rois),
                                      matched[:, :max_pos], output_size=size)
            mask_targets = ops.cast(mask_targets >= 0.5, "float32")
            result["mask_loss"] = loss_lib.mask_loss(mask_logits, mask_targets,
                                                     is_pos[:, :max_pos])
        result["total_loss"] = sum(result.values())
        return result

    # -- steps ----------------------------------------------------------------------------
    def train_step(self, inputs: dict, model: MaskRCNN,
                   optimizer: keras.optimizers.Optimizer, num_replicas: int = 1) -> dict:
        """One optimisation step on this replica's batch; returns its (mean) losses.

        Under `strategy.run` the optimizer sums the replicas' gradients, so each replica
        differentiates its loss divided by `num_replicas`: the update is then that of the
        loss averaged over the global batch. Wrap in `tf.function` to compile.
        """
        with tf.GradientTape() as tape:
            losses = self.build_losses(model, inputs, training=True)
            scaled = losses["total_loss"] / num_replicas
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        grads = [g for g, _ in pairs]
        if self.config.train.gradient_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.config.train.gradient_clip_norm)
        optimizer.apply_gradients(zip(grads, [v for _, v in pairs], strict=True))
        return losses

    def validation_step(self, inputs: dict, model: MaskRCNN) -> dict:
        """Detections for a batch (padded-image coordinates)."""
        return model(inputs["images"], training=False)

    def postprocess(self, outputs: dict, inputs: dict) -> list[dict]:
        """Per image: boxes (original pixels), scores, classes and pasted binary masks."""
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        results = []
        for i, image_id in enumerate(np.asarray(inputs["image_ids"])):
            count = int(outputs["num_detections"][i])
            h_scale, w_scale = np.asarray(inputs["scales"])[i]
            height, width = (int(v) for v in np.asarray(inputs["original_sizes"])[i])
            boxes = outputs["boxes"][i, :count] / np.array([w_scale, h_scale, w_scale,
                                                            h_scale])
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
            detection = {"image_id": int(image_id), "boxes": boxes,
                         "scores": outputs["scores"][i, :count],
                         "classes": outputs["classes"][i, :count]}
            if "masks" in outputs:
                detection["masks"] = paste_masks(outputs["masks"][i, :count], boxes, height,
                                                 width)
            results.append(detection)
        return results
