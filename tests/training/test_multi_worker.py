"""Two MultiWorkerMirroredStrategy workers on loopback train in lock-step (custom loop)."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
from loopback import run_workers, weight_digests


@pytest.mark.slow
def test_two_workers_end_identical_and_chief_checkpoints(tmp_path, train_script):
    model_dir = str(tmp_path / "run")
    args = [*train_script.tiny_flags, "--strategy", "multi_worker", "--epochs", "1",
            "--steps_per_epoch", "3", "--model_dir", model_dir]
    outputs = run_workers(train_script.popen, args)
    digests = weight_digests(outputs)
    assert digests[0] == digests[1]
    assert "step 3/3" in outputs[0] and "step 3/3" in outputs[1]
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest is not None and latest.endswith("ckpt-3")
    assert os.path.exists(os.path.join(model_dir, "model.keras"))
    assert "model written to" in outputs[0]  # worker 0 is the chief
