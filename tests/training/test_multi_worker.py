"""Two MultiWorkerMirroredStrategy workers on loopback train as one process would, survive
the loss of one of them, and resume to the weights of an uninterrupted run.

The workers (one CPU replica each, global batch 32) must end where a single-process reference
ends after the same 3 steps from the same (seeded) start on the same global batches: each
step's global batch is the union of the two workers' shards, each half through its own
forward pass (BatchNorm uses per-replica batch statistics under tf.distribute), the loss
averaged over the 32 images, one SGD update. Unsharded data, gradients not all-reduced, or
a worker training on its own would each end elsewhere; no update at all is caught by
comparing with the start.

Tolerance: this tiny model at the digits learning rate amplifies float32 rounding: two
equivalent references (one tape over both halves, or one tape per half with the gradients
summed) end 1e-4 apart after 3 steps, with moves up to 5e-2. So the test bounds the distance
to the reference relative to the distance moved, over all trainable weights: measured 0.08%,
bound 5%; the reference with a half-size update ends 0.04 (max abs) from the workers. (A
single-process MirroredStrategy run on two logical CPUs fed the same shards ends
bit-identical to the workers.)

Run uninterrupted, the chief also copies its run folder right after its step-1 checkpoint
(the folder as a kill at that point leaves it). The same command on that copy resumes from
step 1 on both workers; its chief SIGKILLs itself right after its step-2 checkpoint. The
survivor must stop within `LOST_BOUND` seconds with one line naming the lost worker, the step
and the checkpoint to resume from (the coordination service's heartbeats abort its
collective: 5-16 s measured on loopback, where the dead peer's connections are reset at
once; ~11 s for a stopped peer that resets nothing). The resumed run's step-2 checkpoint must
hold the uninterrupted run's step-2 variables bit for bit (model, optimizer, step), under
`--deterministic`. Broken on purpose: a resumed pipeline that does not skip the batches
already trained on (`skip=0`) fails that comparison; before the trainer caught the lost
peer's error the survivor ended with TensorFlow's bare "UnavailableError: Graph execution
error" (seen by hand), which the message assertion rejects.

The folder of the 2-worker run is refused to a single process resuming it, both cluster
sizes named (the trainer does not reshard: the data order and sampling depend on the number
of workers); evaluating it is not refused.
"""

from __future__ import annotations

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from loopback import COPY_ENV, SIGNAL_ENV, run_cluster, run_workers, script_popen, weight_digests

STEPS = 3
RELATIVE = 0.05  # |workers - reference| / |workers - start| over all trainable weights
LOST_BOUND = 60  # seconds from the chief's death to the survivor's exit (measured 5-16)


def relative_distance(got: list, expected: list, start: list) -> float:
    """Distance to the reference over the distance moved (L2 over all weights)."""
    def norm(pairs):
        return float(np.sqrt(sum(np.sum((a - b).astype(np.float64) ** 2) for a, b in pairs)))
    return norm(zip(got, expected, strict=True)) / norm(zip(got, start, strict=True))


def _reference(config, shards: int = 2) -> tuple[list, list]:
    """(start, end) trainable weights of `STEPS` eager steps in this process on the global
    batches the workers see together: shard i of each step is worker i's batch."""
    from keras_res2net.training import Trainer, data, optim

    trainer = Trainer(config)  # builds the seeded model; writes nothing
    model = trainer.model
    variables = model.trainable_variables
    start = [np.array(v) for v in variables]
    optimizer = optim.make_optimizer(config, trainer.steps_per_epoch, variables)
    contexts = [tf.distribute.InputContext(shards, i, shards) for i in range(shards)]
    iterators = [iter(data.train_dataset(trainer.source, config, c, epoch=0)) for c in contexts]
    for step in range(STEPS):
        batches = [next(it) for it in iterators]
        if step == 0:  # the pipeline shards: the workers see different images
            assert not np.array_equal(batches[0][0], batches[1][0])
        total = None  # each replica's gradient of its share of the global loss, summed
        for images, labels in batches:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(keras.losses.categorical_crossentropy(
                    labels, model(images, training=True), from_logits=True))
                loss = loss / config.batch_size + optim.l2_penalty(config, variables) / shards
            grads = tape.gradient(loss, variables)
            total = grads if total is None else [t + g for t, g in zip(total, grads,
                                                                      strict=True)]
        optimizer.apply_gradients(zip(total, variables, strict=True))
    return start, [np.array(v) for v in variables]


