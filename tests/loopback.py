"""Run a training script as a 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1.

Shared by the classification and detection multi-worker tests: free loopback ports, one
`TF_CONFIG` per worker (worker 0 is the chief), every process bounded by a timeout and
killed if it outlives it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(**extra: str) -> dict:
    """The environment a training script runs in: TF backend, CPU only, unbuffered."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def script_popen(script: str) -> Callable[..., subprocess.Popen]:
    """`popen(args, env=..., **kwargs)` starting `script` (relative to the repo) in `ROOT`."""
    def popen(args: list[str], **kwargs) -> subprocess.Popen:
        env = script_env(**kwargs.pop("env", {}))
        return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                                env=env, **kwargs)
    return popen


def free_ports(n: int) -> list[int]:
    """`n` ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(popen: Callable[..., subprocess.Popen], args: list[str], workers: int = 2,
                timeout: float = 240) -> list[str]:
    """Start `workers` processes with `popen(args, env=..., ...)`; return their stdouts.

    Fails the test with a worker's stderr tail if it exits non-zero."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = []
    for index in range(workers):
        tf_config = json.dumps({"cluster": {"worker": addresses},
                                "task": {"type": "worker", "index": index}})
        procs.append(popen(args, env={"TF_CONFIG": tf_config}, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


def weight_digests(outputs: list[str]) -> list[str]:
    """The `weights sha256 ...` digest each worker printed in its final summary."""
    return [re.search(r"weights sha256 (\w+)", out).group(1) for out in outputs]
