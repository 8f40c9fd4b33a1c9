"""Salient object detection as a `Task` of the one trainer, and the run entry points.

`SaliencyTask` provides the DSS network on a Res2Net backbone (`model.saliency_model`, the
backbone optionally initialised from a converted checkpoint), AdamW with a linear warm-up
and cosine decay (no weight decay on BatchNorm and biases), the seeded augmented input
pipeline (`data.train_dataset`), DSS's deeply supervised loss (`losses.dss_loss`) and the
field's metrics on the validation data at each epoch end (`metrics.SaliencyMetrics`, by the
chief; maps resized back to each mask's own size). The trainer
(`training.trainer.Trainer`) owns the rest: strategies, checkpoints and resume, progress,
TensorBoard, `history.json`/`history.png`, the final summary; the chief writes
`model.keras`, the inference network (`model.inference_model`: images -> fused logits).

`run(config)` trains; `evaluate_run(config)` evaluates a run folder's latest checkpoint and
writes `eval_metrics.json` beside it. Both check data, flags and folder before writing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf

from keras_res2net.cli_errors import UsageError, atomic_file
from keras_res2net.saliency import config as config_lib
from keras_res2net.saliency import data as data_lib
from keras_res2net.saliency.config import SaliencyConfig
from keras_res2net.saliency.folder import read_folder
from keras_res2net.saliency.losses import dss_loss
from keras_res2net.saliency.metrics import SaliencyMetrics
from keras_res2net.saliency.model import inference_model, saliency_model
from keras_res2net.training import trainer as trainer_lib
from keras_res2net.training.strategies import is_chief, make_strategy

EVAL_BATCH = 16


def open_folder(path: str, config: SaliencyConfig, flag: str):
    image_dir = os.path.join(path, config.image_folder) if config.image_folder else None
    mask_dir = os.path.join(path, config.mask_folder) if config.mask_folder else None
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: no such folder.")
    return data_lib.folder_set(read_folder(path, image_dir=image_dir, mask_dir=mask_dir,
                                           skip_bad=config.skip_bad_images, flag=flag))


def open_data(config: SaliencyConfig, training: bool = True):
    """(training set or None, validation set or None) of a resolved config: generated scenes
    (the validation ones from a held-out seed) or checked folders."""
    train = None
    if config.synthetic:
        if training:
            train = data_lib.synthetic_set(config.seed, config.num_train, config.image_size)
        val = (open_folder(config.val_data, config, "--val_data") if config.val_data else
               data_lib.synthetic_set(config.seed + data_lib.SYNTHETIC_VAL_SEED_OFFSET,
                                      config.num_val, config.image_size,
                                      f"held-out synthetic (seed {config.seed} + "
                                      f"{data_lib.SYNTHETIC_VAL_SEED_OFFSET}, "
                                      f"{config.num_val} scenes)"))
        return train, val
    if training:
        train = open_folder(config.data, config, "--data")
        val = open_folder(config.val_data, config, "--val_data") if config.val_data else None
        return train, val
    return None, open_folder(config.val_data or config.data, config,
                             "--val_data" if config.val_data else "--data")


def evaluate_model(model: keras.Model, data: data_lib.SaliencySet, image_size: int,
                   predict=None) -> dict[str, float]:
    """The field's metrics of `model` (a training or inference model) on `data`: each map
    predicted at `image_size`, resized (bilinear) back to its mask's size."""
    if predict is None:
        predict = compile_predict(model)
    metrics = SaliencyMetrics()
    masks = data_lib.eval_masks(data)
    for images in data_lib.eval_images(data, image_size, EVAL_BATCH):
        for probabilities in predict(images).numpy():
            mask = next(masks)
            if probabilities.shape[:2] != mask.shape:
                probabilities = tf.image.resize(probabilities, mask.shape).numpy()
            metrics.add(probabilities, mask)
    return metrics.results()


def compile_predict(model: keras.Model):
    """images -> saliency probabilities (N, H, W, 1), as one `tf.function`."""
    def predict(images):
        outputs = model(images, training=False)
        logits = outputs["fuse"] if isinstance(outputs, dict) else outputs
        return tf.sigmoid(tf.cast(logits, tf.float32))

    return tf.function(predict, reduce_retracing=True, autograph=False)


