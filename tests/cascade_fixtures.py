"""Shared helpers for the cascade / HTC tests: tiny configs, a hand-made batch, and numpy
box arithmetic written from mmdetection's DeltaXYWHBBoxCoder formulas (independent of
keras_res2net.detection.ops.boxes, so the tests do not check the code against itself)."""

from __future__ import annotations

import numpy as np

from keras_res2net.detection import configs
from keras_res2net.detection.task import DetectionTask

# The per-stage values (mmdetection's cascade_rcnn_r50_fpn / htc_r50_fpn).
STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
IMAGE = 64


def tiny_config(name: str) -> configs.ExperimentConfig:
    """A synthetic experiment shrunk as tests/detection/test_model.py's `_tiny_config`."""
    config = configs.get_experiment(name)
    config.model.heads = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8,
                                            mask_convs=1)
    config.model.roi.num_samples = 16
    config.model.rpn.train_post_nms_topk = 50
    config.model.rpn.post_nms_topk = 30
    config.data.batch_size = 2
    return config


def tiny_batch() -> dict:
    """Two 64x64 images: one object (plus a padding row) and two objects, with box masks."""
    images = np.random.RandomState(0).uniform(0, 255, (2, IMAGE, IMAGE, 3)).astype("float32")
    boxes = np.array([[[4, 4, 30, 30], [0, 0, 0, 0]],
                      [[10, 20, 50, 60], [30, 5, 60, 40]]], np.float32)
    classes = np.array([[1, 0], [2, 3]], np.int32)
    masks = np.zeros((2, 2, IMAGE, IMAGE), np.float32)
    for b in range(2):
        for m in range(2):
            x1, y1, x2, y2 = boxes[b, m].astype(int)
            masks[b, m, y1:y2, x1:x2] = 1.0
    return {"images": images, "boxes": boxes, "classes": classes, "masks": masks}


def np_encode(gt, rois, stds):
    """Deltas (dx, dy, dw, dh) / stds from `rois` to `gt`, both (..., 4) xyxy."""
    gw, gh = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
    rw, rh = rois[..., 2] - rois[..., 0], rois[..., 3] - rois[..., 1]
    gx, gy = gt[..., 0] + 0.5 * gw, gt[..., 1] + 0.5 * gh
    rx, ry = rois[..., 0] + 0.5 * rw, rois[..., 1] + 0.5 * rh
    deltas = np.stack([(gx - rx) / rw, (gy - ry) / rh, np.log(gw / rw), np.log(gh / rh)], -1)
    return deltas / np.asarray(stds)


def np_decode(deltas, rois, stds, size=IMAGE):
    """Boxes from `deltas` (..., 4) applied to `rois` (..., 4), clipped to a size x size
    image (deltas here stay far below mmdetection's wh_ratio_clip)."""
    d = np.asarray(deltas, np.float64) * np.asarray(stds)
    rw, rh = rois[..., 2] - rois[..., 0], rois[..., 3] - rois[..., 1]
    cx = rois[..., 0] + 0.5 * rw + d[..., 0] * rw
    cy = rois[..., 1] + 0.5 * rh + d[..., 1] * rh
    w, h = rw * np.exp(d[..., 2]), rh * np.exp(d[..., 3])
    boxes = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    return np.clip(boxes, 0.0, size)


def np_iou(a, b):
    """IoU of (N, 4) with (M, 4) -> (N, M)."""
    a, b = a[:, None], b[None]
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-6)


def np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def spy_samples(monkeypatch) -> list:
    """Record every `DetectionTask._sample` call (inputs, IoU, stds and the sample) into the
    returned list, as numpy, until `monkeypatch.undo()`."""
    samples = []
    sample_fn = DetectionTask._sample

    def spy_sample(self, rois, roi_valid, gt, iou, stds):
        sample = sample_fn(self, rois, roi_valid, gt, iou, stds)
        samples.append({"in_rois": np.asarray(rois), "in_valid": np.asarray(roi_valid),
                        "iou": iou, "stds": tuple(stds),
                        **{k: np.asarray(v) for k, v in sample._asdict().items()}})
        return sample

    monkeypatch.setattr(DetectionTask, "_sample", spy_sample)
    return samples
