"""The training recipe as one dataclass, with the reference's ImageNet defaults.

`TrainConfig()` is the reference recipe (SGD 0.9, lr 0.1 per 256 images, cosine with warm-up,
weight decay 1e-4 off BatchNorm and biases, 100 epochs at 224). `--data digits` is the embedded
default data: `resolve_config` fills the fields the user left unset (None) from `DIGITS_DEFAULTS`,
a small Res2Net that trains in a couple of minutes on 2 CPU cores, and the rest from
`IMAGENET_DEFAULTS` (`CIFAR_DEFAULTS` for the paper's 32x32 CIFAR models). `validate` rejects
bad combinations with messages that quote the value.
"""

from __future__ import annotations

import dataclasses
import os

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a run. Fields left None are filled by `resolve_config`."""

    # What to train on.
    data: str = "digits"  # "digits", a TFDS name, "tfrecord" or "folder"
    data_dir: str | None = None
    train_split: str | None = None
    num_classes: int | None = None  # tfrecord only (default 1000)
    label_offset: int = 0  # tfrecord: 1 for the classic 1-based ImageNet converter
    val_split: str | None = None
    skip_bad_images: bool = False  # folder: skip (and count) images that do not decode
    model_dir: str = "runs/default"
    # The network.
    model: str | None = None
    layers: tuple[int, ...] | None = None
    base_width: int | None = None
    scale: int | None = None
    image_size: int | None = None
    init_weights: str | None = None
    # Recipe.
    epochs: int | None = None
    batch_size: int | None = None  # global, over all replicas
    base_lr: float | None = None  # per 256 images (linear scaling rule)
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float | None = None
    step_epochs: tuple[int, ...] = (30, 60, 90)
    step_factor: float = 0.1
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Augmentation.
    crop_scale_min: float | None = None  # random-resized-crop area lower bound
    flip: bool | None = None
    eval_crop_fraction: float | None = None  # None: the variant's crop_pct (0.875 = 224/256)
    # Execution.
    strategy: str = "default"
    tpu: str | None = None
    device: str | None = None  # for one_device
    mixed_precision: str = "float32"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = False  # op determinism: same seed and cluster, same weights
    steps_per_epoch: int | None = None  # None: one pass over the training split
    checkpoint_every: int = 500  # steps
    max_checkpoints: int = 3
    eval_only: bool = False
    shuffle_buffer: int = 10_000

    @property
    def is_digits(self) -> bool:
        return self.data == "digits"


DIGITS_DEFAULTS = dict(
    model="res2net50_26w_4s", layers=(1, 1, 1, 1), base_width=8, scale=4, image_size=32,
    epochs=30, batch_size=64, base_lr=0.1, weight_decay=1e-4, warmup_epochs=1.0,
    crop_scale_min=0.6, flip=False, eval_crop_fraction=1.0,
)
IMAGENET_DEFAULTS = dict(
    model="res2net50_26w_4s", layers=None, base_width=None, scale=None, image_size=224,
    epochs=100, batch_size=256, base_lr=0.1, weight_decay=1e-4, warmup_epochs=5.0,
    crop_scale_min=0.08, flip=True,
)  # eval_crop_fraction: the model's `pretrained_config(...).crop_pct`, see resolve_config


# A CIFAR model (`--model res2next29_6c_24w_4s`, ...): the paper's 32x32 recipe (ResNeXt-29's:
# batch 128 at lr 0.1, weight decay 5e-4, 300 epochs). The random-resized crop (60-100% of the
# area, then back to 32 px) stands in for pad-4-and-crop; evaluation sees the whole image.
CIFAR_DEFAULTS = dict(
    IMAGENET_DEFAULTS, image_size=32, epochs=300, batch_size=128, base_lr=0.2,
    weight_decay=5e-4, warmup_epochs=1.0, crop_scale_min=0.6, flip=True, eval_crop_fraction=1.0,
)


def _defaults(config: TrainConfig) -> dict:
    if config.is_digits:
        return DIGITS_DEFAULTS
    from keras_res2net import variants

    try:
        is_cifar = config.model is not None and variants.get_variant(config.model).family == "cifar"
    except ValueError:  # an unknown name: `validate` reports it
        is_cifar = False
    return CIFAR_DEFAULTS if is_cifar else IMAGENET_DEFAULTS


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill unset fields from the data's (or the CIFAR model's) defaults, then validate."""
    defaults = _defaults(config)
    changes = {key: value for key, value in defaults.items() if getattr(config, key) is None}
    resolved = dataclasses.replace(config, **changes)
    if resolved.eval_crop_fraction is None:  # the reference's crop for this variant
        from keras_res2net import variants

        try:
            crop_pct = variants.pretrained_config(resolved.model).crop_pct
        except ValueError as err:
            raise ValueError(f"--model: {err}") from err
        resolved = dataclasses.replace(resolved, eval_crop_fraction=crop_pct)
    validate(resolved)
    return resolved


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}.")


