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

`SIGNAL_AFTER_CHECKPOINT` runs a training script whose process sends itself a signal right
after the trainer saved a given step's checkpoint (`SIGNAL_ENV="STEP:SIGTERM"` in its
environment): a SIGTERM or SIGKILL at a known step, on one chosen worker; or whose chief
copies its run folder there (`COPY_ENV="STEP:DEST"`) and trains on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(**extra: str) -> dict:
    """The environment a training script runs in: TF backend, CPU only, unbuffered."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


SIGNAL_ENV = "RES2NET_TEST_SIGNAL_AFTER_CHECKPOINT"
COPY_ENV = "RES2NET_TEST_COPY_AFTER_CHECKPOINT"
# The script (argv[1]) with `Trainer.save` patched: once the checkpoint of STEP is saved, the
# process sends itself the signal named in SIGNAL_ENV ("STEP:SIGNAL"), and the chief copies
# its model_dir to DEST (COPY_ENV "STEP:DEST": the folder as a kill at that point leaves it);
# without either variable, the script as it is.
SIGNAL_AFTER_CHECKPOINT = f"""
import os, runpy, shutil, signal, sys
signal_at, copy_at = os.environ.get({SIGNAL_ENV!r}), os.environ.get({COPY_ENV!r})
if signal_at or copy_at:
    from keras_res2net.training import trainer as loop

    save = loop.Trainer.save

    def save_then_act(self):
        save(self)
        step = str(int(self.step.numpy()))
        if copy_at and copy_at.split(":", 1)[0] == step and self.chief:
            shutil.copytree(self.model_dir, copy_at.split(":", 1)[1])
        if signal_at and signal_at.split(":")[0] == step:
            os.kill(os.getpid(), getattr(signal, signal_at.split(":")[1]))

    loop.Trainer.save = save_then_act
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def script_popen(script: str, signals: bool = False) -> Callable[..., subprocess.Popen]:
    """`popen(args, env=..., **kwargs)` starting `script` (relative to the repo) in `ROOT`;
    with `signals`, through `SIGNAL_AFTER_CHECKPOINT`."""
    wrapper = ["-c", SIGNAL_AFTER_CHECKPOINT] if signals else []

    def popen(args: list[str], **kwargs) -> subprocess.Popen:
        env = script_env(**kwargs.pop("env", {}))
        return subprocess.Popen([sys.executable, *wrapper, os.path.join(ROOT, script), *args],
                                cwd=ROOT, env=env, **kwargs)
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


class WorkerResult(NamedTuple):
    code: int  # exit status (negative: killed by that signal)
    out: str
    err: str
    ended: float  # time.monotonic() at which the test saw it exit


def _run_cluster(popen, args, workers, timeout, folder, worker_env, grace
                 ) -> list[WorkerResult]:
    """One attempt, one result per worker. The ports stay reserved until every worker has
    exited; once a worker fails, the others (which may wait for it forever) get `grace`
    seconds to exit by themselves, then are killed."""
    sockets = reserved_ports(workers)
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    procs, files, ended = [], [], {}
    try:
        for index in range(workers):
            tf_config = json.dumps({"cluster": {"worker": addresses},
                                    "task": {"type": "worker", "index": index}})
            out = open(os.path.join(folder, f"worker{index}.out"), "w+")
            err = open(os.path.join(folder, f"worker{index}.err"), "w+")
            files.append((out, err))
            env = {"TF_CONFIG": tf_config, "TF_GRPC_REUSE_PORT": "1",
                   **(worker_env or {}).get(index, {})}
            procs.append(popen(args, env=env, text=True, stdout=out, stderr=err))
        deadline = time.monotonic() + timeout
        while len(ended) < workers and time.monotonic() < deadline:
            for index, proc in enumerate(procs):
                if index not in ended and proc.poll() is not None:
                    ended[index] = time.monotonic()
                    if proc.returncode != 0:
                        deadline = min(deadline, ended[index] + grace)
            time.sleep(0.1)
        results = []
        for index, (proc, (out, err)) in enumerate(zip(procs, files, strict=True)):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.seek(0)
            err.seek(0)
            results.append(WorkerResult(proc.returncode, out.read(), err.read(),
                                        ended.get(index, time.monotonic())))
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


def run_cluster(popen: Callable[..., subprocess.Popen], args: list[str], workers: int = 2,
                timeout: float = 240, attempts: int = 3, worker_env: dict | None = None,
                grace: float = 0.0) -> list[WorkerResult]:
    """Start `workers` processes with `popen(args, env=..., ...)` (worker i's environment
    plus `worker_env[i]`); return each one's `WorkerResult`, whatever its exit status.

    The ports are reserved (see the module's docstring); should a worker report its address
    in use, the cluster is started again on new ports, up to `attempts` times. Once a worker
    fails, the others get `grace` seconds to exit by themselves before they are killed."""
    for attempt in range(attempts):
        with tempfile.TemporaryDirectory() as folder:
            results = _run_cluster(popen, args, workers, timeout, folder, worker_env, grace)
        in_use = any(r.code != 0 and ADDRESS_IN_USE.search(r.err) for r in results)
        if not (in_use and attempt + 1 < attempts):
            return results
    raise AssertionError("unreachable")


def run_workers(popen: Callable[..., subprocess.Popen], args: list[str], workers: int = 2,
                timeout: float = 240, attempts: int = 3,
                worker_env: dict | None = None) -> list[str]:
    """`run_cluster` where every worker must succeed: their stdouts. A failure fails the
    test with the failing worker's stderr tail."""
    results = run_cluster(popen, args, workers, timeout, attempts, worker_env)
    if any(r.code != 0 for r in results):
        codes = [r.code for r in results]
        # A worker killed here (code -9) was waiting for the one that failed.
        first = next((r.err for r in results if r.code not in (0, -9)),
                     next(r.err for r in results if r.code != 0))
        raise AssertionError(f"worker exit codes {codes}:\n{first[-3000:]}")
    return [r.out for r in results]


@contextlib.contextmanager
def op_determinism_restored() -> Iterator[None]:
    """Around a training with `deterministic=True` in the test process: TensorFlow's op
    determinism (process-wide, on once enabled) is turned off again afterwards if it was off
    before, so later tests run as they would alone."""
    from tensorflow.python.framework import config  # no public way to ask or to turn it off

    was_on = config.is_op_determinism_enabled()
    try:
        yield
    finally:
        if not was_on:
            config.disable_op_determinism()


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
