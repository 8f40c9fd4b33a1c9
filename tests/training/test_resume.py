"""SIGKILL a run mid-training; the same command resumes from its checkpoint, not from scratch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from loopback import ROOT, script_env

STEPS = 4
EPOCHS = 2
KILL_AT = 6  # a mid-epoch checkpoint of the second epoch (checkpoints every 2 steps)
SCRIPT = os.path.join(ROOT, "train", "imagenet.py")

# train/imagenet.py with Trainer.save patched to stop the process right after the checkpoint
# of step KILL_AT, so the test kills the run at that point, not wherever it got to.
STOP_AFTER_CHECKPOINT = """
import os, runpy, signal, sys
from keras_res2net.training import trainer as loop

save = loop.Trainer.save

def save_then_stop(self):
    save(self)
    if int(self.step.numpy()) == {kill_at}:
        open({marker!r}, "w").close()
        os.kill(os.getpid(), signal.SIGSTOP)  # held here until the test's SIGKILL

loop.Trainer.save = save_then_stop
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def _latest_step(ckpt_dir: str) -> int:
    latest = tf.train.latest_checkpoint(ckpt_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, tiny_config, train_script):
    model_dir = str(tmp_path / "run")
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    marker = str(tmp_path / "stopped")
    args = [*train_script.tiny_flags, "--epochs", str(EPOCHS), "--steps_per_epoch", str(STEPS),
            "--checkpoint_every", "2", "--model_dir", model_dir]
    code = STOP_AFTER_CHECKPOINT.format(kill_at=KILL_AT, marker=marker, script=SCRIPT)
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert os.path.exists(marker), "the run never reached its checkpoint"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    killed_at = _latest_step(ckpt_dir)
    assert killed_at == KILL_AT
    assert not os.path.exists(os.path.join(model_dir, "model.keras"))

    # Restoring gives back the checkpoint's step and trained weights (not the fresh init).
    from keras_res2net.training import Trainer

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
