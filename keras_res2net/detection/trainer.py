"""Training and evaluation of a detection experiment under any `tf.distribute` strategy.

The same machinery as the classification trainer (`keras_res2net.training`): the strategy
comes from `training.strategies.make_strategy` (default, one_device, mirrored, multi_worker
from `TF_CONFIG`, tpu), each input pipeline builds its own shard of the data through
`strategy.distribute_datasets_from_function` with the per-replica batch size, and one
`tf.function` calls `strategy.run` on `DetectionTask.train_step`, whose loss is averaged over
the global batch. BatchNorm moving statistics are averaged over the replicas before every
save (`training.loop.make_stat_sync`). A `tf.train.CheckpointManager` keeps model, optimizer
and step in `model_dir/checkpoints` (the chief's; other workers save to a scratch folder) and
a restarted run resumes from it; at the end the chief also writes `detector.weights.h5`, which
evaluation, prediction and export read.

Every run folder carries `experiment.json` (`experiment_io`): the chief writes the resolved
config (overrides included) when training starts, and a folder that already holds one of
another experiment is refused before any model is built (`experiment_io.check_resumable`: the
model and data configs must match; the schedule and batch size may change on resuming).
`load_trained` rebuilds the model from that file.

Progress: a Progbar per epoch (an epoch is one pass over the training images when their
number is known), a one-line summary per epoch and a final summary with a weights digest.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from keras_res2net.detection import configs, experiment_io
from keras_res2net.detection.configs import ExperimentConfig
from keras_res2net.detection.data.pipeline import build_dataset
from keras_res2net.detection.data.sources import TrainSource, coco_json_source
from keras_res2net.detection.evaluation import CocoEvaluator
from keras_res2net.detection.task import DetectionTask
from keras_res2net.training.loop import make_stat_sync, weights_digest
from keras_res2net.training.strategies import is_chief, make_strategy, task_info

WEIGHTS = experiment_io.WEIGHTS_FILE  # "detector.weights.h5"
CHECKPOINTS = "checkpoints"


def loss_name(key: str) -> str:
    """Short progress-bar name of a loss: `rpn_cls`, `s1_mask`, `semantic`, `loss` (total)."""
    return "loss" if key == "total_loss" else key.removesuffix("_loss")


def resolve_steps(config: ExperimentConfig, num_examples: int | None) -> int | None:
    """Fill `config.train.steps` (and decay steps) from epochs; return steps per epoch."""
    train = config.train
    per_epoch = (math.ceil(num_examples / config.data.batch_size) if num_examples else None)
    if train.steps is None:  # epochs -> steps, as mmdetection's epoch-based runner
        if per_epoch is None:
            raise ValueError("this data source does not say how many images it holds: set "
                             "the number of training steps (--steps).")
        train.steps = train.epochs * per_epoch
        train.decay_steps = tuple(e * per_epoch for e in train.decay_epochs)
    return per_epoch


class DetectionTrainer:
    """Strategy, data, model, optimizer and checkpoints for one detection experiment.

    `strategy` is a `tf.distribute.Strategy` or a `--strategy` name. Build a multi_worker
    strategy before opening a TFDS or TFRecord source: collectives must be configured before
    the first TF op runs (train/coco.py does so).

    `model_dir/experiment.json` is checked and (by the chief) written here, before the model
    is built; `name` is the experiment name recorded in it (kept from the file if None)."""

    def __init__(self, config: ExperimentConfig, source: TrainSource, model_dir, *,
                 strategy: str | tf.distribute.Strategy | None = None,
                 backbone_weights: str | None = None, checkpoint_every: int = 200,
                 tpu: str | None = None, device: str | None = None,
                 name: str | None = None):
        if isinstance(strategy, str):
            strategy = make_strategy(strategy, tpu=tpu, device=device)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.config, self.source = config, source
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        replicas = self.strategy.num_replicas_in_sync
        if config.data.batch_size % replicas:
            raise ValueError(f"batch size {config.data.batch_size} must be a multiple of the "
                             f"{replicas} replicas.")
        keras.utils.set_random_seed(config.train.seed)  # Python, NumPy, TF and Keras seeds
        self.steps_per_epoch = resolve_steps(config, source.num_examples)
        # Every worker refuses a folder of another experiment; only the chief writes.
        experiment_io.check_resumable(self.model_dir, config)
        if self.chief:
            experiment_io.save_experiment(config, self.model_dir,
                                          name or experiment_io.saved_name(self.model_dir))
        # The task's sampling SeedGenerator stays a plain (per-worker) variable: created
        # in the scope it would be mirrored with aggregation "none", which replicas can't
        # update. Every worker starts it from the same seed.
        self.task = DetectionTask(config)
        with self.strategy.scope():
            self.model = self.task.build_model(backbone_weights)
            self.optimizer = self.task.build_optimizer()
            # Slots created here, mirrored, not lazily inside the first `strategy.run`
            # (which fails with several local replicas).
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.checkpoint_every = checkpoint_every
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step)
        ckpt_dir = str(self.model_dir / CHECKPOINTS)
        self._scratch = None
        if not self.chief:  # every worker saves (collectively); only the chief's copy is kept
            task_type, task_index = task_info()
            self._scratch = tempfile.mkdtemp(prefix=f"res2net_det_{task_type}{task_index}_")
            ckpt_dir = self._scratch
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=3)
        self._sync = make_stat_sync(self.strategy, self.model.non_trainable_variables)
        self._train_fn = self._make_train_fn()

    # -- data and step ------------------------------------------------------------------------
    def _dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        raw = self.source.raw()
        if context.num_input_pipelines > 1:
            raw = raw.shard(context.num_input_pipelines, context.input_pipeline_id)
        data = self.config.data
        return build_dataset(raw, batch_size=context.get_per_replica_batch_size(
                                 data.batch_size),
                             max_size=data.max_size, size_divisor=data.size_divisor,
                             max_instances=data.max_instances, training=True,
                             cache=self.source.cacheable, seed=self.config.train.seed)

    def _make_train_fn(self):
        task, model, optimizer = self.task, self.model, self.optimizer
        replicas = self.strategy.num_replicas_in_sync

        def replica_step(batch):
            return task.train_step(batch, model, optimizer, num_replicas=replicas)

        @tf.function
        def train_step(iterator):
            losses = self.strategy.run(replica_step, args=(next(iterator),))
            self.step.assign_add(1)
            mean = tf.distribute.ReduceOp.MEAN  # equal per-replica batches: the global mean
            return {k: self.strategy.reduce(mean, v, axis=None) for k, v in losses.items()}

        return train_step

    # -- checkpoints --------------------------------------------------------------------------
    def restore(self) -> int:
        """Restore the latest checkpoint, if any; return the step it was saved at."""
        latest = tf.train.latest_checkpoint(str(self.model_dir / CHECKPOINTS))
        if latest is None:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.step.numpy())

    def save(self) -> None:
        self._sync()
        self.manager.save(checkpoint_number=int(self.step.numpy()))

    # -- training -----------------------------------------------------------------------------
    def train(self) -> float:
        """Train to `config.train.steps`, resuming if possible; return seconds per step."""
        steps = self.config.train.steps
        interval = self.steps_per_epoch or min(steps, 500)
        epochs = math.ceil(steps / interval)
        step = self.restore()
        if step:
            self._log(f"Resumed from {self.manager.latest_checkpoint or 'checkpoint'} at step "
                      f"{step}/{steps}.")
        dist = self.strategy.distribute_datasets_from_function(self._dataset)
        iterator = iter(dist)
        batch_size = self.config.data.batch_size
        run_start, first_done, trained = time.perf_counter(), None, 0
        for epoch in range(step // interval, epochs):
            end = min((epoch + 1) * interval, steps)
            if step >= end:
                continue
            self._log(f"Epoch {epoch + 1}/{epochs}")
            verbose = (1 if sys.stdout.isatty() else 2) if self.chief else 0
            bar = keras.utils.Progbar(end - epoch * interval, verbose=verbose,
                                      stateful_metrics=["img/s"])
            sums: dict[str, float] = {}
            done, epoch_start = 0, time.perf_counter()
            while step < end:
                losses = self._train_fn(iterator)
                step, done, trained = step + 1, done + 1, trained + 1
                if first_done is None:
                    first_done = time.perf_counter()
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                seconds = time.perf_counter() - epoch_start
                # Running means are computed here, so the bar must show them as they are.
                bar.stateful_metrics.update(loss_name(k) for k in sums)
                bar.update(step - epoch * interval,
                           [(loss_name(k), v / done) for k, v in sums.items()]
                           + [("img/s", done * batch_size / seconds)])
                if step % self.checkpoint_every == 0 and step != end:
                    self.save()
            self.save()
            seconds = time.perf_counter() - epoch_start
            means = "  ".join(f"{loss_name(k)} {v / done:.4f}" for k, v in sums.items())
            self._log(f"epoch {epoch + 1}/{epochs}  step {step}/{steps}  {means}  lr "
                      f"{float(self.optimizer.learning_rate):.4g}  "
                      f"{done * batch_size / seconds:.1f} img/s  {seconds:.1f}s")
        elapsed = time.perf_counter() - run_start
        after_first = (time.perf_counter() - first_done) / max(trained - 1, 1) if trained else 0
        path = self.finish()
        where = f"weights written to {path}" if path else "weights written by the chief"
        print(f"Final: trained {trained} steps in {elapsed:.1f}s ({after_first:.2f} s/step "
              f"after the first)  step {int(self.step.numpy())}/{steps}  weights sha256 "
              f"{weights_digest(self.model)}  {where}", flush=True)
        return after_first

    def finish(self) -> Path | None:
        """Average BatchNorm statistics; the chief writes `detector.weights.h5`."""
        self._sync()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if not self.chief:
            return None
        path = self.model_dir / WEIGHTS
        self.model.save_weights(path)
        return path

    def _log(self, message: str) -> None:
        if self.chief:
            print(message, flush=True)


def train(config: ExperimentConfig, data_dir=None, model_dir=None, *, backbone_weights=None,
          checkpoint_every: int = 200, strategy: str | tf.distribute.Strategy | None = None,
          source: TrainSource | None = None, name: str | None = None):
    """Train an experiment; returns (task, model, seconds per step after the first).

    `source` defaults to the experiment's COCO JSON files under `data_dir`; `name` is recorded
    in `model_dir/experiment.json`."""
    source = source or coco_json_source(config, data_dir)
    trainer = DetectionTrainer(config, source, model_dir, strategy=strategy,
                               backbone_weights=backbone_weights,
                               checkpoint_every=checkpoint_every, name=name)
    seconds_per_step = trainer.train()
    return trainer.task, trainer.model, seconds_per_step


def evaluate(task: DetectionTask, model, data_dir, *, verbose: bool = True,
             evaluator: str = "pycocotools") -> dict:
    """Run the validation split and print the 12 COCO numbers for boxes (and masks).

    `evaluator="faster"` computes them with faster-coco-eval instead of pycocotools."""
    dataset = task.load_data(data_dir, training=False)
    iou_types = ("bbox", "segm") if task.config.model.include_mask else ("bbox",)
    evaluator = CocoEvaluator(dataset.coco, dataset.category_ids, iou_types, evaluator)
    predict = tf.function(lambda inputs: task.validation_step(inputs, model),
                          reduce_retracing=True)
    # One image per batch: each is padded only to its own multiple of 32, so its detections
    # do not depend on which images would have shared its batch (mmdetection tests so too).
    for batch in task.build_inputs(dataset, training=False, batch_size=1):
        inputs = {"images": batch["images"], "image_sizes": batch["image_sizes"]}
        for det in task.postprocess(predict(inputs), batch):
            evaluator.add(det["image_id"], det["boxes"], det["scores"], det["classes"],
                          det.get("masks"))
    metrics = evaluator.evaluate(verbose=verbose)
    if verbose:
        print(json.dumps(metrics))
    return metrics


def load_trained(config: ExperimentConfig | None, model_dir
                 ) -> tuple[DetectionTask, keras.Model]:
    """The task and model with the weights in `model_dir`: a run folder written by `train`
    or `keras_res2net.detection.convert` (`detector.weights.h5` + `experiment.json`), or a
    `.weights.h5` file.

    `config=None` rebuilds the folder's `experiment.json` (its overrides included). A given
    `config` (e.g. with an evaluation `--max_size`) is used as it is, but its model must be
    the folder's (`experiment_io.ExperimentMismatchError` otherwise): the weights are that
    model's."""
    weights = experiment_io.weights_path(model_dir)
    if config is None:
        config = experiment_io.load_experiment(weights.parent)
    else:
        experiment_io.check_same_model(weights.parent, config)
    task = DetectionTask(config)
    model = task.build_model()
    model.load_weights(weights)
    return task, model


