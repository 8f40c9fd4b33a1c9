"""Experiment configurations: plain dataclasses and a registry of named experiments.

The defaults are mmdetection's Mask R-CNN R2-101-FPN 2x (the seed's detection table);
`faster_rcnn_*` drops the mask branch. `*_synthetic` experiments shrink everything so a
CPU can train them in minutes on the generated shapes dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass
class BackboneConfig:
    name: str = "res2net101_v1b_26w_4s"
    layers: tuple | None = None  # None keeps the variant's depth
    base_width: int | None = None
    scale: int | None = None
    frozen_stages: int = 1  # stem + layer1 frozen (mmdetection frozen_stages=1)
    norm_eval: bool = True  # BatchNorm in inference mode, statistics never updated


@dataclasses.dataclass
class AnchorConfig:
    scales: tuple = (8,)
    ratios: tuple = (0.5, 1.0, 2.0)
    strides: dict = dataclasses.field(
        default_factory=lambda: {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64})


@dataclasses.dataclass
class RPNConfig:
    pos_iou: float = 0.7
    neg_iou: float = 0.3
    min_pos_iou: float = 0.3
    num_samples: int = 256
    pos_fraction: float = 0.5
    pre_nms_topk: int = 2000  # per level, as mmdetection's nms_pre
    post_nms_topk: int = 1000
    nms_iou: float = 0.7
    train_post_nms_topk: int | None = None  # None: same as post_nms_topk


@dataclasses.dataclass
class ROIConfig:
    pos_iou: float = 0.5
    neg_iou: float = 0.5
    num_samples: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    box_pool_size: int = 7
    mask_pool_size: int = 14
    sampling_ratio: int = 2
    box_stds: tuple = (0.1, 0.1, 0.2, 0.2)


@dataclasses.dataclass
class HeadConfig:
    fpn_channels: int = 256
    fc_dim: int = 1024
    mask_channels: int = 256
    mask_convs: int = 4


@dataclasses.dataclass
class DetectionConfig:
    nms_iou: float = 0.5
    score_threshold: float = 0.05
    max_detections: int = 100


@dataclasses.dataclass
class ModelConfig:
    num_classes: int = 80
    include_mask: bool = True
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    anchors: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    rpn: RPNConfig = dataclasses.field(default_factory=RPNConfig)
    roi: ROIConfig = dataclasses.field(default_factory=ROIConfig)
    heads: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    detection: DetectionConfig = dataclasses.field(default_factory=DetectionConfig)


@dataclasses.dataclass
class DataConfig:
    train_json: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_json: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    # COCO-Stuff label maps for HTC's semantic branch: a folder of `<image stem>.png` (uint8
    # classes, 255 = ignore) under the data dir, e.g. "stuffthingmaps/train2017"; None: none.
    train_semantic: str | None = None
    val_semantic: str | None = None
    max_size: tuple = (1333, 800)  # long side, short side: resized to fit, aspect kept
    size_divisor: int = 32
    max_instances: int = 100
    random_flip: bool = True
    batch_size: int = 16  # global


@dataclasses.dataclass
class TrainConfig:
    optimizer: str = "sgd"  # or "adamw" (quicker from scratch, for the synthetic runs)
    learning_rate: float = 0.02  # per 16 images, linearly scaled with the batch size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    warmup_ratio: float = 0.001
    epochs: int = 24
    decay_epochs: tuple = (16, 22)
    steps: int | None = None  # overrides epochs when set (short runs, tests)
    decay_steps: tuple | None = None
    gradient_clip_norm: float | None = None
    seed: int = 0


@dataclasses.dataclass
class ExperimentConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


_EXPERIMENTS: dict[str, Callable[[], ExperimentConfig]] = {}


def register_experiment(name: str):
    """Decorator: register a zero-argument factory returning an `ExperimentConfig`."""
    def wrap(factory):
        if name in _EXPERIMENTS:
            raise ValueError(f"experiment {name!r} is already registered.")
        _EXPERIMENTS[name] = factory
        return factory
    return wrap


def get_experiment(name: str) -> ExperimentConfig:
    """A fresh config of the experiment `name`."""
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(list_experiments())}.")
    return _EXPERIMENTS[name]()


def list_experiments() -> list[str]:
    return sorted(_EXPERIMENTS)


@register_experiment("mask_rcnn_res2net101_fpn_coco")
def mask_rcnn_res2net101_fpn_coco() -> ExperimentConfig:
    """mmdetection `mask_rcnn_r2_101_fpn_2x_coco`: 43.6 box / 38.7 mask AP (COCO val)."""
    return ExperimentConfig()


@register_experiment("faster_rcnn_res2net101_fpn_coco")
def faster_rcnn_res2net101_fpn_coco() -> ExperimentConfig:
    """mmdetection `faster_rcnn_r2_101_fpn_2x_coco`: 43.0 box AP (COCO val)."""
    config = ExperimentConfig()
    config.model.include_mask = False
    return config


@register_experiment("mask_rcnn_res2net50_fpn_synthetic")
def mask_rcnn_res2net50_fpn_synthetic() -> ExperimentConfig:
    """A small Res2Net-FPN Mask R-CNN for the generated shapes dataset, trainable on a CPU.

    Trained from scratch, so BatchNorm trains and nothing is frozen; 128x128 images, three
    classes, fewer and smaller anchors, proposals and RoIs.
    """
    model = ModelConfig(
        num_classes=3,
        backbone=BackboneConfig(name="res2net50_v1b_26w_4s", layers=(1, 1, 1, 1),
                                base_width=8, scale=4, frozen_stages=-1, norm_eval=False),
        anchors=AnchorConfig(scales=(4,)),
        rpn=RPNConfig(num_samples=128, pre_nms_topk=500, post_nms_topk=100,
                      train_post_nms_topk=300),
        roi=ROIConfig(num_samples=64),
        heads=HeadConfig(fpn_channels=64, fc_dim=256, mask_channels=64),
    )
    data = DataConfig(train_json="train.json", train_images="train", val_json="val.json",
                      val_images="val", max_size=(128, 128), max_instances=8, batch_size=4)
    train = TrainConfig(optimizer="adamw", learning_rate=4e-3, weight_decay=1e-4,
                        warmup_steps=50, steps=300, decay_steps=(240, 280),
                        gradient_clip_norm=10.0)
    return ExperimentConfig(model=model, data=data, train=train)


@register_experiment("faster_rcnn_res2net50_fpn_synthetic")
def faster_rcnn_res2net50_fpn_synthetic() -> ExperimentConfig:
    config = mask_rcnn_res2net50_fpn_synthetic()
    config.model.include_mask = False
    return config
