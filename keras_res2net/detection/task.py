"""The detection task: builds the model, inputs, optimizer and losses; runs one step.

As the Model Garden's `MaskRCNNTask`: `build_model`, `build_inputs`, `build_losses`,
`train_step`, `validation_step`, plus `postprocess`, which maps detections back to the
original images for evaluation. Targets (anchor and RoI assignment, sampling, mask crops)
are computed inside the step from padded ground truth, so one `tf.function` covers it all.
One task serves every architecture: the RPN losses are shared; the RoI losses are Mask
R-CNN's single stage or the cascade's stages (with HTC's interleaved mask branch and
semantic loss). The gradient tape is TensorFlow's: the loop runs under `tf.distribute`.
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
from keras_res2net.detection.data.sources import semantic_dir
from keras_res2net.detection.modeling.backbone import build_backbone
from keras_res2net.detection.modeling.detector import TwoStageDetector, select_class
from keras_res2net.detection.modeling.factory import build_detector
from keras_res2net.detection.modeling.roi_align import crop_box_masks, crop_masks
from keras_res2net.detection.ops.masks import paste_masks
from keras_res2net.detection.schedules import WarmupStepDecay
from keras_res2net.detection.targets import RoiSample, rpn_targets, sample_rois
from keras_res2net.detection.weight_map import build_variables
from keras_res2net.training.optim import AdamW, TorchSGD


def model_inputs(batch: dict) -> dict:
    """The detector's inputs in a pipeline batch: images and, when present, image sizes."""
    return {key: batch[key] for key in ("images", "image_sizes") if key in batch}


def mask_targets(inputs: dict, rois, gt_index, *, output_size: int):
    """(B, N, S, S) mask targets of `rois` matched to ground truth `gt_index`: from the
    pipeline's per-instance "mask_crops" (over "boxes"), or from full-image "masks"."""
    if "mask_crops" in inputs:
        return crop_box_masks(inputs["mask_crops"], inputs["boxes"], rois, gt_index,
                              output_size=output_size)
    return crop_masks(inputs["masks"], rois, gt_index, output_size=output_size)


