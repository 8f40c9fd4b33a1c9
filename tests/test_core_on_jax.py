"""The `core` tests again, on the JAX backend, as one unit of the TensorFlow run.

Keras fixes its backend once per process, so the JAX pass is its own pytest process. Run
here, it is one more long unit that pytest-xdist schedules beside the TensorFlow files (it
runs while the other worker finishes, instead of after both), rather than a second pytest
session that `make test` waits for; `make test-jax` still runs it on its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
# The tests call models eagerly, so JAX compiles each op on its own and compiling, not running,
# is most of their time: LLVM's cheapest setting (XLA's fusion passes still run) took two of
# the longest from 44 to 28 s; every `core` test still passes, tolerances unchanged.
JAX_TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")


def test_core_tests_pass_on_jax():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST_", "TF_NUM_"))}  # not an xdist worker
    env["KERAS_BACKEND"] = "jax"
    env.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing: CPU is what CI has
    env.setdefault("XLA_FLAGS", JAX_TEST_XLA_FLAGS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "core", "-n", "0", "-q", "-p",
         "no:cacheprovider", "--durations=5", TESTS_DIR],
        env=env, cwd=os.path.dirname(TESTS_DIR), capture_output=True, text=True)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, tail
    summary = re.search(r"(\d+) passed", tail)
    # the core set: models, reference parity, timm conventions, CIFAR, CAM, fold, semantic
    assert summary and int(summary.group(1)) >= 35, tail  # not a silently emptied selection
    print(tail[-1500:])
