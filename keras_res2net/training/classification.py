"""Classification as a `Task` of the one trainer (`training.trainer`), and `run`.

`ClassificationTask` provides the Res2Net classifier (`model.build_model`), the reference
recipe's optimizer and coupled L2 (`optim`), the shuffled per-epoch input pipeline and the
distributed top-1/top-5 evaluation (`data`); `Trainer(config)` runs it under the strategy of
a resolved `TrainConfig`. The trainer owns checkpoints, resume, progress, TensorBoard,
`history.json`/`history.png` and the final summary; this module adds the classification
run's folder record: data, model and folder are checked before `model_dir` is created, and
`train_config.json` records which model a folder's checkpoints belong to. The chief writes
the final `model.keras`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_res2net.cli_errors import atomic_file
from keras_res2net.training import data, optim
from keras_res2net.training import trainer as trainer_lib
from keras_res2net.training.config import TrainConfig
from keras_res2net.training.model import build_model, export_model
from keras_res2net.training.strategies import make_strategy

MODEL_FILE = "model.keras"
RUN_RECORD = "train_config.json"  # what model this folder's checkpoints belong to
# Fields that decide the checkpoint's variables: a folder trained with other values holds
# another model's checkpoint.
MODEL_FIELDS = ("model", "layers", "base_width", "scale", "init_weights", "optimizer")


@dataclasses.dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    images: int
    seconds: float


class ClassificationTask(trainer_lib.Task):
    """A Res2Net classifier trained with the reference recipe on `config`'s data.

    Opens (and scans) the data source when built: a bad data set fails here, before any
    folder is written."""

    artifact = "model"
    plotted_metrics = ("top1", "top5")

    def __init__(self, config: TrainConfig):
        self.config, self.seed = config, config.seed
        self.global_batch_size = config.batch_size
        self.source = data.open_source(
            config.data, data_dir=config.data_dir, image_size=config.image_size,
            train_split=config.train_split, val_split=config.val_split,
            num_classes=config.num_classes, label_offset=config.label_offset, seed=config.seed,
            skip_bad_images=config.skip_bad_images)
        train_count = self.source.num_examples[self.source.splits[0]]
        self.steps_per_epoch = config.steps_per_epoch or train_count // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"--batch_size {config.batch_size} is larger than the "
                             f"{train_count} training images.")
        self.last_eval: EvalResult | None = None
        self._gradients = None
        self._eval_fn = None

    def build_model(self) -> keras.Model:
        return build_model(self.config, self.source.num_classes)

    def build_optimizer(self, model: keras.Model) -> keras.optimizers.Optimizer:
        return optim.make_optimizer(self.config, self.steps_per_epoch,
                                    model.trainable_variables)

    def train_dataset(self, context, epoch: int, skip: int) -> tf.data.Dataset:
        return data.train_dataset(self.source, self.config, context, epoch, skip)

    def train_step(self, inputs, model, optimizer, num_replicas: int) -> dict:
        """Cross-entropy (label smoothing) + coupled L2, loss-scaled under mixed_float16;
        forward and backward XLA-compiled with `--jit_compile`, the update (with its
        cross-replica all-reduce) outside, so that works under every strategy."""
        if self._gradients is None:
            self._gradients = self._make_gradients(model, optimizer, num_replicas)
        images, labels = inputs
        grads, loss, accuracy = self._gradients(images, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {"loss": loss, "accuracy": accuracy}

    def _make_gradients(self, model, optimizer, num_replicas: int):
        config = self.config

        def gradients(images, labels):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                per_example = keras.losses.categorical_crossentropy(
                    labels, logits, from_logits=True, label_smoothing=config.label_smoothing)
                loss = tf.nn.compute_average_loss(per_example,
                                                  global_batch_size=config.batch_size)
                loss += optim.l2_penalty(config, variables) / num_replicas
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)),
                              tf.float32)
            return grads, tf.reduce_mean(per_example), tf.reduce_mean(correct)

        return tf.function(gradients, jit_compile=config.jit_compile, autograph=False)

    def evaluate(self, model, strategy) -> dict[str, float]:
        """Top-1, top-5 and loss over the whole validation split (padding excluded)."""
        if self._eval_fn is None:
            self._eval_fn = self._make_eval_fn(model, strategy)
        start = time.perf_counter()
        dist = strategy.distribute_datasets_from_function(
            lambda ctx: data.eval_dataset(self.source, self.config, ctx))
        iterator = iter(dist)
        totals = np.zeros(4)
        for _ in range(data.eval_steps(self.source, self.config)):
            totals += self._eval_fn(iterator).numpy()
        count = max(totals[3], 1.0)
        self.last_eval = EvalResult(totals[0] / count, totals[1] / count, totals[2] / count,
                                    int(totals[3]), time.perf_counter() - start)
        return {"loss": self.last_eval.loss, "top1": self.last_eval.top1,
                "top5": self.last_eval.top5}

    def _make_eval_fn(self, model, strategy):
        num_classes = self.source.num_classes

        def replica_eval(images, labels, valid):
            logits = tf.cast(model(images, training=False), tf.float32)
            labels = tf.cast(labels, tf.int32)
            top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
            top5 = tf.cast(tf.math.in_top_k(labels, logits, min(5, num_classes)), tf.float32)
            loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            return tf.stack([tf.reduce_sum(valid * top1), tf.reduce_sum(valid * top5),
                             tf.reduce_sum(valid * loss), tf.reduce_sum(valid)])

        @tf.function(autograph=False)
        def eval_step(iterator):
            sums = strategy.run(replica_eval, args=next(iterator))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        return eval_step

    def begin(self, model_dir: str, chief: bool) -> None:
        if chief:  # after restore: a folder whose checkpoint does not fit keeps its record
            write_run_record(self.config)

    def export_path(self, model_dir: str) -> str:
        return os.path.join(model_dir, MODEL_FILE)

    def export(self, model, path: str) -> None:
        export_model(model, self.config, self.source.num_classes).save(path)

    def summary(self, metrics: dict[str, float]) -> str:
        result = self.last_eval
        return (f"val top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  ({result.images} "
                "validation images)")


# Measured on one core of a quiet 2-core machine (Res2Net, one block per stage, 32x32
# digits): a training step of 8 images took 1.8 s in mixed_float16 and 0.05 s in float32.
CPU_FLOAT16_NOTE = ("Note: --mixed_precision mixed_float16 without a GPU or TPU: CPUs "
                    "emulate float16 kernels, ~35x slower than float32 (it pays off on GPUs).")


def on_accelerator() -> bool:
    """Whether this process sees a GPU or TPU (after the strategy has connected to a TPU)."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


