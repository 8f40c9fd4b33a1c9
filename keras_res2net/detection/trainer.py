"""A small training and evaluation loop for the detection task.

A custom `tf.function` step under a `tf.distribute` strategy's scope (the default strategy
unless one is given), checkpointing the weights to `model_dir` every `checkpoint_every`
steps and at the end, and resuming from the last checkpoint. The shared trainer of the
training issue will replace this loop; `DetectionTask` is what it needs to call.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import tensorflow as tf

from keras_res2net.detection.configs import ExperimentConfig
from keras_res2net.detection.evaluation import CocoEvaluator
from keras_res2net.detection.task import DetectionTask

WEIGHTS = "detector.weights.h5"


def train(config: ExperimentConfig, data_dir, model_dir, *, backbone_weights=None,
          log_every: int = 20, checkpoint_every: int = 200, strategy=None):
    """Train for `config.train.steps` steps; returns (task, model, seconds per step)."""
    strategy = strategy or tf.distribute.get_strategy()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)  # Python, NumPy, TF and Keras seeds
    task = DetectionTask(config)
    records = task.load_data(data_dir, training=True)
    if config.train.steps is None:  # epochs -> steps, as mmdetection's epoch-based runner
        per_epoch = -(-len(records.records) // config.data.batch_size)
        config.train.steps = config.train.epochs * per_epoch
        config.train.decay_steps = tuple(e * per_epoch for e in config.train.decay_epochs)
    with strategy.scope():
        model = task.build_model(backbone_weights)
        optimizer = task.build_optimizer()
    if (model_dir / WEIGHTS).exists():
        model.load_weights(model_dir / WEIGHTS)
        print(f"resumed weights from {model_dir / WEIGHTS}")
    dataset = task.build_inputs(records, training=True)
    step_fn = tf.function(lambda batch: task.train_step(batch, model, optimizer),
                          reduce_retracing=True)
    steps = config.train.steps
    start = first = time.time()
    for step, batch in enumerate(dataset.take(steps), start=1):
        losses = step_fn(batch)
        if step == 1:
            first = time.time()
        if step % log_every == 0 or step == steps:
            text = " ".join(f"{k}={float(v):.3f}" for k, v in losses.items())
            print(f"step {step}/{steps} {text}", flush=True)
        if step % checkpoint_every == 0 or step == steps:
            model.save_weights(model_dir / WEIGHTS)
    seconds_per_step = (time.time() - first) / max(steps - 1, 1)
    print(f"trained {steps} steps in {time.time() - start:.0f} s "
          f"({seconds_per_step:.2f} s/step after the first); weights in {model_dir / WEIGHTS}")
    return task, model, seconds_per_step


def evaluate(task: DetectionTask, model, data_dir, *, verbose: bool = True) -> dict:
    """Run the validation split and print the 12 COCO numbers for boxes (and masks)."""
    dataset = task.load_data(data_dir, training=False)
    iou_types = ("bbox", "segm") if task.config.model.include_mask else ("bbox",)
    evaluator = CocoEvaluator(dataset.coco, dataset.category_ids, iou_types)
    predict = tf.function(lambda images: task.validation_step({"images": images}, model),
                          reduce_retracing=True)
    for batch in task.build_inputs(dataset, training=False):
        for det in task.postprocess(predict(batch["images"]), batch):
            evaluator.add(det["image_id"], det["boxes"], det["scores"], det["classes"],
                          det.get("masks"))
    metrics = evaluator.evaluate(verbose=verbose)
    if verbose:
        print(json.dumps(metrics))
    return metrics


def load_trained(config: ExperimentConfig, model_dir):
    """The task and model with the weights `train` wrote to `model_dir`."""
    task = DetectionTask(config)
    model = task.build_model()
    model.load_weights(Path(model_dir) / WEIGHTS)
    return task, model
