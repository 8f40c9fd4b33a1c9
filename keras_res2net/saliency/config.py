"""A saliency training run as one dataclass, its defaults, checks and run record.

`SaliencyConfig` holds every knob of `train/saliency.py`. Fields left None take the data's
defaults in `resolve`: `--data synthetic` (the embedded default, generated scenes) trains,
unless `--model` names another network, a small Res2Net-50 (one block per stage, 8w x 4s)
with a narrow DSS decoder at 64 px in a few minutes on 2 CPU cores; a folder (DUTS-TR and
the like) trains the published Res2Net-50 26w x 4s with DSS's decoder widths at 320 px. A
named `--model` keeps its own blocks and width unless `--layers`/`--base_width` say.
`validate` refuses bad values naming the flag.
The run folder's `saliency_config.json` records the resolved config: a folder whose
checkpoints belong to another network is refused before anything is built, and prediction,
evaluation and export read the model's input size from it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from keras_res2net.cli_errors import UsageError, atomic_file
from keras_res2net.saliency.model import DSS_CHANNELS, SIDES
from keras_res2net.training.config import STRATEGIES

RUN_RECORD = "saliency_config.json"
MODEL_FILE = "model.keras"
EVAL_FILE = "eval_metrics.json"
SYNTHETIC = "synthetic"
# Fields that decide the checkpoint's variables.
MODEL_FIELDS = ("model", "layers", "base_width", "scale", "side_channels", "image_size")

# The network of a run that names no --model: on synthetic scenes a small Res2Net-50.
SYNTHETIC_NETWORK = dict(model="res2net50_26w_4s", layers=(1, 1, 1, 1), base_width=8)
SYNTHETIC_DEFAULTS = dict(side_channels=(16, 32, 32, 64, 64), image_size=64, num_train=1024,
                          num_val=128, batch_size=16, epochs=4, learning_rate=2e-3)
FOLDER_NETWORK = dict(model="res2net50_26w_4s")
FOLDER_DEFAULTS = dict(side_channels=DSS_CHANNELS, image_size=320, batch_size=8, epochs=24,
                       learning_rate=1e-4)


@dataclasses.dataclass
class SaliencyConfig:
    """Every knob of a saliency run; None means: the data's default (`resolve`)."""

    data: str = SYNTHETIC  # "synthetic" or a folder (images + same-named PNG masks)
    val_data: str | None = None  # a folder; synthetic: a held-out seed's scenes
    image_folder: str | None = None  # sub-folder names, when the layout is not recognised
    mask_folder: str | None = None
    skip_bad_images: bool = False
    num_train: int | None = None  # synthetic scenes
    num_val: int | None = None
    model_dir: str = "runs/saliency"
    # The network.
    model: str | None = None
    layers: tuple[int, ...] | None = None
    base_width: int | None = None
    scale: int | None = None
    side_channels: tuple[int, ...] | None = None
    image_size: int | None = None
    init_weights: str | None = None  # the backbone's checkpoint
    # Recipe.
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None  # AdamW peak, after the warm-up
    weight_decay: float = 1e-4  # AdamW, not on BatchNorm and biases
    warmup_steps: int | None = None
    iou_weight: float = 0.0  # 0: DSS's loss (cross-entropy only)
    crop_scale_min: float = 0.5
    flip: bool = True
    seed: int = 0
    # Execution.
    strategy: str = "default"
    tpu: str | None = None
    device: str | None = None
    checkpoint_every: int = 500
    max_checkpoints: int = 3

    @property
    def synthetic(self) -> bool:
        return self.data == SYNTHETIC


def resolve(config: SaliencyConfig) -> SaliencyConfig:
    """A copy with the data's defaults filled in, validated."""
    defaults = dict(SYNTHETIC_DEFAULTS if config.synthetic else FOLDER_DEFAULTS)
    if config.model is None:  # a named --model keeps its own depth and width
        defaults.update(SYNTHETIC_NETWORK if config.synthetic else FOLDER_NETWORK)
    values = dataclasses.asdict(config)
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    for key in ("layers", "side_channels"):
        if values[key] is not None:
            values[key] = tuple(values[key])
    resolved = SaliencyConfig(**values)
    validate(resolved)
    return resolved


