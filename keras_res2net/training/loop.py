"""The custom training loop: one code path for every `tf.distribute` strategy.

`model.fit` fails under MultiWorkerMirroredStrategy with Keras 3.15 / TF 2.21
(keras-team/keras#20585, tensorflow#72388), so, as the TF Model Garden does, the loop calls
`strategy.run` inside a `tf.function` and reduces per-replica sums itself. A
`tf.train.CheckpointManager` saves model, optimizer and step every `checkpoint_every` steps and
at each epoch end; restarting the same command resumes from the latest one, skipping the
batches already seen in that epoch. The chief writes checkpoints, TensorBoard scalars,
`history.json`/`history.png` and the final `model.keras`; other workers save to a scratch dir.
Data, model and folder are checked before `model_dir` is created; `train_config.json` records
which model a folder's checkpoints belong to; outputs go through temporary names, and the
temporaries of a killed run (`.partial-*`, `checkpoints/ckpt-N_temp`) are removed at the next
start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_res2net.cli_errors import atomic_file, remove_stale
from keras_res2net.training import data, optim
from keras_res2net.training.config import TrainConfig
from keras_res2net.training.model import build_model, export_model
from keras_res2net.training.strategies import is_chief, make_strategy, task_info

MODEL_FILE = "model.keras"
RUN_RECORD = "train_config.json"  # what model this folder's checkpoints belong to
# Fields that decide the checkpoint's variables: a folder trained with other values holds
# another model's checkpoint.
MODEL_FIELDS = ("model", "layers", "base_width", "scale", "init_weights", "optimizer")
STALE_PATTERNS = (".partial-*",)  # model.keras / history temporaries of killed runs
STALE_CHECKPOINT_PATTERNS = ("*_temp", "*_temp_*")  # tf.train.Checkpoint's staging folders


@dataclasses.dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    images: int
    seconds: float


def weights_digest(model: keras.Model) -> str:
    """A short SHA-256 of all weights: equal digests mean identical models."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def make_stat_sync(strategy: tf.distribute.Strategy, variables: list):
    """A function averaging `variables` (BatchNorm moving statistics) over all replicas.

    Keras 3 keeps BatchNorm moving statistics per replica (each worker its own); averaging
    them, as Keras 2's on-read MEAN variables did, makes every replica hold the same model.
    A no-op with one replica. Shared by the classification and detection trainers.
    """
    if strategy.num_replicas_in_sync == 1 or not variables:
        return lambda: None

    def replica_sync():
        context = tf.distribute.get_replica_context()
        local = [tf.identity(v.value) for v in variables]
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, local)
        for variable, mean in zip(variables, means, strict=True):
            variable.assign(mean)

    @tf.function
    def sync():
        strategy.run(replica_sync)

    return sync


