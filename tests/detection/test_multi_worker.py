"""Two MultiWorkerMirroredStrategy workers train the detector as one process would, and a
SIGTERM to one of them checkpoints the job and stops both.

Two workers run `train/coco.py --strategy multi_worker --data tfrecord --deterministic` of
the small synthetic Mask R-CNN (global batch 2, one image per worker, 64x64 shapes, each
worker reading its shard of Model Garden-style TFRecords) for a run of 3 steps,
checkpointing every step. Worker 1 receives a SIGTERM right after its step-1 checkpoint (it
sends it to itself, so the step is known): both workers must then train step 2, save its
checkpoint and exit with status 42 and one line naming the checkpoint, with the same
weights. The test then replays step 2 in this process from the workers' step-1 checkpoint
(model, AdamW state and the RoI-sampling seed state, which every checkpoint carries): the
global batch is the two workers' shards (they must differ), each through its own forward
pass (BatchNorm on its own image) with the sampling seed state of the checkpoint (each
worker's own generator, equal on both), each gradient divided by the 2 replicas and clipped
as the task clips, then summed, one AdamW update. The workers' step-2 weights must be that
update: every trainable weight moved in step 2, and the distance to the reference is below 5%
of the distance moved (L2 over all trainable weights). Unsharded data (both workers on the
same images) or a worker's gradient missing from the update end far off; no update at all
fails "every weight moved".

Measured (2 cores at load 7-10): distance to the reference / distance moved 3.4e-5 and
4.3e-5 in two runs (largest difference 8.3e-6, 7.7e-6; the weights move 1.8e-4 to 5.0e-4 in
step 2). Float32 rounding differs between the workers' graphs and this eager replay, hence a
relative bound, 5% as the classification test's. Broken on purpose (the replay of the same
workers' run changed): the reference's sampling seed left at its start, as a checkpoint
without the seed state would restore it, 0.185; data not sharded (both replicas on worker
0's image) 0.658; worker 1's gradient zeroed before the update 0.613. With the flips drawn
by a stateful op in the parallel map (before `build_dataset` keyed them by position) the
real code measured 0.96: the reference flipped other images than the workers.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from loopback import SIGNAL_ENV, relative_distance, run_cluster, script_popen

from keras_res2net.detection import configs, experiment_io
from keras_res2net.detection.data import sources, tf_example
from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.pipeline import build_dataset
from keras_res2net.detection.data.synthetic import write_dataset
from keras_res2net.detection.task import DetectionTask
from keras_res2net.detection.trainer import CHECKPOINTS, WEIGHTS, apply_overrides
from keras_res2net.training.trainer import PREEMPTED_EXIT_CODE

EXPERIMENT = "mask_rcnn_res2net50_fpn_synthetic"
STEPS, WORKERS = 3, 2
STOPPED = 2  # worker 1's SIGTERM comes after step 1: both stop after step 2
RELATIVE = 0.05  # |workers - reference| / |workers - step 1| over all trainable weights


def _replay_last_step(config, data_dir, checkpoints: str) -> tuple[list, list, list]:
    """(step-1, step-2, reference) trainable weights: the workers' two checkpoints, and step
    2 replayed in this process from the first on the global batch of both shards."""
    keras.utils.set_random_seed(config.train.seed)  # as the trainer, before the pipelines
    builder = DetectionTask(config)
    model = builder.build_model()
    variables = model.trainable_variables
    optimizer = builder.build_optimizer()
    optimizer.build(variables)
    step = tf.Variable(0, dtype=tf.int64)
    # The trainer's checkpoint layout: the task's state (the sampling seed) under run/.
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                     run=tf.train.Checkpoint(sampling_seed=builder.seed.state))

    def restore(number: int) -> list:
        checkpoint.restore(os.path.join(checkpoints, f"ckpt-{number}")
                           ).assert_existing_objects_matched().expect_partial()
        assert int(step.numpy()) == number == int(optimizer.iterations.numpy())
        return [np.array(v) for v in variables]

    final = restore(STOPPED)
    start = restore(STOPPED - 1)  # model, AdamW moments, iterations and seed state of step 1
    state = np.array(builder.seed.state)
    assert state[1] > 0  # step 1 drew from it
    # Each worker's pipeline, independent of the task's sharding: worker i reads shard i.
    source, data = sources.tfrecord_source(config, data_dir), config.data
    iterators = [iter(build_dataset(source.raw().shard(WORKERS, i), batch_size=1,
                                    max_size=data.max_size, size_divisor=data.size_divisor,
                                    max_instances=data.max_instances, training=True,
                                    seed=config.train.seed * 1000)) for i in range(WORKERS)]
    for _ in range(STOPPED - 1):  # the batches of the steps before
        for iterator in iterators:
            next(iterator)
    batches = [next(iterator) for iterator in iterators]
    assert not np.array_equal(batches[0]["images"], batches[1]["images"])  # shards differ
    total = [None] * len(variables)  # each replica's clipped gradient, summed
    for batch in batches:
        builder.seed.state.assign(state)  # this replica's own sampling state
        with tf.GradientTape() as tape:
            loss = builder.build_losses(model, batch)["total_loss"] / WORKERS
        grads = tape.gradient(loss, variables)
        assert all(g is not None for g in grads), "a trainable weight has no gradient"
        grads, _ = tf.clip_by_global_norm(grads, config.train.gradient_clip_norm)
        total = [g if t is None else t + g for t, g in zip(total, grads, strict=True)]
    optimizer.apply_gradients(zip(total, variables, strict=True))
    return start, final, [np.array(v) for v in variables]


@pytest.mark.slow
def test_two_workers_train_detector_as_one_process_and_stop_together_on_sigterm(tmp_path):
    data_dir = write_dataset(tmp_path / "shapes", train=4, val=2, seed=5, size=64)
    data = configs.get_experiment(EXPERIMENT).data
    train = load_coco(data_dir / data.train_json, data_dir / data.train_images)
    tf_example.write_tfrecord(train, data_dir / "train-00000.tfrecord")
    model_dir = str(tmp_path / "run")
    args = ["--experiment", EXPERIMENT, "--data_dir", str(data_dir), "--data", "tfrecord",
            "--model_dir", model_dir, "--strategy", "multi_worker", "--steps", str(STEPS),
            "--batch_size", str(WORKERS), "--max_size", "64", "--checkpoint_every", "1",
            "--deterministic"]
    results = run_cluster(script_popen(os.path.join("train", "coco.py"), signals=True), args,
                          timeout=1200, grace=120,  # bounds, not budgets
                          worker_env={1: {SIGNAL_ENV: f"{STOPPED - 1}:SIGTERM"}})
    assert [r.code for r in results] == [PREEMPTED_EXIT_CODE] * WORKERS, results[0].err[-3000:]
    checkpoints = os.path.join(model_dir, CHECKPOINTS)
    stopped = [r.out.strip().splitlines()[-1] for r in results]
    for line, whose in zip(stopped, ("another worker's", "this worker's"), strict=True):
        assert line.startswith(f"train/coco.py: stopped by {whose} SIGTERM after step "
                               f"{STOPPED}/{STEPS} (weights sha256 "), line
        assert line.endswith(f"checkpoint {checkpoints}/ckpt-{STOPPED} saved; rerun the same "
                             "command on every worker to resume."), line
    digests = [line.split("sha256 ")[1].split(")")[0] for line in stopped]
    assert digests[0] == digests[1]  # lock-step: the same model on both workers
    assert all("training data: tfrecord" in r.out for r in results)
    assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{STOPPED}")
    assert not os.path.exists(os.path.join(model_dir, WEIGHTS))  # the run is not finished
    saved = experiment_io.load_experiment(model_dir)  # written once, by the chief
    assert (saved.data.max_size, saved.train.steps) == ((64, 64), STEPS)
    assert [p for p in os.listdir(model_dir) if p.startswith(".")] == []  # no temp files

    config = apply_overrides(configs.get_experiment(EXPERIMENT), steps=STEPS,
                             batch_size=WORKERS, max_size=64)
    assert saved == config  # the reference trains the workers' experiment
    start, got, expected = _replay_last_step(config, data_dir, checkpoints)
    moved = [float(np.max(np.abs(g - s))) for g, s in zip(got, start, strict=True)]
    assert min(moved) > 0, "a trainable weight did not move in the last step"
    relative = relative_distance(got, expected, start)
    largest = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    print(f"distance to the reference / distance moved: {relative:.2e} (largest difference "
          f"{largest:.1e}; moves {min(moved):.1e} to {max(moved):.1e})")
    assert relative < RELATIVE