def validate(config: SaliencyConfig) -> None:
    def positive(name: str, value) -> None:
        if value is not None and value < 1:
            raise UsageError(f"--{name} {value}: must be >= 1.")

    for name in ("num_train", "num_val", "epochs", "steps_per_epoch", "batch_size",
                 "checkpoint_every", "max_checkpoints", "base_width", "scale"):
        positive(name, getattr(config, name))
    if config.image_size is not None and (config.image_size < 32 or config.image_size % 32):
        raise UsageError(f"--image_size {config.image_size}: use a multiple of 32 (the "
                         "decoder upsamples its side outputs by 2..32 exactly).")
    if config.side_channels is not None and (
            len(config.side_channels) != len(SIDES) or min(config.side_channels) < 1):
        raise UsageError(f"--side_channels {','.join(map(str, config.side_channels))}: give "
                         f"{len(SIDES)} positive widths (side2..side6; DSS's are "
                         f"{','.join(map(str, DSS_CHANNELS))}).")
    if config.learning_rate is not None and config.learning_rate <= 0:
        raise UsageError(f"--learning_rate {config.learning_rate}: must be > 0.")
    if config.weight_decay < 0 or config.iou_weight < 0:
        raise UsageError("--weight_decay and --iou_weight must be >= 0.")
    if not 0 < config.crop_scale_min <= 1:
        raise UsageError(f"--crop_scale_min {config.crop_scale_min}: use a value in (0, 1].")
    if config.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {config.strategy}: choose from {', '.join(STRATEGIES)}.")
    if config.init_weights and not os.path.isfile(config.init_weights):
        raise UsageError(f"--init_weights {config.init_weights}: no such file (a .weights.h5 "
                         "written by python -m keras_res2net.convert, or a PyTorch checkpoint).")
    if not config.synthetic and (config.num_train or config.num_val):
        raise UsageError("--num_train/--num_val size the synthetic scenes; a folder is used "
                         "whole.")
    if config.synthetic and config.val_data is None and config.skip_bad_images:
        raise UsageError("--skip_bad_images applies to folder data, not to --data synthetic.")
    from keras_res2net.variants import get_variant

    if config.model is not None:
        try:
            get_variant(config.model)
        except (KeyError, ValueError) as err:
            raise UsageError(f"--model {config.model}: not a known variant ({err}).") from None


def record_fields(config: SaliencyConfig) -> dict:
    record = dataclasses.asdict(config)
    for key in ("layers", "side_channels"):
        record[key] = list(record[key]) if record[key] is not None else None
    return record


def read_record(folder: str) -> dict | None:
    """The run record of `folder`, or None if it has none (or an unreadable one)."""
    path = os.path.join(folder, RUN_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def config_from_record(record: dict, **changes) -> SaliencyConfig:
    """The `SaliencyConfig` a run record holds (unknown keys ignored), with `changes`."""
    fields = {f.name for f in dataclasses.fields(SaliencyConfig)}
    values = {key: value for key, value in record.items() if key in fields}
    for key in ("layers", "side_channels"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    values.update(changes)
    return SaliencyConfig(**values)


def check_model_dir(config: SaliencyConfig, has_checkpoint: bool) -> None:
    """Refuse a `model_dir` whose checkpoints belong to another network (its record says so)."""
    record = read_record(config.model_dir)
    if record is None or not has_checkpoint:
        return
    ours = record_fields(config)
    differ = [name for name in MODEL_FIELDS if record.get(name) != ours.get(name)]
    if differ:
        theirs = ", ".join(f"--{name} {record.get(name)}" for name in differ)
        mine = ", ".join(f"--{name} {ours.get(name)}" for name in differ)
        raise UsageError(f"--model_dir {config.model_dir} belongs to another network (trained "
                         f"with {theirs}; this run has {mine}): choose another --model_dir, or "
                         "rerun with the settings it was made with.")


def write_record(config: SaliencyConfig) -> None:
    with atomic_file(os.path.join(config.model_dir, RUN_RECORD)) as temporary:
        with open(temporary, "w") as f:
            json.dump(record_fields(config), f, indent=1)
