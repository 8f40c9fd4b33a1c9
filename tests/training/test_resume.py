"""SIGKILL a run mid-training; the same command resumes from its checkpoint, not from scratch,
and under --deterministic ends on the weights of an uninterrupted run (trained here, in
this process: two processes, the same sha256).

Broken on purpose: the resumed run's pipeline not skipping the batches already trained on
gives another digest; so does an unseeded run (`keras.utils.set_random_seed` removed from
the trainer: each process initialises other weights).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from loopback import ROOT, SIGNAL_AFTER_CHECKPOINT, SIGNAL_ENV, op_determinism_restored, script_env

STEPS = 4
EPOCHS = 2
KILL_AT = 6  # a mid-epoch checkpoint of the second epoch (checkpoints every 2 steps)
SCRIPT = os.path.join(ROOT, "train", "imagenet.py")


def _latest_step(ckpt_dir: str) -> int:
    latest = tf.train.latest_checkpoint(ckpt_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_sigkill_then_resume_ends_on_the_uninterrupted_weights(tmp_path, tiny_config,
                                                               train_script):
    model_dir = str(tmp_path / "run")
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    args = [*train_script.tiny_flags, "--epochs", str(EPOCHS), "--steps_per_epoch", str(STEPS),
            "--checkpoint_every", "2", "--deterministic", "--model_dir", model_dir]
    # The run kills itself right after the checkpoint of step KILL_AT.
    killed = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_CHECKPOINT, SCRIPT, *args],
                            cwd=ROOT, env=script_env(**{SIGNAL_ENV: f"{KILL_AT}:SIGKILL"}),
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    killed_at = _latest_step(ckpt_dir)
    assert killed_at == KILL_AT
    assert not os.path.exists(os.path.join(model_dir, "model.keras"))

    # Restoring gives back the checkpoint's step and trained weights (not the fresh init).
    from keras_res2net.training import Trainer
    from keras_res2net.training.trainer import weights_digest

    config = tiny_config(model_dir, epochs=EPOCHS, steps_per_epoch=STEPS, checkpoint_every=2)
    trainer = Trainer(config)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
    # Trainable weights are stored under the optimizer's references, statistics under model/.
    saved = [reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
             if key.startswith(("model/", "optimizer/_trainable_variables/"))]

    def all_in_checkpoint(model) -> bool:
        return all(any(a.shape == w.shape and np.array_equal(a, w) for a in saved)
                   for w in model.get_weights())

    assert not all_in_checkpoint(trainer.model)
    assert trainer.restore() == killed_at
    assert all_in_checkpoint(trainer.model)

    result = train_script.run(args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {killed_at}/{EPOCHS * STEPS} " in result.stdout
    total = EPOCHS * STEPS
    assert f"trained {total - killed_at} steps" in result.stdout
    assert re.search(rf"step {total}/{total}", result.stdout)
    assert _latest_step(ckpt_dir) == total
    assert os.path.exists(os.path.join(model_dir, "model.keras"))
    with op_determinism_restored():
        uninterrupted = Trainer(tiny_config(tmp_path / "uninterrupted", epochs=EPOCHS,
                                            steps_per_epoch=STEPS, checkpoint_every=2,
                                            deterministic=True))
        uninterrupted.train()
    resumed_digest = re.search(r"weights sha256 (\w+)", result.stdout).group(1)
    assert resumed_digest == weights_digest(uninterrupted.model)


@pytest.mark.slow
def test_epoch_end_killed_before_its_evaluation_is_evaluated_on_resume(tmp_path, tiny_config):
    from keras_res2net.training import Trainer

    Trainer(tiny_config(tmp_path, epochs=1, steps_per_epoch=2)).train()
    os.remove(os.path.join(tmp_path, "history.json"))  # as if killed right after the save
    trainer = Trainer(tiny_config(tmp_path, epochs=2, steps_per_epoch=2))
    trainer.train()
    assert [h["epoch"] for h in trainer.history] == [1, 2]
    assert np.isnan(trainer.history[0]["loss"]) and trainer.history[0]["val_top1"] >= 0
    assert int(trainer.step.numpy()) == 4