class SaliencyTask(trainer_lib.Task):
    """DSS on a Res2Net, trained on `config`'s data (opened and checked when built)."""

    artifact = "model"
    plotted_metrics = ("MAE", "maxF", "Sm")

    def __init__(self, config: SaliencyConfig, train_set=None, val_set=None):
        self.config, self.seed = config, config.seed
        self.global_batch_size = config.batch_size
        if train_set is None and val_set is None:
            train_set, val_set = open_data(config)
        self.train_set, self.val_set = train_set, val_set
        count = train_set.count if train_set is not None else config.batch_size
        self.steps_per_epoch = config.steps_per_epoch or count // config.batch_size
        if self.steps_per_epoch < 1:
            raise UsageError(f"--batch_size {config.batch_size} is larger than the {count} "
                             "training images.")
        self.last_metrics: dict[str, float] = {}
        self._predict = None

    def build_model(self) -> keras.Model:
        c = self.config
        return saliency_model(c.model, image_size=c.image_size, weights=c.init_weights,
                              side_channels=c.side_channels, layers_per_stage=c.layers,
                              base_width=c.base_width, scale=c.scale)

    def build_optimizer(self, model: keras.Model) -> keras.optimizers.Optimizer:
        c = self.config
        total = max(1, c.epochs * self.steps_per_epoch)
        warmup = min(c.warmup_steps if c.warmup_steps is not None else total // 20, total - 1)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else c.learning_rate, decay_steps=total - warmup,
            warmup_target=c.learning_rate if warmup else None, warmup_steps=warmup)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=c.weight_decay)
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
        return optimizer

    def train_dataset(self, context, epoch: int, skip: int) -> tf.data.Dataset:
        c = self.config
        return data_lib.train_dataset(
            self.train_set, image_size=c.image_size,
            batch_size=context.get_per_replica_batch_size(c.batch_size), seed=c.seed,
            epoch=epoch, context=context, skip_batches=skip, crop_scale_min=c.crop_scale_min,
            flip=c.flip)

    def train_step(self, inputs, model, optimizer, num_replicas: int) -> dict:
        """DSS's loss on all six maps, averaged over the global batch; returns the total,
        the fused map's term and the fused map's MAE (per-replica means)."""
        images, masks = inputs
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            terms = dss_loss(masks, outputs, self.config.iou_weight)
            per_image = tf.add_n(list(terms.values()))
            loss = tf.nn.compute_average_loss(per_image,
                                              global_batch_size=self.global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        mae = tf.reduce_mean(tf.abs(tf.sigmoid(tf.cast(outputs["fuse"], tf.float32))
                                    - tf.cast(masks, tf.float32)))
        return {"loss": tf.reduce_mean(per_image), "fuse_loss": tf.reduce_mean(terms["fuse"]),
                "mae": mae}

    def evaluate(self, model, strategy) -> dict[str, float]:
        """The field's metrics on the validation data; the chief's job."""
        if self.val_set is None or not is_chief(strategy):
            return {}
        if self._predict is None:
            self._predict = compile_predict(model)
        self.last_metrics = evaluate_model(model, self.val_set, self.config.image_size,
                                           self._predict)
        return self.last_metrics

    def begin(self, model_dir: str, chief: bool) -> None:
        if chief and config_lib.read_record(model_dir) is None:
            config_lib.write_record(self.config)

    def export_path(self, model_dir: str) -> str:
        return os.path.join(model_dir, config_lib.MODEL_FILE)

    def export(self, model, path: str) -> None:
        inference_model(model).save(path)


class SaliencyTrainer(trainer_lib.Trainer):
    """The one trainer on a `SaliencyTask` for a resolved config: strategy, data, model,
    optimizer and checkpoints built; nothing written before `train()`."""

    def __init__(self, config: SaliencyConfig, task: SaliencyTask | None = None):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("Training runs on the TensorFlow backend (tf.distribute, "
                               f"tf.data); KERAS_BACKEND is {keras.backend.backend()!r}.")
        strategy = make_strategy(config.strategy, tpu=config.tpu, device=config.device)
        task = task or SaliencyTask(config)
        super().__init__(task, config.model_dir, strategy,
                         steps_per_epoch=task.steps_per_epoch,
                         total_steps=config.epochs * task.steps_per_epoch,
                         checkpoint_every=config.checkpoint_every,
                         max_checkpoints=config.max_checkpoints)


def _has_checkpoint(model_dir: str) -> bool:
    return tf.train.latest_checkpoint(os.path.join(model_dir, trainer_lib.CHECKPOINTS)) is not None


def run(config: SaliencyConfig) -> dict[str, float]:
    """Train as the resolved `config` says (resuming the run in its folder); return the last
    evaluation's metrics. Data and folder are checked before anything is written."""
    config_lib.check_model_dir(config, _has_checkpoint(config.model_dir))
    trainer = SaliencyTrainer(config)
    print(f"training data: {trainer.task.train_set.name}; validation: "
          f"{trainer.task.val_set.name if trainer.task.val_set else 'none'}", flush=True)
    return trainer.train()


def evaluate_run(config: SaliencyConfig) -> dict:
    """Evaluate the latest checkpoint of the run in `config.model_dir` on `config`'s
    validation data (`--val_data`, else `--data`; synthetic: the held-out scenes); write the
    metrics to `eval_metrics.json` there (through a temporary name) and return them.

    The network's fields come from the folder's run record, the data from `config`
    (`data=None`: the record's data and validation data)."""
    record = config_lib.read_record(config.model_dir)
    if record is None or not _has_checkpoint(config.model_dir):
        raise UsageError(f"--model_dir {config.model_dir}: no saliency run there (it needs "
                         f"{config_lib.RUN_RECORD} and checkpoints/ from train/saliency.py).")
    if config.data is None:
        config = dataclasses.replace(config, **{key: record.get(key) for key in (
            "data", "val_data", "image_folder", "mask_folder", "num_val")})
    network = {name: record[name] for name in config_lib.MODEL_FIELDS if name in record}
    network["layers"] = tuple(network["layers"]) if network.get("layers") else None
    network["side_channels"] = tuple(network["side_channels"])
    network["seed"] = record.get("seed", 0) if config.synthetic else config.seed
    resolved = config_lib.resolve(dataclasses.replace(config, **network, init_weights=None))
    _, val_set = open_data(resolved, training=False)
    task = SaliencyTask(resolved, train_set=None, val_set=val_set)
    trainer = SaliencyTrainer(resolved, task)
    step = trainer.restore()
    start = time.perf_counter()
    metrics = trainer.evaluate()
    seconds = time.perf_counter() - start
    result = {"data": val_set.name, "images": val_set.count, "step": step, **metrics}
    with atomic_file(os.path.join(config.model_dir, config_lib.EVAL_FILE)) as temporary:
        with open(temporary, "w") as f:
            json.dump(result, f, indent=1)
    figures = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    print(f"Eval: {figures}  ({val_set.count} images, step {step}, {seconds:.1f}s); written "
          f"to {os.path.join(config.model_dir, config_lib.EVAL_FILE)}", flush=True)
    return result

