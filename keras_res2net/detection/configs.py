"""Experiment configurations: plain dataclasses and a registry of named experiments.

The defaults are mmdetection's Mask R-CNN R2-101-FPN 2x (the seed's detection table);
`faster_rcnn_*` drops the mask branch; `cascade_*` and `htc_*` set `ModelConfig.cascade`
(and `.htc`), mmdetection's Cascade R-CNN, Cascade Mask R-CNN and HTC 20e configs.
`*_synthetic` experiments shrink everything so a CPU can train them in minutes on the
generated shapes dataset.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable


@dataclasses.dataclass
class BackboneConfig:
    name: str = "res2net101_v1b_26w_4s"
    layers: tuple | None = None  # None keeps the variant's depth
    base_width: int | None = None
    scale: int | None = None
    frozen_stages: int = 1  # stem + layer1 frozen (mmdetection frozen_stages=1)
    norm_eval: bool = True  # BatchNorm in inference mode, statistics never updated
    # mmdetection's Res2Net skips the 3x3 average pool of the stride-1 stage block (layer1);
    # the official/timm Res2Net has it. False is mmdetection's (the published detectors).
    stage_pool: bool = False


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
    pre_nms_topk: int = 2000  # per level in training, as mmdetection's train nms_pre
    test_pre_nms_topk: int = 1000  # per level at test time (mmdetection's test nms_pre)
    post_nms_topk: int = 1000
    nms_iou: float = 0.7
    train_post_nms_topk: int | None = None  # None: same as post_nms_topk
    smooth_l1_beta: float = 0.0  # 0: L1 box loss (Mask R-CNN); cascades use 1/9
    # Anchors crossing the (unpadded) image by more than this many pixels take no part in
    # training; -1: no border check (Faster / Mask R-CNN), the cascades and HTC use 0.
    allowed_border: int = -1


@dataclasses.dataclass
class ROIConfig:
    pos_iou: float = 0.5
    neg_iou: float = 0.5
    num_samples: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    box_pool_size: int = 7
    mask_pool_size: int = 14
    # RoIAlign samples per bin and axis; 0 is mmcv's adaptive `ceil(roi size / output size)`
    # (what every published config uses), N > 0 a fixed N x N grid.
    sampling_ratio: int = 0
    box_stds: tuple = (0.1, 0.1, 0.2, 0.2)
    smooth_l1_beta: float = 0.0  # 0: L1 box loss (Mask R-CNN); cascades use 1.0
    # mmdetection's R-CNN assigner `match_low_quality`: True in Mask R-CNN's config, False
    # in Faster R-CNN's; cascade stages never use it.
    match_low_quality: bool = True


@dataclasses.dataclass
class CascadeConfig:
    """Cascade R-CNN stages: each re-assigns and re-samples RoIs at a stricter IoU.

    `ROIConfig` still gives the sampler (512 RoIs, 25% positives, ground truth added) and
    pooling; these fields replace its single IoU threshold and box stds per stage.
    """

    stage_ious: tuple = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple = (1.0, 0.5, 0.25)
    stage_box_stds: tuple = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1),
                             (0.033, 0.033, 0.067, 0.067))
    class_agnostic: bool = True

    @property
    def num_stages(self) -> int:
        return len(self.stage_ious)


@dataclasses.dataclass
class HTCConfig:
    """Hybrid Task Cascade on top of a `CascadeConfig` with masks.

    `interleaved`: stage t's mask head trains on RoIs refined by stage t's box head.
    `mask_info_flow`: each mask head adds the previous stages' mask features to its input.
    `semantic`: a fused semantic head on P2..P6 (COCO-Stuff: 183 classes, 255 ignored,
    loss weight 0.2), as wide as the FPN, whose RoI features are added to the box and mask
    RoI features; it needs semantic maps in the data (`DataConfig.train_semantic`).
    """

    interleaved: bool = True
    mask_info_flow: bool = True
    semantic: bool = True
    semantic_classes: int = 183
    semantic_loss_weight: float = 0.2
    semantic_convs: int = 4
    # Test-time masks: "mean" of the three stages' sigmoid masks (mmdetection 2.x, which
    # produced the published 41.6 mask AP) or the "last" stage's alone (mmdetection 3.x).
    test_mask_merge: str = "mean"


@dataclasses.dataclass
class HeadConfig:
    fpn_channels: int = 256
    fc_dim: int = 1024
    mask_channels: int = 256
    mask_convs: int = 4


@dataclasses.dataclass
class DetectionConfig:
    """The final per-class NMS (mmdetection's `test_cfg.rcnn`)."""

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
    cascade: CascadeConfig | None = None  # None: one box stage (Faster / Mask R-CNN)
    htc: HTCConfig | None = None  # needs `cascade` and `include_mask`

    @property
    def architecture(self) -> str:
        """'htc', 'cascade_mask_rcnn', 'cascade_rcnn', 'mask_rcnn' or 'faster_rcnn'."""
        if self.htc is not None:
            return "htc"
        if self.cascade is not None:
            return "cascade_mask_rcnn" if self.include_mask else "cascade_rcnn"
        return "mask_rcnn" if self.include_mask else "faster_rcnn"


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
    # mmdetection's training filter_cfg: images without annotations, or with a side under
    # `min_image_size` pixels, are left out of training (never of evaluation).
    filter_empty_gt: bool = True
    min_image_size: int = 32


@dataclasses.dataclass
class TrainConfig:
    optimizer: str = "sgd"  # or "adamw" (quicker from scratch, for the synthetic runs)
    learning_rate: float = 0.02  # per 16 images, linearly scaled with the batch size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # SGD's decay: "coupled" (PyTorch's SGD, mmdetection: added to the gradient before the
    # momentum) or "decoupled" (Keras' form: `w -= lr * decay * w`, ~10x weaker at 0.9).
    weight_decay_form: str = "coupled"
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
    config.model.roi.match_low_quality = False
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
        rpn=RPNConfig(num_samples=128, pre_nms_topk=500, test_pre_nms_topk=500,
                      post_nms_topk=100, train_post_nms_topk=300),
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
    config.model.roi.match_low_quality = False
    return config


# The cascade experiments, one row each: the R-CNN experiment a cascade extends, its HTC
# settings (None: a plain cascade) and what mmdetection's R2-101-FPN 20e recipe reaches on
# COCO val. Each row registers `<name>_res2net101_fpn_coco` and `<name>_res2net50_fpn_synthetic`.
CASCADE_RECIPES = {
    "cascade_rcnn": ("faster_rcnn", None, "45.7 box AP"),
    "cascade_mask_rcnn": ("mask_rcnn", None, "46.4 box / 40.0 mask AP"),
    "htc": ("mask_rcnn", {}, "47.5 box / 41.6 mask AP (with COCO-Stuff maps)"),
    "htc_without_semantic": ("mask_rcnn", {"semantic": False}, "no published R2-101 figure"),
}
COCO_STUFF_MAPS = "stuffthingmaps_trainval2017/train2017"  # under the data dir
SYNTHETIC_SEMANTIC_CLASSES = 4  # background + the 3 shapes


def _with_cascade(config: ExperimentConfig, htc: HTCConfig | None,
                  semantic_maps: str) -> ExperimentConfig:
    """Turn a (Mask) R-CNN experiment into its cascade (or HTC): three class-agnostic
    stages, smooth-L1 box losses (beta 1/9 for the RPN, 1 for the stages) and RPN anchors
    inside the image only (`allowed_border=0`); HTC's
    semantic branch reads the label maps in `semantic_maps`."""
    config.model.cascade = CascadeConfig()
    config.model.htc = htc
    config.model.rpn.smooth_l1_beta = 1.0 / 9.0
    config.model.rpn.allowed_border = 0
    config.model.roi.smooth_l1_beta = 1.0
    if htc is not None and htc.semantic:
        config.data.train_semantic = semantic_maps
    return config


def _coco_cascade(base: str, htc: dict | None) -> ExperimentConfig:
    """mmdetection's `*_20e` cascade recipe: 2000 RPN proposals in training, 20 epochs with
    the learning rate dropped at 16 and 19."""
    config = _with_cascade(get_experiment(f"{base}_res2net101_fpn_coco"),
                           None if htc is None else HTCConfig(**htc), COCO_STUFF_MAPS)
    config.model.rpn.train_post_nms_topk = 2000
    if htc is not None:
        config.model.detection.score_threshold = 0.001  # mmdetection's HTC test_cfg
    config.train.epochs = 20
    config.train.decay_epochs = (16, 19)
    return config


def _synthetic_cascade(base: str, htc: dict | None) -> ExperimentConfig:
    """The synthetic experiment's sizes and schedule, with the cascade's heads and losses."""
    htc_config = None if htc is None else HTCConfig(**htc)
    if htc_config is not None and htc_config.semantic:
        htc_config.semantic_classes = SYNTHETIC_SEMANTIC_CLASSES
    return _with_cascade(get_experiment(f"{base}_res2net50_fpn_synthetic"), htc_config,
                         "train_semantic")


def _register_cascades() -> None:
    for name, (base, htc, reference) in CASCADE_RECIPES.items():
        coco = functools.partial(_coco_cascade, base, htc)
        coco.__doc__ = f"mmdetection `{name}_r2_101_fpn_20e_coco`: {reference}."
        register_experiment(f"{name}_res2net101_fpn_coco")(coco)
        register_experiment(f"{name}_res2net50_fpn_synthetic")(
            functools.partial(_synthetic_cascade, base, htc))


_register_cascades()