def validate(config: TrainConfig) -> None:
    """Raise ValueError, naming the flag and the received value, for any bad setting."""
    _choice("strategy", config.strategy, STRATEGIES)
    from keras_res2net import variants

    try:
        stages = len(variants.get_variant(config.model).layers)  # 4; 3 for CIFAR models
    except ValueError as err:
        raise ValueError(f"--model: {err}") from err
    if config.layers is not None and (len(config.layers) != stages or min(config.layers) < 1):
        raise ValueError(f"--layers must be {stages} positive integers (blocks per stage), e.g. "
                         f"{','.join(['1'] * stages)}; got {','.join(map(str, config.layers))}.")
    for name in ("base_width", "scale"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer; got {value}.")
    _choice("mixed_precision", config.mixed_precision, PRECISIONS)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("schedule", config.schedule, SCHEDULES)
    positive = dict(epochs=config.epochs, batch_size=config.batch_size,
                    image_size=config.image_size, checkpoint_every=config.checkpoint_every)
    for name, value in positive.items():
        if value is None or value < 1:
            raise ValueError(f"--{name} must be a positive integer; got {value!r}.")
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise ValueError(f"--steps_per_epoch must be positive; got {config.steps_per_epoch}.")
    if config.image_size < 32:
        raise ValueError(f"--image_size must be >= 32 (Res2Net downsamples by 32); "
                         f"got {config.image_size}.")
    if config.base_lr <= 0:
        raise ValueError(f"--base_lr must be > 0; got {config.base_lr}.")
    if config.weight_decay < 0:
        raise ValueError(f"--weight_decay must be >= 0; got {config.weight_decay}.")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"--label_smoothing must be in [0, 1); got {config.label_smoothing}.")
    if config.mixup_alpha < 0 or config.cutmix_alpha < 0:
        raise ValueError(f"--mixup_alpha and --cutmix_alpha must be >= 0; got "
                         f"{config.mixup_alpha}, {config.cutmix_alpha}.")
    if not 0.0 < config.crop_scale_min <= 1.0:
        raise ValueError(f"--crop_scale_min must be in (0, 1]; got {config.crop_scale_min}.")
    if not 0.0 < config.eval_crop_fraction <= 1.0:
        raise ValueError(f"--eval_crop_fraction must be in (0, 1]; got "
                         f"{config.eval_crop_fraction}.")
    if config.strategy == "tpu" and not config.tpu:
        raise ValueError("--strategy tpu needs --tpu (a TPU name or grpc:// address; 'local' "
                         "for a TPU VM).")
    if config.deterministic:
        from keras_res2net.training.determinism import strategy_error

        error = strategy_error(config.strategy)
        if error:
            raise ValueError(error)
    if config.strategy == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise ValueError("--strategy multi_worker reads the cluster from the TF_CONFIG "
                         "environment variable, which is not set (see README, Training).")
    if config.init_weights and not os.path.exists(config.init_weights):
        raise ValueError(f"--init_weights {config.init_weights!r}: no such file.")
    if config.data in ("tfrecord", "folder") and not config.data_dir:
        raise ValueError(f"--data {config.data} needs --data_dir.")
