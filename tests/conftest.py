"""Shared pytest fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def save_safetensors(tmp_path):
    from safetensors.numpy import save_file

    def save(tensors: dict, name: str = "checkpoint.safetensors") -> str:
        path = tmp_path / name
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
        return str(path)

    return save
