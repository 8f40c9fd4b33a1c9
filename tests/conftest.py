"""Shared pytest fixtures, the workers' thread budget and the order files start in."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Under pytest-xdist each worker is its own TensorFlow process; left alone, every one starts
# as many intra- and inter-op threads as there are cores, and the workers' spinning thread
# pools then fight over the cores. One share each instead (before TensorFlow is imported):
# measured on 2 cores, two concurrent HTC trainings ran 1.97 s/step with one thread each
# against 2.62 with two. A value already in the environment wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _SHARE)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", _SHARE)

# The files that take longest, longest first (the longest-processing-time rule): they start
# first, so the workers end together instead of one running a long file alone at the end
# (`--dist loadfile --no-loadscope-reorder` hands out whole files in collection order;
# without the second flag pytest-xdist orders them by test count, and the one-test
# trainings started last). The rest, each under 18 s, follow in the usual order. A file
# missing here is only scheduled later, never skipped.
LONGEST_FIRST = (  # seconds per file, two workers (a full run at stop 24 on its host)
    "detection/test_train_synthetic_htc.py",  # 232, one test: it must not start late
    "export/test_detection_export.py",  # 162
    "detection/test_mmdet_parity.py",  # 151 (179 less the 28 s of tests merged since)
    "test_core_on_jax.py",  # 98, one subprocess: the `core` tests on JAX
    "detection/test_run_folder.py",  # 86
    "export/test_export_formats.py",  # 85
    "detection/test_train_synthetic.py",  # 79
    "detection/test_multi_worker.py",  # 51
    "detection/test_export.py",  # 49
    "training/test_digits.py",  # 46 with 4 epochs (clean clone, stop 24; 57 with 6)
    "training/test_resume.py",  # 45
    "saliency/test_run.py",  # 45-50 CPU-seconds of one thread on a loaded host (not timed quiet)
    "training/test_multi_worker.py",  # 32
    "checkpoints/test_mapping.py",  # 31
    "detection/test_convert.py",  # 28
    "models/test_models.py",  # 28
    "models/test_reference_parity.py",  # 25
    "training/test_mixed_precision.py",  # 25
    "checkpoints/test_convert_and_cache.py",  # 22
    "export/test_export_refusals.py",  # 22
    "hub/test_hub_backbone.py",  # 18
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests_dir = os.path.dirname(__file__)

    def key(item) -> int:
        relative = os.path.relpath(str(item.path), tests_dir).replace(os.sep, "/")
        return rank.get(relative, len(rank))

    items.sort(key=key)  # stable: the order within a file and among the rest is kept


@pytest.fixture
def save_safetensors(tmp_path):
    from safetensors.numpy import save_file

    def save(tensors: dict, name: str = "checkpoint.safetensors") -> str:
        path = tmp_path / name
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
        return str(path)

    return save