class DetectionTask:
    """Everything an experiment needs, built from its `ExperimentConfig`."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.seed = keras.random.SeedGenerator(config.train.seed)

    # -- builders -------------------------------------------------------------------------
    def build_model(self, backbone_weights: str | None = None) -> TwoStageDetector:
        """The detector, with its variables created from the config, not by a call: the
        same variables (paths, shapes, order; test_convert.py), without a forward pass and
        Keras' symbolic trace before it (synthetic HTC: 6.0 -> 0.74 s)."""
        model = build_detector(self.config.model, build_backbone(self.config.model.backbone,
                                                                 backbone_weights))
        build_variables(model)
        return model

    def load_data(self, data_dir, training: bool) -> CocoDataset:
        data = self.config.data
        json_path, images = ((data.train_json, data.train_images) if training
                             else (data.val_json, data.val_images))
        return load_coco(Path(data_dir) / json_path, Path(data_dir) / images,
                         needs_masks=self.config.model.include_mask,
                         semantic_dir=semantic_dir(self.config, data_dir, training),
                         filter_empty_gt=training and data.filter_empty_gt,
                         min_size=data.min_image_size if training else 0)

    def build_inputs(self, dataset: CocoDataset, training: bool,
                     batch_size: int | None = None) -> tf.data.Dataset:
        data = self.config.data
        return build_dataset(dataset, batch_size=batch_size or data.batch_size,
                             max_size=data.max_size, size_divisor=data.size_divisor,
                             max_instances=data.max_instances,
                             training=training, flip=training and data.random_flip,
                             cache=len(dataset.records) <= 5000, seed=self.config.train.seed)

    def build_optimizer(self) -> keras.optimizers.Optimizer:
        """SGD with momentum, updating as PyTorch's (mmdetection's) does, weight decay
        coupled by default; the learning rate scales linearly from its per-16-image base."""
        train = self.config.train
        base = train.learning_rate * self.config.data.batch_size / 16.0
        decay = train.decay_steps
        if decay is None:
            decay = ()  # epoch-based boundaries are converted by the trainer
        schedule = WarmupStepDecay(base, train.warmup_steps, train.warmup_ratio, decay)
        if train.optimizer == "adamw":
            return AdamW(schedule, weight_decay=train.weight_decay)
        if train.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' or 'adamw'; got {train.optimizer!r}.")
        return TorchSGD(schedule, momentum=train.momentum, weight_decay=train.weight_decay,
                        decay=train.weight_decay_form)

    # -- losses ---------------------------------------------------------------------------
    def build_losses(self, model: TwoStageDetector, inputs: dict, training: bool = True) -> dict:
        """All losses for a batch of padded ground truth; `total_loss` is their sum."""
        cfg = self.config.model
        images = inputs["images"]
        image_sizes = model.image_sizes(images, inputs.get("image_sizes"))
        gt = (ops.cast(inputs["boxes"], "float32"), ops.cast(inputs["classes"], "int32"))
        gt = (*gt, gt[1] > 0)  # boxes, classes, valid
        features = model.extract(images, training=training,
                                 image_sizes=inputs.get("image_sizes"))
        scores, deltas, anchors = model.rpn(features)
        result = self._rpn_losses(scores, deltas, anchors, gt, image_sizes)
        topk = cfg.rpn.train_post_nms_topk or cfg.rpn.post_nms_topk
        proposals, valid = model.propose(scores, deltas, anchors, image_sizes, topk)
        if cfg.cascade is None:
            result.update(self._rcnn_losses(model, features, proposals, valid, gt, inputs,
                                            training))
        else:
            result.update(self._cascade_losses(model, features, proposals, valid, gt, inputs,
                                               training))
        result["total_loss"] = sum(result.values())
        return result

    def _rpn_losses(self, scores: dict, deltas: dict, anchors: dict, gt, image_sizes) -> dict:
        """Objectness and box losses of the RPN over all levels at once."""
        rpn = self.config.model.rpn
        gt_boxes, _, gt_valid = gt
        logits = ops.concatenate(list(scores.values()), axis=1)
        rpn_deltas = ops.concatenate(list(deltas.values()), axis=1)
        targets = rpn_targets(anchors, self.config.model.anchors.strides, gt_boxes, gt_valid,
                              image_sizes, pos_iou=rpn.pos_iou, neg_iou=rpn.neg_iou,
                              min_pos_iou=rpn.min_pos_iou, num_samples=rpn.num_samples,
                              pos_fraction=rpn.pos_fraction,
                              size_divisor=self.config.data.size_divisor,
                              allowed_border=rpn.allowed_border, seed=self.seed)
        cls_loss, box_loss = loss_lib.rpn_losses(logits, rpn_deltas, targets.box_targets,
                                                 targets.positives, targets.negatives,
                                                 rpn.smooth_l1_beta)
        return {"rpn_cls_loss": cls_loss, "rpn_box_loss": box_loss}

    def _sample(self, rois, roi_valid, gt, iou: float, stds,
                low_quality: bool = False) -> RoiSample:
        roi = self.config.model.roi
        return sample_rois(rois, roi_valid, *gt, iou=iou, num_samples=roi.num_samples,
                           pos_fraction=roi.pos_fraction, stds=stds, seed=self.seed,
                           low_quality_matches=low_quality)

    def _box_losses(self, logits, deltas, sample: RoiSample, prefix: str = "") -> dict:
        cls_loss, box_loss = loss_lib.box_head_losses(
            logits, deltas, sample.classes, sample.box_targets, sample.is_pos,
            sample.is_sampled, self.config.model.roi.smooth_l1_beta)
        return {f"{prefix}cls_loss": cls_loss, f"{prefix}box_loss": box_loss}

    def _mask_loss(self, mask_fn, sample: RoiSample, inputs: dict):
        """Mask loss of the positive RoIs of `sample`; `mask_fn(rois)` gives their logits.

        Positives come first in a sample, so its first `max_pos` RoIs hold them all.
        """
        roi = self.config.model.roi
        max_pos = int(roi.num_samples * roi.pos_fraction)
        rois = sample.rois[:, :max_pos]
        classes = ops.maximum(sample.classes[:, :max_pos] - 1, 0)
        logits = select_class(mask_fn(rois), classes)
        targets = mask_targets(inputs, ops.stop_gradient(rois), sample.matched[:, :max_pos],
                               output_size=ops.shape(logits)[2])
        targets = ops.cast(targets >= 0.5, "float32")
        return loss_lib.mask_loss(logits, targets, sample.is_pos[:, :max_pos])

    def _rcnn_losses(self, model, features, proposals, valid, gt, inputs, training) -> dict:
        """Faster / Mask R-CNN: one box stage (and its mask head) on the proposals."""
        roi = self.config.model.roi
        sample = self._sample(proposals, valid, gt, roi.pos_iou, roi.box_stds,
                              roi.match_low_quality)
        logits, deltas = model.box_branch(features, sample.rois, training=training)
        result = self._box_losses(logits, deltas, sample)
        if self.config.model.include_mask:
            result["mask_loss"] = self._mask_loss(
                lambda rois: model.mask_branch(features, rois, training=training), sample,
                inputs)
        return result

    def _cascade_losses(self, model, features, proposals, valid, gt, inputs,
                        training) -> dict:
        """Cascade R-CNN stages (and HTC): re-sample at each stage's IoU, refine between.

        Stage t samples from the previous stage's refined RoIs (ground-truth RoIs dropped)
        plus the ground truth, at IoU `stage_ious[t]`; its losses are weighted by
        `stage_loss_weights[t]`. HTC's interleaved mask branch trains on a re-sample of the
        RoIs refined by stage t, which also feed stage t+1.
        """
        cfg = self.config.model
        cascade, htc = cfg.cascade, cfg.htc
        image_sizes = model.image_sizes(inputs["images"], inputs.get("image_sizes"))
        result = {}
        semantic_logits, semantic_feature = model.semantic(features, training=training)
        if semantic_logits is not None:
            if "semantic" not in inputs:
                raise ValueError("HTC's semantic branch needs semantic label maps: set "
                                 "DataConfig.train_semantic, or use the htc_without_semantic "
                                 "experiment.")
            result["semantic_loss"] = htc.semantic_loss_weight * loss_lib.semantic_loss(
                semantic_logits, inputs["semantic"])
        rois, roi_valid = proposals, valid
        for stage in range(cascade.num_stages):
            weight = cascade.stage_loss_weights[stage]
            iou, stds = cascade.stage_ious[stage], cascade.stage_box_stds[stage]
            sample = self._sample(rois, roi_valid, gt, iou, stds)
            logits, deltas = model.box_branch(features, sample.rois, stage, semantic_feature,
                                              training=training)
            for name, value in self._box_losses(logits, deltas, sample, f"s{stage}_").items():
                result[name] = weight * value
            rois = model.refine(sample.rois, logits, deltas, stage, image_sizes,
                                sample.classes)
            roi_valid = ops.logical_and(sample.is_sampled, ops.logical_not(sample.is_gt))
            if cfg.include_mask:
                mask_sample = sample
                if htc is not None and htc.interleaved:
                    mask_sample = self._sample(rois, roi_valid, gt, iou, stds)
                result[f"s{stage}_mask_loss"] = weight * self._mask_loss(
                    lambda r, s=stage: model.mask_branch(features, r, s, semantic_feature,
                                                         training=training),
                    mask_sample, inputs)
        return result

    # -- steps ----------------------------------------------------------------------------
    def train_step(self, inputs: dict, model: TwoStageDetector,
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

    def validation_step(self, inputs: dict, model: TwoStageDetector) -> dict:
        """Detections for a batch (resized-image coordinates), each image clipped to and
        normalised within its own size when the batch carries "image_sizes"."""
        return model(model_inputs(inputs), training=False)

    def postprocess(self, outputs: dict, inputs: dict) -> list[dict]:
        """Per image: boxes (original pixels), scores, classes and pasted binary masks."""
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        results = []
        for i, image_id in enumerate(np.asarray(inputs["image_ids"])):
            count = int(outputs["num_detections"][i])
            h_scale, w_scale = np.asarray(inputs["scales"])[i]
            height, width = (int(v) for v in np.asarray(inputs["original_sizes"])[i])
            # Divided by the resize factors and not clipped again, as mmdetection rescales
            # (they were clipped to the resized image, so they overrun by < 1 px at most).
            boxes = outputs["boxes"][i, :count] / np.array([w_scale, h_scale, w_scale,
                                                            h_scale])
            detection = {"image_id": int(image_id), "boxes": boxes,
                         "scores": outputs["scores"][i, :count],
                         "classes": outputs["classes"][i, :count]}
            if "masks" in outputs:
                detection["masks"] = paste_masks(outputs["masks"][i, :count], boxes, height,
                                                 width)
            results.append(detection)
        return results
