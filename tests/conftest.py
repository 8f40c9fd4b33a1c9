"""Shared pytest fixtures, the workers' thread budget and the order files start in."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

# Under pytest-xdist each worker is its own TensorFlow process; left alone, every one starts
# as many intra- and inter-op threads as there are cores, and the workers' spinning thread
# pools then fight over the cores, each running slower than on its own share. One share each
# instead (before TensorFlow is imported); a value already in the environment wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _SHARE)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", _SHARE)

# The files that take longest start first (the longest-processing-time rule), so the workers
# end together instead of one running a long file alone at the end: `--dist loadfile
# --no-loadscope-reorder` hands out whole files in collection order (without the second flag
# pytest-xdist orders them by test count, and the one-test trainings would start last).
# tests/durations.json holds each file's seconds from a full run (`make durations`, which
# runs tools/test_durations.py); a file missing there is scheduled after those listed, never
# skipped.
DURATIONS = os.path.join(os.path.dirname(__file__), "durations.json")


def _file_seconds() -> dict[str, float]:
    try:
        with open(DURATIONS) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def pytest_collection_modifyitems(config, items) -> None:
    seconds = _file_seconds()
    tests_dir = os.path.dirname(__file__)

    def key(item) -> float:
        relative = os.path.relpath(str(item.path), tests_dir).replace(os.sep, "/")
        return -seconds.get(relative, 0.0)

    items.sort(key=key)  # stable: the order within a file and among unlisted files is kept


@pytest.fixture
def learning_seed() -> int:
    """The seed of a learning test's training run: 0, unless `RES2NET_LEARNING_SEED` says
    otherwise (tools/learning_spread.py runs a test over many seeds to set its bound)."""
    return int(os.environ.get("RES2NET_LEARNING_SEED", "0"))


@pytest.fixture
def report_figure(record_property):
    """report(name, value, bound): record a learning test's figure and the bound it must
    clear (read back by tools/learning_spread.py from the JUnit XML) and return the value."""

    def report(name: str, value: float, bound: float) -> float:
        record_property(f"figure:{name}", float(value))
        record_property(f"bound:{name}", float(bound))
        return float(value)

    return report


@pytest.fixture
def save_safetensors(tmp_path):
    from safetensors.numpy import save_file

    def save(tensors: dict, name: str = "checkpoint.safetensors") -> str:
        path = tmp_path / name
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
        return str(path)

    return save