def apply_overrides(config: ExperimentConfig, *, steps: int | None = None,
                    batch_size: int | None = None, max_size: int | None = None
                    ) -> ExperimentConfig:
    """train/coco.py's `--steps`, `--batch_size` and `--max_size` on `config` (in place).

    `--steps` rescales the decay steps with it and caps the warmup at a quarter of the run."""
    if steps is not None:
        scale = steps / (config.train.steps or steps)
        config.train.steps = steps
        config.train.decay_steps = tuple(int(s * scale) for s in config.train.decay_steps or ())
        config.train.warmup_steps = min(config.train.warmup_steps, steps // 4)
    if batch_size is not None:
        config.data.batch_size = batch_size
    if max_size is not None:
        config.data.max_size = (max_size, max_size)
    return config


def resolve_run(mode: str, *, experiment: str | None = None, model_dir=None, checkpoint=None,
                **overrides) -> tuple[ExperimentConfig, str | None, Path]:
    """(config, experiment name, run folder) for train/coco.py's flags, checked before any
    work; raises `ValueError` or `FileNotFoundError` with a one-line message.

    Training (`mode` train, train_and_eval) writes to `model_dir`: the config is the
    registered `experiment`, or, without one, the `experiment.json` of the run being resumed;
    a folder of another experiment is refused (`experiment_io.check_resumable`).
    Evaluation reads the run folder or weights file `checkpoint` (or `model_dir`): its
    `experiment.json` when present, else the registered `experiment` (`--experiment` naming
    another model is refused). `overrides` (steps, batch_size, max_size) apply on top in both
    cases; in evaluation `max_size` resizes the validation images differently on purpose."""
    if mode == "eval":
        if checkpoint is not None and model_dir is not None:
            raise ValueError("--mode eval reads one run: give --checkpoint or --model_dir, "
                             "not both.")
        folder = checkpoint if checkpoint is not None else model_dir
        if folder is None:
            raise ValueError("--mode eval needs --checkpoint DIR: a run folder (or "
                             "converted mmdetection weights) holding detector.weights.h5.")
        config, weights = experiment_io.open_run(folder, experiment)
        name = experiment_io.saved_name(weights.parent) or experiment
        return apply_overrides(config, **overrides), name, Path(folder)
    if checkpoint is not None:
        raise ValueError("--checkpoint is for --mode eval; training writes to (and resumes "
                         "from) --model_dir.")
    if model_dir is None:
        raise ValueError(f"--mode {mode} needs --model_dir: where checkpoints, "
                         "experiment.json and the weights go.")
    if experiment is not None:
        config, name = configs.get_experiment(experiment), experiment
    else:
        config = experiment_io.resolve_experiment(model_dir, None)
        name = experiment_io.saved_name(model_dir)
    config = apply_overrides(config, **overrides)
    experiment_io.check_resumable(model_dir, config)
    return config, name, Path(model_dir)
