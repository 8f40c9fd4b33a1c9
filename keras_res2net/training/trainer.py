"""One trainer for every task: classification and detection plug in as `Task`s.

As TF Model Garden's tasks plug into its one trainer, a `Task` says *what* is trained (model,
optimizer, input pipelines, the replica's train step, the evaluation) and `Trainer` says
*how*, the same for every task:

- under any `tf.distribute` strategy, through one custom loop: `strategy.run` inside a
  `tf.function` (`model.fit` fails under MultiWorkerMirroredStrategy with Keras 3.15 /
  TF 2.21, keras-team/keras#20585, tensorflow#72388); each input pipeline builds its own
  shard (`distribute_datasets_from_function`) with the per-replica batch size; BatchNorm
  moving statistics are averaged over the replicas before every save and evaluation;
- a `tf.train.CheckpointManager` (model, optimizer, step; under `run/` the cluster size and
  the task's `checkpoint_items()`) every `checkpoint_every` steps and at each epoch end; a
  restarted run (after SIGKILL too) resumes from the latest checkpoint, on the cluster size
  that wrote it, the task's input pipeline skipping the batches already seen in that epoch;
  temporaries of a killed run (`checkpoints/*_temp`, `.partial-*`) are removed at the start;
- a SIGTERM to any worker makes every worker save the next step's checkpoint and stop
  (`PreemptedError`, exit status 42); a lost peer (its heartbeats stop) stops the survivors
  (`WorkerLostError`); `deterministic` turns on op determinism (`determinism`);
- a progress bar per epoch (running means of every value the train step returns), one line
  per epoch, TensorBoard scalars (`tensorboard/`: `train/*`, `validation/*`),
  `history.json` and `history.png` (curves of every train value and evaluation metric),
  an evaluation at each epoch end (when the task has evaluation data), and a final summary
  with a weights digest;
- the chief writes checkpoints, summaries and the task's exported artifact, each through a
  temporary name; other workers save their (collective) checkpoints to a scratch folder.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from keras_res2net.cli_errors import WorkError, atomic_file, remove_stale
from keras_res2net.training import determinism
from keras_res2net.training.strategies import is_chief, num_workers, task_info

CHECKPOINTS = "checkpoints"
HISTORY = "history.json"
STALE_PATTERNS = (".partial-*",)  # artifact / history temporaries of killed runs
STALE_CHECKPOINT_PATTERNS = ("*_temp", "*_temp_*")  # tf.train.Checkpoint's staging folders
#: Exit status of a run stopped by SIGTERM after saving a checkpoint: "rerun to resume"
#: (TensorFlow's `TerminationConfig` restart code).
PREEMPTED_EXIT_CODE = 42
# What a collective op raises once the coordination service has found a peer gone (its
# heartbeats stopped, or its connection was reset): the survivors stop with `WorkerLostError`.
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                    tf.errors.AbortedError, tf.errors.CancelledError)


class PreemptedError(WorkError):
    """A SIGTERM stopped the run after its checkpoint was saved; rerunning resumes."""

    exit_code = PREEMPTED_EXIT_CODE


class WorkerLostError(WorkError):
    """A worker of a multi-worker run stopped or became unreachable (exit status 1)."""


class Task(abc.ABC):
    """What one kind of training provides; `Trainer` runs it.

    `train_step` runs on each replica (under `strategy.run`) and returns scalars that are
    means over the replica's batch; the trainer averages them over the replicas (equal
    per-replica batches: the global mean) and shows, logs and plots them. `evaluate` returns
    metrics (floats) or `{}` when there is nothing to evaluate on.
    """

    #: Name of what `export` writes, for the final summary ("model", "weights").
    artifact = "model"
    #: Evaluation metrics drawn in history.png's second panel (beside train accuracy).
    plotted_metrics: tuple[str, ...] = ()

    seed: int = 0
    global_batch_size: int

    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """The model, variables created (called in the strategy's scope)."""

    @abc.abstractmethod
    def build_optimizer(self, model: keras.Model) -> keras.optimizers.Optimizer:
        """The optimizer for `model` (called in the strategy's scope; the trainer builds it)."""

    @abc.abstractmethod
    def train_dataset(self, context: tf.distribute.InputContext, epoch: int,
                      skip: int) -> tf.data.Dataset:
        """Epoch `epoch`'s per-replica batches of this input pipeline, repeated, the first
        `skip` batches left out (a resumed run sees the data an uninterrupted one would)."""

    @abc.abstractmethod
    def train_step(self, inputs, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                   num_replicas: int) -> dict[str, tf.Tensor]:
        """One optimisation step on this replica's batch: the update is that of the loss
        averaged over the global batch; returns per-replica means (losses, accuracy)."""

    def evaluate(self, model: keras.Model, strategy: tf.distribute.Strategy
                 ) -> dict[str, float]:
        """Metrics of `model` on the task's evaluation data (`{}`: none). Called on every
        worker (a distributed evaluation runs collectively)."""
        return {}

    def begin(self, model_dir: str, chief: bool) -> None:
        """Called by `train()` once the latest checkpoint is restored (a run record)."""
        del model_dir, chief  # nothing to record by default

    def checkpoint_items(self) -> dict:
        """Task state the trainer saves in every checkpoint and restores on resume, beside
        model, optimizer and step: `{name: trackable}` (e.g. a random generator's state)."""
        return {}

    @abc.abstractmethod
    def export(self, model: keras.Model, path: str) -> None:
        """Write the trained artifact to `path` (a temporary name the trainer renames onto
        `export_path`)."""

    def export_path(self, model_dir: str) -> str:
        """Where the chief writes the trained artifact."""
        return os.path.join(model_dir, "model.keras")

    def summary(self, metrics: dict[str, float]) -> str:
        """The final summary's account of the last evaluation."""
        return "  ".join(f"val {k} {v:.4f}" for k, v in metrics.items())


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
    A no-op with one replica.
    """
    if strategy.num_replicas_in_sync == 1 or not variables:
        return lambda: None

    def replica_sync():
        context = tf.distribute.get_replica_context()
        local = [tf.identity(v.value) for v in variables]
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, local)
        for variable, mean in zip(variables, means, strict=True):
            variable.assign(mean)

    @tf.function(autograph=False)
    def sync():
        strategy.run(replica_sync)

    return sync


def short_name(key: str) -> str:
    """Progress-bar and log name of a train value: `rpn_cls`, `s1_mask`, `loss` (total)."""
    if key in ("total_loss", "loss"):
        return "loss"
    return "acc" if key == "accuracy" else key.removesuffix("_loss")


def peer_failure(err: tf.errors.OpError) -> str:
    """The line of a collective's error that says which peer failed and how."""
    lines = [line.strip() for line in str(err.message).splitlines() if line.strip()]
    clues = ("heartbeat", "unhealthy", "Socket closed", "Connection reset", "is down",
             "Deadline Exceeded", "Connection refused")
    cause = next((line for line in lines if any(clue in line for clue in clues)),
                 lines[0] if lines else type(err).__name__)
    return cause.removeprefix("Error reported from ")[:200]


class Trainer:
    """Runs a `Task` under `strategy` for `total_steps`, in epochs of `steps_per_epoch`.

    Seeds Python, NumPy, TF and Keras with `task.seed`, then builds model, optimizer and step
    counter in the strategy's scope. With `deterministic`, turns on TensorFlow's op
    determinism first (see `determinism`). Nothing is written before `train()`.
    """

    def __init__(self, task: Task, model_dir: str, strategy: tf.distribute.Strategy, *,
                 steps_per_epoch: int, total_steps: int, checkpoint_every: int = 500,
                 max_checkpoints: int = 3, deterministic: bool = False):
        self.task, self.strategy = task, strategy
        self.model_dir = str(model_dir)
        self.chief = is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync
        self.workers = num_workers(strategy)
        if task.global_batch_size % self.replicas:
            raise ValueError(f"batch size {task.global_batch_size} must be a multiple of the "
                             f"{self.replicas} replicas.")
        if steps_per_epoch < 1 or total_steps < 0:
            raise ValueError(f"steps per epoch must be >= 1 (got {steps_per_epoch}) and "
                             f"total steps >= 0 (got {total_steps}).")
        self.deterministic = deterministic
        if deterministic:
            error = determinism.strategy_error(strategy)
            if error:
                raise ValueError(error)
            determinism.enable()
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.epochs = math.ceil(total_steps / steps_per_epoch)
        self.checkpoint_every = checkpoint_every
        keras.utils.set_random_seed(task.seed)
        with strategy.scope():
            self.model = task.build_model()
            self.optimizer = task.build_optimizer(self.model)
            # Slots created here, mirrored, not lazily inside the first `strategy.run`
            # (which fails with several local replicas).
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # The cluster that wrote a checkpoint (workers, replicas): the data order and the
        # task's per-worker random state depend on it, so a resume on another is refused.
        self.cluster = tf.Variable([self.workers, self.replicas], dtype=tf.int64,
                                   trainable=False, name="cluster")
        run_state = tf.train.Checkpoint(cluster=self.cluster, **task.checkpoint_items())
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step, run=run_state)
        # What checkpoints written before the run state existed hold.
        self._core_checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                                    step=self.step)
        self._scratch = None
        ckpt_dir = os.path.join(self.model_dir, CHECKPOINTS)
        if not self.chief:  # every worker saves (collectively); only the chief's copy is kept
            task_type, task_index = task_info()
            self._scratch = tempfile.mkdtemp(prefix=f"res2net_{task_type}{task_index}_")
            ckpt_dir = self._scratch
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir,
                                                  max_to_keep=max_checkpoints)
        self._sync = make_stat_sync(strategy, self.model.non_trainable_variables)
        self._train_fn = self._make_train_fn()
        self._sigterm = threading.Event()  # set by a SIGTERM during train()
        self._steps_done = self._first_step = 0  # the step reached; the run's first
        self.history: list[dict] = []
        self.metrics: dict[str, float] = {}  # of the last evaluation
        self.seconds_per_step = 0.0  # of the last train(), after its first step

    # -- step ---------------------------------------------------------------------------------
    def _make_train_fn(self):
        task, model, optimizer, replicas = self.task, self.model, self.optimizer, self.replicas

        def replica_step(inputs, sigterm):
            return task.train_step(inputs, model, optimizer, replicas), sigterm

        @tf.function(autograph=False)  # plain graph code: tracing without autograph is ~1/3 quicker
        def train_step(iterator, sigterm):
            """One step; `sigterm` (1.0 if this worker received one) is reduced with the
            step's values, so every worker learns in the same step that one was told to
            stop."""
            values, stop = self.strategy.run(replica_step, args=(next(iterator), sigterm))
            self.step.assign_add(1)
            mean = tf.distribute.ReduceOp.MEAN  # equal per-replica batches: the global mean
            return ({k: self.strategy.reduce(mean, v, axis=None) for k, v in values.items()},
                    self.strategy.reduce(mean, stop, axis=None))

        return train_step

    def _run_step(self, iterator) -> dict:
        """One train step; saves a checkpoint and raises `PreemptedError` if any worker
        received a SIGTERM (before or during it)."""
        sigterm = tf.constant(1.0 if self._sigterm.is_set() else 0.0)
        if self.deterministic and self._steps_done == self._first_step:
            determinism.check_step(self._train_fn.get_concrete_function(iterator, sigterm))
        values, stop = self._train_fn(iterator, sigterm)
        values = {k: float(v) for k, v in values.items()}
        self._steps_done += 1
        if float(stop) > 0:
            self._stop_preempted()
        return values

    # -- checkpoints --------------------------------------------------------------------------
    def restore(self) -> int:
        """Restore the latest checkpoint (and history.json), if any; return its step."""
        latest = tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINTS))
        if latest is None:
            return 0
        # A checkpoint written before the run state (cluster, task items) was saved
        # restores without it: the run goes on, its task state restarting.
        keys = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
        has_run_state = any(key.startswith("run/") for key in keys)
        checkpoint = self.checkpoint if has_run_state else self._core_checkpoint
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as err:
            # The half-restored checkpoint logs "unrestored values" warnings (dozens of lines)
            # when it is deleted; the error below says all of it.
            tf.get_logger().setLevel("ERROR")
            raise ValueError(f"--model_dir {self.model_dir}: its checkpoint {latest} belongs "
                             "to another model (variables differ: "
                             f"{str(err).strip().splitlines()[0][:160]}); choose another "
                             "--model_dir or train with the settings it was made with.") from err
        history = os.path.join(self.model_dir, HISTORY)
        if os.path.exists(history):
            with open(history) as f:
                self.history = json.load(f)
        return int(self.step.numpy())

    def _check_cluster(self, step: int) -> None:
        """Refuse to resume a checkpoint on another number of workers or replicas (an
        evaluation of it may run on any; a checkpoint without the record passes)."""
        saved = [int(v) for v in self.cluster.numpy()]
        if saved != [self.workers, self.replicas]:
            def size(workers: int, replicas: int) -> str:
                return (f"{workers} worker{'s' * (workers != 1)} ({replicas} "
                        f"replica{'s' * (replicas != 1)})")
            raise ValueError(f"--model_dir {self.model_dir}: its checkpoint (step {step}) was "
                             f"trained by {size(*saved)}; this run has "
                             f"{size(self.workers, self.replicas)}. Resume it on "
                             f"{size(*saved)}: the data order and sampling depend on it; or "
                             "train in a new --model_dir.")

    def save(self) -> None:
        self._sync()
        self.manager.save(checkpoint_number=int(self.step.numpy()))

    def _latest_checkpoint(self) -> str:
        latest = tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINTS))
        return f"{latest} (step {latest.rsplit('-', 1)[1]})" if latest else "none yet"

    def _stop_preempted(self) -> None:
        """Save the step's checkpoint (all workers, collectively); raise `PreemptedError`."""
        self.save()
        step = int(self.step.numpy())
        digest = weights_digest(self.model)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        path = os.path.join(self.model_dir, CHECKPOINTS, f"ckpt-{step}")
        if self.workers > 1:
            whose = "this worker's" if self._sigterm.is_set() else "another worker's"
            cause, rerun = f"{whose} SIGTERM", "the same command on every worker"
        else:
            cause, rerun = "SIGTERM", "the same command"
        raise PreemptedError(f"stopped by {cause} after step {step}/{self.total_steps} "
                             f"(weights sha256 {digest}): checkpoint {path} saved; rerun "
                             f"{rerun} to resume.")

    @contextlib.contextmanager
    def _sigterm_checkpoints(self):
        """While training, a SIGTERM (a scheduler's preemption) sets a flag the next step
        reduces over all workers: every worker then saves that step's checkpoint and stops
        with `PreemptedError`. Outside the main thread (no signal handlers there) a no-op."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._sigterm.clear()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._sigterm.set())
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation of the current model (statistics averaged first)."""
        self._sync()
        self.metrics = self.task.evaluate(self.model, self.strategy)
        return self.metrics

    # -- training -----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Train to `total_steps`, resuming from the latest checkpoint; return the metrics of
        the last evaluation (`{}` if the task evaluates nothing).

        Raises `PreemptedError` after a SIGTERM (checkpoint saved) and, with several workers,
        `WorkerLostError` when a peer stopped or became unreachable (TensorFlow's coordination
        service aborts the collectives once the peer's heartbeats stop)."""
        if self.chief:
            os.makedirs(self.model_dir, exist_ok=True)
            remove_stale(self.model_dir, STALE_PATTERNS)
            remove_stale(os.path.join(self.model_dir, CHECKPOINTS), STALE_CHECKPOINT_PATTERNS)
        step = self.restore()
        self._check_cluster(step)
        self._steps_done = self._first_step = step
        self.task.begin(self.model_dir, self.chief)
        try:
            with self._sigterm_checkpoints():
                return self._train_from(step)
        except LOST_PEER_ERRORS as err:
            if self.workers == 1:
                raise
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)
            raise WorkerLostError(
                f"lost a worker of the {self.workers}-worker cluster at step "
                f"{self._steps_done}/{self.total_steps} ({type(err).__name__}: "
                f"{peer_failure(err)}): every worker must stop; rerun the same command on "
                f"every worker to resume from the latest checkpoint, "
                f"{self._latest_checkpoint()}.") from err

    def _train_from(self, step: int) -> dict[str, float]:
        spe, total = self.steps_per_epoch, self.total_steps
        if step >= total:
            self._log(f"Nothing to train: the run in {self.model_dir} already finished (step "
                      f"{step}/{total}). Its outputs: {self.task.export_path(self.model_dir)}, "
                      f"{HISTORY}, history.png. Train for longer, or use a new model folder "
                      "to start over.")
        elif step:
            self._log(f"Resumed from {self.manager.latest_checkpoint or 'checkpoint'} at step "
                      f"{step}/{total} (epoch {step // spe + 1}, batch {step % spe}).")
        writer = self._summary_writer()
        run_start, first_done, trained, images = time.perf_counter(), None, 0, 0
        evaluated = False
        if step and (step % spe == 0 or step == total) and (
                not self.history or self.history[-1]["step"] < step):
            # Killed between an epoch's last step and its evaluation: evaluate it now.
            self._end_epoch(writer, math.ceil(step / spe), step, {}, float("nan"), 0.0)
            evaluated = True
        batch_size = self.task.global_batch_size
        for epoch in range(step // spe, self.epochs):
            start, end = epoch * spe, min((epoch + 1) * spe, total)
            skip = step - start
            dist = self.strategy.distribute_datasets_from_function(
                lambda ctx, e=epoch, s=skip: self.task.train_dataset(ctx, e, s))
            iterator = iter(dist)
            # A live bar on a terminal; in a log (make run, CI) only the epoch line of
            # `_end_epoch`, which says all the bar's last line would.
            live = self.chief and sys.stdout.isatty()
            if live:
                self._log(f"Epoch {epoch + 1}/{self.epochs}")
            bar = keras.utils.Progbar(end - start, verbose=1 if live else 0,
                                      stateful_metrics=["img/s"])
            sums: dict[str, float] = {}
            done, epoch_start = 0, time.perf_counter()
            while step < end:
                values = self._run_step(iterator)
                step, done, trained = step + 1, done + 1, trained + 1
                if first_done is None:
                    first_done = time.perf_counter()
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                seconds = time.perf_counter() - epoch_start
                # Running means are computed here, so the bar must show them as they are.
                bar.stateful_metrics.update(short_name(k) for k in sums)
                bar.update(step - start, [(short_name(k), v / done) for k, v in sums.items()]
                           + [("img/s", done * batch_size / seconds)])
                if step % self.checkpoint_every == 0 and step != end:
                    self.save()
            self.save()
            seconds = time.perf_counter() - epoch_start
            images += done * batch_size
            means = {k: v / max(done, 1) for k, v in sums.items()}
            self._end_epoch(writer, epoch + 1, step, means, done * batch_size / seconds,
                            seconds)
            evaluated = True
        if not evaluated:  # already trained to the end: report the restored model
            self.evaluate()
        elapsed = time.perf_counter() - run_start
        self.seconds_per_step = ((time.perf_counter() - first_done) / max(trained - 1, 1)
                                 if trained else 0.0)
        path = self.finish()
        self._final_summary(elapsed, images, trained, path)
        if path:
            self._log(output_summary(self.model_dir, self.task))
        return self.metrics

    def _end_epoch(self, writer, epoch: int, step: int, means: dict, images_per_sec: float,
                   seconds: float) -> None:
        """Evaluate, record (history, TensorBoard) and log the epoch just ended."""
        metrics = self.evaluate()
        record = dict(epoch=epoch, step=step, **means,
                      **{f"val_{k}": float(v) for k, v in metrics.items()},
                      lr=float(self.optimizer.learning_rate), images_per_sec=images_per_sec,
                      seconds=seconds)
        if not self.chief:
            return
        self.history.append(record)
        # Every record holds every key (NaN where unknown: the train values of an epoch
        # whose evaluation a killed run left to the resumed one).
        keys = dict.fromkeys(k for h in self.history for k in h)
        for h in self.history:
            for key in keys:
                h.setdefault(key, float("nan"))
        if writer is not None:
            with writer.as_default(step=step):
                for key, value in record.items():
                    if key not in ("epoch", "step") and not math.isnan(value):
                        name = f"validation/{key[4:]}" if key.startswith("val_") else key
                        tf.summary.scalar(name if "/" in name else f"train/{key}", value)
            writer.flush()
        with atomic_file(os.path.join(self.model_dir, HISTORY)) as temporary:
            with open(temporary, "w") as f:
                json.dump(self.history, f, indent=1)
        parts = [f"epoch {epoch}/{self.epochs}", f"step {step}/{self.total_steps}",
                 *(f"{short_name(k)} {v:.4f}" for k, v in means.items()),
                 *(f"val_{k} {v:.4f}" for k, v in metrics.items()),
                 f"lr {record['lr']:.4g}", f"{images_per_sec:.1f} img/s", f"{seconds:.1f}s"]
        self._log("  ".join(parts))

    def _summary_writer(self):
        if not self.chief:
            return None
        try:
            import tensorboard  # noqa: F401  (tf.summary.scalar needs it)
        except ImportError:
            self._log("TensorBoard is not installed (pip install 'keras-res2net[train]'): "
                      "no scalars are written; history.json and history.png still are.")
            return None
        return tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard"))

    def finish(self) -> str | None:
        """Average BatchNorm statistics; the chief writes the task's artifact and
        `history.png`, each through a temporary name; a worker drops its scratch copy."""
        self._sync()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if not self.chief:
            return None
        path = self.task.export_path(self.model_dir)
        with atomic_file(path) as temporary:  # a kill mid-save leaves no truncated artifact
            self.task.export(self.model, temporary)
        if self.history:
            with atomic_file(os.path.join(self.model_dir, "history.png")) as temporary:
                plot_history(self.history, temporary, self.task.plotted_metrics)
        return path

    def _final_summary(self, elapsed: float, images: int, steps: int,
                       path: str | None) -> None:
        rate = images / elapsed if elapsed else 0.0
        artifact = self.task.artifact
        where = f"{artifact} written to {path}" if path else f"{artifact} written by the chief"
        evaluation = self.task.summary(self.metrics) if self.metrics else ""
        print(f"Final: {evaluation + '  ' if evaluation else ''}trained {steps} steps in "
              f"{elapsed:.1f}s ({self.seconds_per_step:.2f} s/step after the first, "
              f"{rate:.1f} img/s)  step {int(self.step.numpy())}/{self.total_steps}  "
              f"weights sha256 {weights_digest(self.model)}  {where}", flush=True)

    def _log(self, message: str) -> None:
        if self.chief:
            print(message, flush=True)


#: What a finished run folder holds besides the task's artifact, for the final summary.
RUN_OUTPUTS = (("history.png", "loss terms and validation metrics per epoch"),
               (HISTORY, "the same figures as numbers"),
               ("tensorboard", "scalars: tensorboard --logdir {model_dir}/tensorboard"),
               (CHECKPOINTS, "rerun the same command to resume or extend the run"),
               ("train_config.json", "the run's settings"),
               ("experiment.json", "the run's experiment (config, overrides included)"))


def output_summary(model_dir: str, task: Task) -> str:
    """Where a finished run's outputs are, one line each (those that exist)."""
    artifact = os.path.basename(task.export_path(model_dir))
    outputs = ((artifact, f"the trained {task.artifact}"), *RUN_OUTPUTS)
    lines = [f"Outputs in {model_dir}:"]
    lines += [f"  {name:<18} {what.format(model_dir=model_dir)}" for name, what in outputs
              if os.path.exists(os.path.join(model_dir, name))]
    return "\n".join(lines)


def plot_history(history: list[dict], path: str, metrics: tuple[str, ...] = ()) -> None:
    """history.png: every train loss and validation loss per epoch (left), train accuracy
    and the evaluation `metrics` (e.g. top-1, COCO AP) per epoch (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    keys = list(dict.fromkeys(k for h in history for k in h))

    def curve(ax, key, label):
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker=".", label=label)

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in keys:
        if key.endswith("loss"):
            label = ("validation " + key[4:]) if key.startswith("val_") else f"train {key}"
            curve(ax_loss, key, label)
    if "accuracy" in keys:
        curve(ax_metric, "accuracy", "train accuracy")
    for name in metrics:
        if f"val_{name}" in keys:
            curve(ax_metric, f"val_{name}", f"validation {name}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_metric.set(xlabel="epoch", ylabel="value", title="Accuracy / evaluation")
    for ax in (ax_loss, ax_metric):
        if ax.lines:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
