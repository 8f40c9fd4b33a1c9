"""Two MultiWorkerMirroredStrategy workers on loopback train in lock-step (custom loop)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

import tensorflow as tf


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_end_identical_and_chief_checkpoints(tmp_path, train_script):
    model_dir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    args = [*train_script.tiny_flags, "--strategy", "multi_worker", "--epochs", "1",
            "--steps_per_epoch", "3", "--model_dir", model_dir]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        procs.append(train_script.popen(args, env={"TF_CONFIG": tf_config}, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    digests = [re.search(r"weights sha256 (\w+)", out).group(1) for out in outputs]
    assert digests[0] == digests[1]
    assert "step 3/3" in outputs[0] and "step 3/3" in outputs[1]
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest is not None and latest.endswith("ckpt-3")
    assert os.path.exists(os.path.join(model_dir, "model.keras"))
    assert "model written to" in outputs[0]  # worker 0 is the chief