@pytest.mark.slow
def test_two_workers_train_as_one_process_survive_a_lost_worker_and_resume(
        tmp_path, train_script, tiny_config):
    # No random crop or flip: the reference's pipeline yields exactly the workers' batches.
    knobs = dict(epochs=1, steps_per_epoch=STEPS, flip=False, crop_scale_min=1.0)

    def args(model_dir) -> list[str]:
        return [*train_script.tiny_flags, "--strategy", "multi_worker", "--epochs", "1",
                "--steps_per_epoch", str(STEPS), "--noflip", "--crop_scale_min", "1.0",
                "--checkpoint_every", "1", "--deterministic", "--model_dir", str(model_dir)]

    model_dir, copy = str(tmp_path / "run"), tmp_path / "copy"
    popen = script_popen(os.path.join("train", "imagenet.py"), signals=True)
    outputs = run_workers(popen, args(model_dir), timeout=900,  # a bound, not a budget
                          worker_env={0: {COPY_ENV: f"1:{copy}"}})
    digests = weight_digests(outputs)
    assert digests[0] == digests[1]  # lock-step: the same model on both workers
    assert all(f"step {STEPS}/{STEPS}" in out for out in outputs)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest is not None and latest.endswith(f"ckpt-{STEPS}")
    assert os.path.exists(os.path.join(model_dir, "model.keras"))
    assert "model written to" in outputs[0]  # worker 0 is the chief
    assert tf.train.latest_checkpoint(str(copy / "checkpoints")).endswith("ckpt-1")

    # The same command on the copy resumes; its chief dies after step 2's checkpoint.
    killed, survivor = run_cluster(popen, args(copy), timeout=900, grace=LOST_BOUND,
                                   worker_env={0: {SIGNAL_ENV: "2:SIGKILL"}})
    assert killed.code == -signal.SIGKILL, killed.err[-2000:]
    assert f"Resumed from {copy}/checkpoints/ckpt-1 at step 1/{STEPS} " in killed.out
    assert survivor.code == 1, survivor.err[-2000:]
    print(f"the survivor stopped {survivor.ended - killed.ended:.1f} s after the chief died")
    assert survivor.ended - killed.ended < LOST_BOUND
    message = survivor.err.strip().splitlines()[-1]
    assert message.startswith("imagenet.py: error: lost a worker of the 2-worker cluster at "
                              f"step 2/{STEPS} ("), message
    assert message.endswith("rerun the same command on every worker to resume from the "
                            f"latest checkpoint, {copy}/checkpoints/ckpt-2 (step 2). "
                            "(--verbose shows the traceback)"), message
    # Resumed from step 1, its step-2 state is the uninterrupted run's, bit for bit.
    resumed = tf.train.load_checkpoint(str(copy / "checkpoints" / "ckpt-2"))
    uninterrupted = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "ckpt-2"))
    keys = set(resumed.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert keys == set(uninterrupted.get_variable_to_shape_map()) - {
        "_CHECKPOINTABLE_OBJECT_GRAPH"}
    differ = [key for key in sorted(keys)
              if not np.array_equal(resumed.get_tensor(key), uninterrupted.get_tensor(key))]
    assert not differ, f"{len(differ)} of {len(keys)} values differ, e.g. {differ[:3]}"

    from keras_res2net.training import Trainer

    trained = Trainer(tiny_config(model_dir, **knobs))
    with pytest.raises(ValueError, match=rf"its checkpoint \(step {STEPS}\) was trained by 2 "
                       r"workers \(2 replicas\); this run has 1 worker \(1 replica\)\."):
        trained.train()  # resuming on another cluster size: refused, both named
    assert trained.restore() == STEPS  # evaluating it is not
    start, expected = _reference(tiny_config(tmp_path / "reference", **knobs))
    got = [np.array(v) for v in trained.model.trainable_variables]
    moved = [float(np.max(np.abs(g - s))) for g, s in zip(got, start, strict=True)]
    assert min(moved) > 0, "a trainable weight never moved"
    relative = relative_distance(got, expected, start)
    print(f"distance to the reference / distance moved: {relative:.4f}")
    assert relative < RELATIVE
