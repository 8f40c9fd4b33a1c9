"""Run a training script as a 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1.

Shared by the classification and detection multi-worker tests: loopback ports reserved for
the cluster's whole life, one `TF_CONFIG` per worker (worker 0 is the chief), every process
bounded by a timeout and killed if it outlives it or another worker fails.

Ports: a port found free and released before the worker binds it can be taken by another
process in between. So the test keeps each port bound (not listening) with `SO_REUSEPORT`
until the workers exit, and the workers' gRPC servers bind it with `SO_REUSEPORT` too
(`TF_GRPC_REUSE_PORT=1`, read by TensorFlow's gRPC server). Another process can then take
the port only by binding it with `SO_REUSEPORT` as the same user (any other bind is refused,
and the kernel's automatic port choice skips bound ports), and connections reach the one
listening socket, the worker's.
A cluster whose worker still reports its address in use is started again on new ports.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

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


def reserved_ports(n: int) -> list[socket.socket]:
    """`n` sockets bound to free loopback ports with `SO_REUSEPORT`, not listening: held while
    the workers run, so that only they (binding with `SO_REUSEPORT` too) can use the ports."""
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    return sockets


# What a worker prints when its port is taken (by a socket bound without SO_REUSEPORT).
ADDRESS_IN_USE = re.compile(r"Address already in use|EADDRINUSE|Could not start gRPC server")


def _run_cluster(popen, args, workers, timeout, folder) -> list[tuple[int, str, str]]:
    """One attempt: (returncode, stdout, stderr) per worker. The ports stay reserved until
    every worker has exited; if a worker fails, the others (waiting for it forever) are
    killed."""
    sockets = reserved_ports(workers)
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    procs, files = [], []
    try:
        for index in range(workers):
            tf_config = json.dumps({"cluster": {"worker": addresses},
                                    "task": {"type": "worker", "index": index}})
            out = open(os.path.join(folder, f"worker{index}.out"), "w+")
            err = open(os.path.join(folder, f"worker{index}.err"), "w+")
            files.append((out, err))
            procs.append(popen(args, env={"TF_CONFIG": tf_config, "TF_GRPC_REUSE_PORT": "1"},
                               text=True, stdout=out, stderr=err))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
        results = []
        for proc, (out, err) in zip(procs, files, strict=True):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.seek(0)
            err.seek(0)
            results.append((proc.returncode, out.read(), err.read()))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s in sockets:
            s.close()
        for pair in files:
            for f in pair:
                f.close()


def run_workers(popen: Callable[..., subprocess.Popen], args: list[str], workers: int = 2,
                timeout: float = 240, attempts: int = 3) -> list[str]:
    """Start `workers` processes with `popen(args, env=..., ...)`; return their stdouts.

    The ports are reserved (see the module's docstring); should a worker still report its
    address in use, the cluster is started again on new ports, up to `attempts` times. Any
    other failure fails the test with the failing worker's stderr tail."""
    for attempt in range(attempts):
        with tempfile.TemporaryDirectory() as folder:
            results = _run_cluster(popen, args, workers, timeout, folder)
        if all(code == 0 for code, _, _ in results):
            return [out for _, out, _ in results]
        failed = [err for code, _, err in results if code != 0]
        if attempt + 1 < attempts and any(ADDRESS_IN_USE.search(err) for err in failed):
            continue
        codes = [code for code, _, _ in results]
        # A worker killed here (code -9) was waiting for the one that failed.
        first = next((err for code, _, err in results if code not in (0, -9)), failed[0])
        raise AssertionError(f"worker exit codes {codes}:\n{first[-3000:]}")
    raise AssertionError("unreachable")


def weight_digests(outputs: list[str]) -> list[str]:
    """The `weights sha256 ...` digest each worker printed in its final summary."""
    return [re.search(r"weights sha256 (\w+)", out).group(1) for out in outputs]


def relative_distance(got: list, expected: list, start: list) -> float:
    """How far the workers' weights `got` end from a single-process reference's `expected`,
    over how far they moved from `start` (L2 norms over all the weights, in float64)."""
    def norm(pairs) -> float:
        return float(np.sqrt(sum(np.sum((np.asarray(a, np.float64) - b) ** 2)
                                 for a, b in pairs)))
    return norm(zip(got, expected, strict=True)) / norm(zip(got, start, strict=True))