class Trainer:
    """Builds strategy, data, model, optimizer and checkpoints for a resolved `TrainConfig`."""

    def __init__(self, config: TrainConfig):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("Training runs on the TensorFlow backend (tf.distribute, "
                               f"tf.data); KERAS_BACKEND is {keras.backend.backend()!r}.")
        self.config = config
        keras.utils.set_random_seed(config.seed)
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        self.strategy = make_strategy(config.strategy, tpu=config.tpu, device=config.device)
        self.chief = is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(f"--batch_size {config.batch_size} must be a multiple of the "
                             f"{replicas} replicas.")
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
        self.total_steps = config.epochs * self.steps_per_epoch
        with self.strategy.scope():
            self.model = build_model(config, self.source.num_classes)
            variables = self.model.trainable_variables
            self.optimizer = optim.make_optimizer(config, self.steps_per_epoch, variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step)
        self._scratch = None
        ckpt_dir = os.path.join(config.model_dir, "checkpoints")
        if not self.chief:  # every worker saves (collectively); only the chief's copy is kept
            task_type, task_index = task_info()
            self._scratch = tempfile.mkdtemp(prefix=f"res2net_{task_type}{task_index}_")
            ckpt_dir = self._scratch
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir,
                                                  max_to_keep=config.max_checkpoints)
        self._train_fn = self._make_train_fn()
        self._eval_fn = self._make_eval_fn()
        self._sync_fn = self._make_sync_fn()
        self.history: list[dict] = []

    # -- steps ------------------------------------------------------------------------------
    def _make_train_fn(self):
        config, model, optimizer = self.config, self.model, self.optimizer
        global_batch = config.batch_size
        replicas = self.strategy.num_replicas_in_sync

        def gradients(images, labels):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                per_example = keras.losses.categorical_crossentropy(
                    labels, logits, from_logits=True, label_smoothing=config.label_smoothing)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                loss += optim.l2_penalty(config, variables) / replicas
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), tf.float32))
            return grads, tf.reduce_sum(per_example) / global_batch, correct

        # XLA compiles forward and backward; the optimizer update (with its cross-replica
        # all-reduce) stays outside, so --jit_compile works under every strategy.
        gradients = tf.function(gradients, jit_compile=config.jit_compile)

        def replica_step(images, labels):
            grads, loss, correct = gradients(images, labels)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss, correct

        @tf.function
        def train_step(iterator):
            images, labels = next(iterator)
            loss, correct = self.strategy.run(replica_step, args=(images, labels))
            self.step.assign_add(1)
            reduce = tf.distribute.ReduceOp.SUM
            return (self.strategy.reduce(reduce, loss, axis=None),
                    self.strategy.reduce(reduce, correct, axis=None))

        return train_step

    def _make_eval_fn(self):
        model, num_classes = self.model, self.source.num_classes

        def replica_eval(images, labels, valid):
            logits = tf.cast(model(images, training=False), tf.float32)
            labels = tf.cast(labels, tf.int32)
            top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
            top5 = tf.cast(tf.math.in_top_k(labels, logits, min(5, num_classes)), tf.float32)
            loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            return tf.stack([tf.reduce_sum(valid * top1), tf.reduce_sum(valid * top5),
                             tf.reduce_sum(valid * loss), tf.reduce_sum(valid)])

        @tf.function
        def eval_step(iterator):
            sums = self.strategy.run(replica_eval, args=next(iterator))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        return eval_step

    def _make_sync_fn(self):
        return make_stat_sync(self.strategy, self.model.non_trainable_variables)

    # -- checkpoints ------------------------------------------------------------------------
    def restore(self) -> int:
        """Restore the latest checkpoint, if any; return the step it was saved at."""
        latest = tf.train.latest_checkpoint(os.path.join(self.config.model_dir, "checkpoints"))
        if latest is None:
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as err:
            # The half-restored checkpoint logs "unrestored values" warnings (dozens of lines)
            # when it is deleted; the error below says all of it.
            tf.get_logger().setLevel("ERROR")
            raise ValueError(f"--model_dir {self.config.model_dir}: its checkpoint {latest} "
                             "belongs to another model (variables differ: "
                             f"{str(err).strip().splitlines()[0][:160]}); choose another "
                             "--model_dir or train with the settings it was made with.") from err
        history = os.path.join(self.config.model_dir, "history.json")
        if os.path.exists(history):
            with open(history) as f:
                self.history = json.load(f)
        return int(self.step.numpy())

    def save(self) -> None:
        self._sync_fn()
        self.manager.save(checkpoint_number=int(self.step.numpy()))

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self) -> EvalResult:
        self._sync_fn()
        start = time.perf_counter()
        dist = self.strategy.distribute_datasets_from_function(
            lambda ctx: data.eval_dataset(self.source, self.config, ctx))
        iterator = iter(dist)
        totals = np.zeros(4)
        for _ in range(data.eval_steps(self.source, self.config)):
            totals += self._eval_fn(iterator).numpy()
        count = max(totals[3], 1.0)
        return EvalResult(totals[0] / count, totals[1] / count, totals[2] / count,
                          int(totals[3]), time.perf_counter() - start)

    # -- training ---------------------------------------------------------------------------
    def train(self) -> EvalResult:
        """Train to `epochs`, resuming from the latest checkpoint; return the final eval."""
        config, spe = self.config, self.steps_per_epoch
        step = self.restore()
        if self.chief:  # after restore: a folder whose checkpoint does not fit keeps its record
            write_run_record(config)
        if step >= self.total_steps:
            self._log(f"Nothing to train: the run in {config.model_dir} already finished "
                      f"(step {step}/{self.total_steps}, {config.epochs} epochs). Its outputs: "
                      f"{os.path.join(config.model_dir, MODEL_FILE)}, history.json, "
                      "history.png. Pass a larger --epochs to train on, or a new --model_dir "
                      "to start over.")
        elif step:
            self._log(f"Resumed from {self.manager.latest_checkpoint or 'checkpoint'} at step "
                      f"{step} (epoch {step // spe + 1}, batch {step % spe}).")
        writer = self._summary_writer()
        run_start, run_images, steps_this_run = time.perf_counter(), 0, 0
        result = None
        if step and step % spe == 0 and (not self.history or self.history[-1]["step"] < step):
            # Killed between an epoch's last step and its evaluation: evaluate it now.
            result = self.evaluate()
            self._record(writer, step // spe, step, float("nan"), float("nan"), result,
                         float("nan"))
        for epoch in range(step // spe, config.epochs):
            skip = step - epoch * spe
            dist = self.strategy.distribute_datasets_from_function(
                lambda ctx, e=epoch, s=skip: data.train_dataset(self.source, config, ctx, e, s))
            iterator = iter(dist)
            # A live bar on a terminal; in a log (make run, CI) only the epoch line below,
            # which says all the bar's last line would.
            live = self.chief and sys.stdout.isatty()
            if live:
                self._log(f"Epoch {epoch + 1}/{config.epochs}")
            bar = keras.utils.Progbar(spe, stateful_metrics=["loss", "acc", "img/s"],
                                      verbose=1 if live else 0)
            loss_sum = correct_sum = 0.0
            epoch_start = time.perf_counter()
            for batch in range(skip, spe):
                loss, correct = self._train_fn(iterator)
                step += 1
                steps_this_run += 1
                done = batch - skip + 1
                loss_sum += float(loss)
                correct_sum += float(correct)
                seconds = time.perf_counter() - epoch_start
                bar.update(batch + 1, [("loss", loss_sum / done),
                                       ("acc", correct_sum / (done * config.batch_size)),
                                       ("img/s", done * config.batch_size / seconds)])
                if step % config.checkpoint_every == 0:
                    self.save()
            seconds = time.perf_counter() - epoch_start
            images = (spe - skip) * config.batch_size
            run_images += images
            result = self.evaluate()
            self.save()
            record = self._record(writer, epoch + 1, step, loss_sum / max(spe - skip, 1),
                                  correct_sum / max(images, 1), result, images / seconds)
            self._log(f"epoch {epoch + 1}/{config.epochs}  step {step}  loss {record['loss']:.4f}"
                      f"  acc {record['accuracy']:.4f}  val_loss {result.loss:.4f}  val_top1 "
                      f"{result.top1:.4f}  val_top5 {result.top5:.4f}  lr {record['lr']:.4g}  "
                      f"{record['images_per_sec']:.1f} img/s  {seconds:.1f}s")
        if result is None:  # already trained to the end: report the restored model
            result = self.evaluate()
        elapsed = time.perf_counter() - run_start
        path = self.finish()
        self._summary(result, elapsed, run_images, steps_this_run, path)
        return result

    def _summary_writer(self):
        try:
            import tensorboard  # noqa: F401  (tf.summary.scalar needs it)
        except ImportError:
            self._log("TensorBoard is not installed (pip install 'keras-res2net[train]'): "
                      "no scalars are written; history.json and history.png still are.")
            return None
        if not self.chief:
            return None
        return tf.summary.create_file_writer(os.path.join(self.config.model_dir, "tensorboard"))

    def _record(self, writer, epoch: int, step: int, loss: float, accuracy: float,
                result: EvalResult, images_per_sec: float) -> dict:
        record = dict(epoch=epoch, step=step, loss=loss, accuracy=accuracy,
                      val_loss=result.loss, val_top1=result.top1, val_top5=result.top5,
                      lr=float(self.optimizer.learning_rate), images_per_sec=images_per_sec)
        self.history.append(record)
        self._write_epoch(writer, record)
        return record

    def _write_epoch(self, writer, record: dict) -> None:
        if writer is not None:
            with writer.as_default(step=record["step"]):
                for key in ("loss", "accuracy", "lr", "images_per_sec"):
                    tf.summary.scalar(f"train/{key}", record[key])
                for key in ("val_loss", "val_top1", "val_top5"):
                    tf.summary.scalar(f"validation/{key[4:]}", record[key])
            writer.flush()
        if self.chief:
            with atomic_file(os.path.join(self.config.model_dir, "history.json")) as temporary:
                with open(temporary, "w") as f:
                    json.dump(self.history, f, indent=1)

    def finish(self) -> str | None:
        """Write `model.keras` and `history.png` (chief); drop a worker's scratch copy."""
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if not self.chief:
            return None
        path = os.path.join(self.config.model_dir, MODEL_FILE)
        exported = export_model(self.model, self.config, self.source.num_classes)
        with atomic_file(path) as temporary:  # a kill mid-save leaves no truncated model.keras
            exported.save(temporary)
        if self.history:
            with atomic_file(os.path.join(self.config.model_dir, "history.png")) as temporary:
                plot_history(self.history, temporary)
        return path

    def _summary(self, result: EvalResult, elapsed: float, images: int, steps: int,
                 path: str | None) -> None:
        rate = images / elapsed if elapsed else 0.0
        where = f"model written to {path}" if path else "model written by the chief"
        print(f"Final: val top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  "
              f"({result.images} validation images)  trained {steps} steps in {elapsed:.1f}s  "
              f"{rate:.1f} img/s  step {int(self.step.numpy())}/{self.total_steps}  "
              f"weights sha256 {weights_digest(self.model)}  {where}", flush=True)
        if path:
            print(output_summary(self.config.model_dir), flush=True)

    def _log(self, message: str) -> None:
        if self.chief:
            print(message, flush=True)


def output_summary(model_dir: str) -> str:
    """Where a finished run's outputs are, one line each (those that exist)."""
    outputs = ((MODEL_FILE, "the trained model (images normalised by preprocess_input)"),
               ("history.png", "loss and accuracy per epoch"),
               ("history.json", "the same figures as numbers"),
               ("tensorboard", "scalars: tensorboard --logdir " + os.path.join(model_dir,
                                                                              "tensorboard")),
               ("checkpoints", "rerun the same command to resume or extend (--epochs)"),
               (RUN_RECORD, "the run's settings"))
    lines = [f"Outputs in {model_dir}:"]
    lines += [f"  {name:<18} {what}" for name, what in outputs
              if os.path.exists(os.path.join(model_dir, name))]
    return "\n".join(lines)


def plot_history(history: list[dict], path: str) -> None:
    """Loss and accuracy per epoch (train and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [h["accuracy"] for h in history], label="train")
    ax_acc.plot(epochs, [h["val_top1"] for h in history], label="validation top-1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    if is_chief(trainer.strategy):
        os.makedirs(config.model_dir, exist_ok=True)
        remove_stale(config.model_dir, STALE_PATTERNS)
        remove_stale(os.path.join(config.model_dir, "checkpoints"), STALE_CHECKPOINT_PATTERNS)
    if not config.eval_only:
        return trainer.train()
    step = trainer.restore()
    if not step and not config.init_weights:
        raise FileNotFoundError(f"--eval_only: no checkpoint in {config.model_dir}/checkpoints "
                                "and no --init_weights to evaluate.")
    result = trainer.evaluate()
    rate = result.images / result.seconds
    print(f"Eval: val top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}  "
          f"({result.images} images, step {step}, {rate:.1f} img/s)", flush=True)
    return result