class Trainer(trainer_lib.Trainer):
    """The one trainer on a `ClassificationTask` for a resolved `TrainConfig`: strategy,
    data, model, optimizer and checkpoints built; nothing written before `train()`."""

    def __init__(self, config: TrainConfig):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("Training runs on the TensorFlow backend (tf.distribute, "
                               f"tf.data); KERAS_BACKEND is {keras.backend.backend()!r}.")
        self.config = config
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        strategy = make_strategy(config.strategy, tpu=config.tpu, device=config.device)
        replicas = strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(f"--batch_size {config.batch_size} must be a multiple of the "
                             f"{replicas} replicas.")
        task = ClassificationTask(config)
        super().__init__(task, config.model_dir, strategy,
                         steps_per_epoch=task.steps_per_epoch,
                         total_steps=config.epochs * task.steps_per_epoch,
                         checkpoint_every=config.checkpoint_every,
                         max_checkpoints=config.max_checkpoints,
                         deterministic=config.deterministic)
        self.source = task.source
        if config.mixed_precision == "mixed_float16" and not on_accelerator():
            self._log(CPU_FLOAT16_NOTE)

    def train(self) -> EvalResult:
        """Train to `epochs`, resuming from the latest checkpoint; return the final eval."""
        super().train()
        return self.task.last_eval


def _record_fields(config: TrainConfig) -> dict:
    record = dataclasses.asdict(config)
    record["layers"] = list(config.layers) if config.layers else None
    return record


def read_run_record(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, RUN_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_model_dir(config: TrainConfig) -> None:
    """Refuse a `model_dir` whose checkpoints belong to another model (its run record says so)
    before anything is built or written."""
    record = read_run_record(config.model_dir)
    has_checkpoint = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
    if record is None or not has_checkpoint:
        return
    ours = _record_fields(config)
    differ = [name for name in MODEL_FIELDS if record.get(name) != ours.get(name)]
    if differ:
        theirs = ", ".join(f"--{name} {record.get(name)}" for name in differ)
        mine = ", ".join(f"--{name} {ours.get(name)}" for name in differ)
        raise ValueError(f"--model_dir {config.model_dir} belongs to another model (trained "
                         f"with {theirs}; this run has {mine}): choose another --model_dir, or "
                         "rerun with the settings it was made with.")


def write_run_record(config: TrainConfig) -> None:
    """`train_config.json`: the resolved config, read back by `check_model_dir` on resume and
    by `keras_res2net.predict` (eval transform of model.keras)."""
    path = os.path.join(config.model_dir, RUN_RECORD)
    if read_run_record(config.model_dir) is not None and tf.train.latest_checkpoint(
            os.path.join(config.model_dir, "checkpoints")):
        return  # keep the record of the run being resumed
    with atomic_file(path) as temporary:
        with open(temporary, "w") as f:
            json.dump(_record_fields(config), f, indent=1)


def run(config: TrainConfig) -> EvalResult:
    """Train (or, with `eval_only`, evaluate) as `config` says; the entry point of scripts.

    Everything that can be checked (data, model, the folder's earlier run) is checked before
    `model_dir` is created, and temporaries of killed runs are removed (and reported)."""
    check_model_dir(config)
    policy = keras.config.dtype_policy()
    try:
        return _run(config)
    finally:  # --mixed_precision sets the global policy; leave the caller's as it was
        keras.config.set_dtype_policy(policy)


def _run(config: TrainConfig) -> EvalResult:
    trainer = Trainer(config)  # opens (and scans) the data, builds the model: writes nothing
    if not config.eval_only:
        return trainer.train()  # creates model_dir, removes temporaries of killed runs
    step = trainer.restore()
    if not step and not config.init_weights:
        raise FileNotFoundError(f"--eval_only: no checkpoint in {config.model_dir}/checkpoints "
                                "and no --init_weights to evaluate.")
    trainer.evaluate()
    result = trainer.task.last_eval
    rate = result.images / result.seconds
    print(f"Eval: val top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}  "
          f"({result.images} images, step {step}, {rate:.1f} img/s)", flush=True)
    return result
