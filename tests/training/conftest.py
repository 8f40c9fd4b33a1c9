"""Shared helpers for the training tests: a tiny config and a way to run the script.

The tiny Res2Net (one block per stage, base width 4) keeps every run to seconds on 2 CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from loopback import script_env, script_popen

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "train", "imagenet.py")
TINY_FLAGS = ["--data", "digits", "--layers", "1,1,1,1", "--base_width", "4",
              "--batch_size", "32"]


class TrainScript:
    """train/imagenet.py as a subprocess (fresh TF process, as a user runs it)."""

    tiny_flags = TINY_FLAGS

    @staticmethod
    def run(args: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                              timeout=timeout, env=script_env(**env), cwd=ROOT)

    popen = staticmethod(script_popen(os.path.join("train", "imagenet.py")))


@pytest.fixture
def train_script() -> TrainScript:
    return TrainScript()


@pytest.fixture
def tiny_config():
    from keras_res2net.training import TrainConfig, resolve_config

    def make(model_dir: str, **overrides):
        base = dict(data="digits", layers=(1, 1, 1, 1), base_width=4, batch_size=32,
                    model_dir=str(model_dir))
        base.update(overrides)
        return resolve_config(TrainConfig(**base))

    return make
