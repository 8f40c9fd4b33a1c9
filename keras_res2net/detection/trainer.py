"""Detection as a `Task` of the one trainer (`keras_res2net.training.trainer`).

`DetectionTrainingTask` adapts `task.DetectionTask` (model, optimizer, losses, train step)
to the trainer: the input pipeline of each replica reads its shard of a `TrainSource`
(seeded per epoch, so a resumed run sees the data an uninterrupted one would), and, given
validation data, the chief evaluates COCO AP at each epoch end (as mmdetection's
`interval=1`). The trainer owns the rest, as for classification: strategy, checkpoints in
`model_dir/checkpoints` and resume after a kill, progress bar, TensorBoard scalars (every
loss term, `validation/bbox_AP`, ...), `history.json`/`history.png`, the final summary; the
chief writes `detector.weights.h5`, which evaluation, prediction and export read.

Every run folder carries `experiment.json` (`experiment_io`): the chief writes the resolved
config (overrides included) when the trainer is built, and a folder that already holds one
of another experiment is refused before any model is built (`experiment_io.check_resumable`:
the model and data configs must match; the schedule and batch size may change on resuming).
`load_trained` rebuilds the model from that file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import tensorflow as tf

from keras_res2net.detection import configs, experiment_io
from keras_res2net.detection.configs import ExperimentConfig
from keras_res2net.detection.data.pipeline import build_dataset
from keras_res2net.detection.data.sources import TrainSource, coco_json_source
from keras_res2net.detection.evaluation import CocoEvaluator
from keras_res2net.detection.task import DetectionTask
from keras_res2net.training import trainer as trainer_lib
from keras_res2net.training.strategies import is_chief, make_strategy

WEIGHTS = experiment_io.WEIGHTS_FILE  # "detector.weights.h5"
CHECKPOINTS = trainer_lib.CHECKPOINTS
EPOCH_METRICS = ("AP", "AP50", "AP75")  # of each IoU type, recorded at every evaluation


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


class DetectionTrainingTask(trainer_lib.Task):
    """A detection experiment as the trainer's task; `detection` is its `DetectionTask`.

    `eval_data_dir` holds the experiment's validation JSON and images: COCO AP is then
    evaluated (by the chief, one image per batch) at each epoch end; without it only the
    loss terms are recorded."""

    artifact = "weights"
    plotted_metrics = tuple(f"{kind}_{name}" for kind in ("bbox", "segm")
                            for name in EPOCH_METRICS[:2])

    def __init__(self, config: ExperimentConfig, source: TrainSource, *,
                 backbone_weights: str | None = None, eval_data_dir=None,
                 evaluator: str = "pycocotools"):
        self.config, self.source, self.seed = config, source, config.train.seed
        self.global_batch_size = config.data.batch_size
        # The sampling SeedGenerator stays a plain (per-worker) variable: created in the
        # scope it would be mirrored with aggregation "none", which replicas can't update.
        # Every worker starts it from the same seed; checkpoints save it (checkpoint_items).
        self.detection = DetectionTask(config)
        self.backbone_weights = backbone_weights
        self.eval_data_dir, self.evaluator = eval_data_dir, evaluator
        self.last_metrics: dict = {}  # COCO metrics of the last evaluation, all 12 per type
        # Loaded (and checked) now, before any training; predict compiled at first use.
        self._val_set = (None if eval_data_dir is None
                         else self.detection.load_data(eval_data_dir, training=False))
        self._predict = None

    def build_model(self) -> keras.Model:
        return self.detection.build_model(self.backbone_weights)

    def build_optimizer(self, model: keras.Model) -> keras.optimizers.Optimizer:
        return self.detection.build_optimizer()

    def checkpoint_items(self) -> dict:
        """The RoI-sampling seed state: a resumed run draws what an uninterrupted one would."""
        return {"sampling_seed": self.detection.seed.state}

    def train_dataset(self, context, epoch: int, skip: int) -> tf.data.Dataset:
        raw = self.source.raw()
        if context.num_input_pipelines > 1:
            raw = raw.shard(context.num_input_pipelines, context.input_pipeline_id)
        data = self.config.data
        dataset = build_dataset(raw, batch_size=context.get_per_replica_batch_size(
                                    data.batch_size),
                                max_size=data.max_size, size_divisor=data.size_divisor,
                                max_instances=data.max_instances, training=True,
                                flip=data.random_flip, cache=self.source.cacheable,
                                seed=self.config.train.seed * 1000 + epoch)
        return dataset.skip(skip) if skip else dataset

    def train_step(self, inputs, model, optimizer, num_replicas: int) -> dict:
        return self.detection.train_step(inputs, model, optimizer, num_replicas=num_replicas)

    def evaluate(self, model, strategy) -> dict[str, float]:
        """COCO AP, AP50 and AP75 of boxes (and masks) on the validation set; the chief's
        job (other workers return `{}`)."""
        if self._val_set is None or not is_chief(strategy):
            return {}
        if self._predict is None:
            self._predict = compile_predict(self.detection, model)
        self.last_metrics = run_evaluation(self.detection, model, self._val_set,
                                           self._predict, verbose=False,
                                           evaluator=self.evaluator)
        return {f"{kind}_{name}": values[name] for kind, values in self.last_metrics.items()
                for name in EPOCH_METRICS}

    def export_path(self, model_dir: str) -> str:
        return str(Path(model_dir) / WEIGHTS)

    def export(self, model, path: str) -> None:
        model.save_weights(path)

    def summary(self, metrics: dict[str, float]) -> str:
        return "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items()
                         if k.endswith("_AP"))


class DetectionTrainer(trainer_lib.Trainer):
    """The one trainer on a detection experiment: strategy, data, model, optimizer and
    checkpoints.

    `strategy` is a `tf.distribute.Strategy` or a `--strategy` name. Build a multi_worker
    strategy before opening a TFDS or TFRecord source: collectives must be configured before
    the first TF op runs (train/coco.py does so).

    `model_dir/experiment.json` is checked and (by the chief) written here, before the model
    is built; `name` is the experiment name recorded in it (kept from the file if None).
    `eval_data_dir`: see `DetectionTrainingTask`."""

    def __init__(self, config: ExperimentConfig, source: TrainSource, model_dir, *,
                 strategy: str | tf.distribute.Strategy | None = None,
                 backbone_weights: str | None = None, checkpoint_every: int = 200,
                 tpu: str | None = None, device: str | None = None,
                 name: str | None = None, eval_data_dir=None,
                 evaluator: str = "pycocotools", deterministic: bool = False):
        if isinstance(strategy, str):
            strategy = make_strategy(strategy, tpu=tpu, device=device)
        strategy = strategy or tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        if config.data.batch_size % replicas:
            raise ValueError(f"batch size {config.data.batch_size} must be a multiple of the "
                             f"{replicas} replicas.")
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        steps_per_epoch = resolve_steps(config, source.num_examples)
        # Every worker refuses a folder of another experiment; only the chief writes.
        experiment_io.check_resumable(model_dir, config)
        if is_chief(strategy):
            experiment_io.save_experiment(config, model_dir,
                                          name or experiment_io.saved_name(model_dir))
        self.config, self.source = config, source
        task = DetectionTrainingTask(config, source, backbone_weights=backbone_weights,
                                     eval_data_dir=eval_data_dir, evaluator=evaluator)
        steps = config.train.steps
        super().__init__(task, model_dir, strategy,
                         steps_per_epoch=steps_per_epoch or max(min(steps, 500), 1),
                         total_steps=steps, checkpoint_every=checkpoint_every,
                         max_checkpoints=3, deterministic=deterministic)

    def train(self) -> float:
        """Train to `config.train.steps`, resuming if possible; return seconds per step
        after the first."""
        super().train()
        return self.seconds_per_step


def train(config: ExperimentConfig, data_dir=None, model_dir=None, *, backbone_weights=None,
          checkpoint_every: int = 200, strategy: str | tf.distribute.Strategy | None = None,
          source: TrainSource | None = None, name: str | None = None,
          eval_data_dir=None, deterministic: bool = False
          ) -> tuple[DetectionTask, keras.Model, float]:
    """Train an experiment; returns (task, model, seconds per step after the first).

    `source` defaults to the experiment's COCO JSON files under `data_dir`; `name` is recorded
    in `model_dir/experiment.json`; with `eval_data_dir`, COCO AP is evaluated at each epoch
    end (history.json, history.png, TensorBoard); `deterministic`: see train/coco.py's
    `--deterministic`."""
    source = source or coco_json_source(config, data_dir)
    trainer = DetectionTrainer(config, source, model_dir, strategy=strategy,
                               backbone_weights=backbone_weights,
                               checkpoint_every=checkpoint_every, name=name,
                               eval_data_dir=eval_data_dir, deterministic=deterministic)
    seconds_per_step = trainer.train()
    return trainer.task.detection, trainer.model, seconds_per_step


def compile_predict(task: DetectionTask, model):
    """The validation step as one `tf.function` (retraced only for new image shapes)."""
    return tf.function(lambda inputs: task.validation_step(inputs, model),
                       reduce_retracing=True, autograph=False)


def run_evaluation(task: DetectionTask, model, dataset, predict, *, verbose: bool = True,
                   evaluator: str = "pycocotools") -> dict:
    """The 12 COCO numbers for boxes (and masks) of `model` on a loaded COCO set."""
    iou_types = ("bbox", "segm") if task.config.model.include_mask else ("bbox",)
    evaluator = CocoEvaluator(dataset.coco, dataset.category_ids, iou_types, evaluator)
    # One image per batch: each is padded only to its own multiple of 32, so its detections
    # do not depend on which images would have shared its batch (mmdetection tests so too).
    for batch in task.build_inputs(dataset, training=False, batch_size=1):
        inputs = {"images": batch["images"], "image_sizes": batch["image_sizes"]}
        for det in task.postprocess(predict(inputs), batch):
            evaluator.add(det["image_id"], det["boxes"], det["scores"], det["classes"],
                          det.get("masks"))
    return evaluator.evaluate(verbose=verbose)


def evaluate(task: DetectionTask, model, data_dir, *, verbose: bool = True,
             evaluator: str = "pycocotools") -> dict:
    """Run the validation split and print the 12 COCO numbers for boxes (and masks).

    `evaluator="faster"` computes them with faster-coco-eval instead of pycocotools."""
    dataset = task.load_data(data_dir, training=False)
    metrics = run_evaluation(task, model, dataset, compile_predict(task, model),
                             verbose=verbose, evaluator=evaluator)
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
