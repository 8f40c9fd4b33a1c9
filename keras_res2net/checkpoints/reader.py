"""Read a checkpoint file into `{key: numpy array}` without unpickling untrusted data.

`.safetensors` is read with safetensors' NumPy API (no torch needed); `.pth`/`.pt`/`.bin` need
the optional `torch` extra and go through `torch.load(..., weights_only=True)`, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import os

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"


def is_torch_checkpoint(path: str) -> bool:
    return str(path).lower().endswith(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))


def read_state_dict(path: str | os.PathLike) -> dict:
    """The raw (possibly nested) mapping stored in `path`, tensors as float32/int64 arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as err:  # SafetensorError, OSError on truncated or foreign files
            raise ValueError(f"{path!r} is not a readable .safetensors file: {err}") from err
    if not path.lower().endswith(TORCH_SUFFIXES):
        raise ValueError(
            f"Cannot read {path!r}: expected a .safetensors, .pth, .pt, .bin or .ckpt checkpoint "
            "(or a Keras .weights.h5 file).")
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"Reading {path!r} needs PyTorch: pip install 'keras-res2net[torch]', or convert the "
            "checkpoint to .safetensors first.") from err
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(
            f"{path!r} is not a readable PyTorch state dict (loaded with weights_only=True, which "
            f"refuses pickled code): {err}") from err
    return _to_numpy(raw)


def _to_numpy(obj):
    if isinstance(obj, dict):
        return {key: _to_numpy(value) for key, value in obj.items()}
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.numpy()
    return obj


def flatten_tensors(state: dict) -> dict[str, np.ndarray]:
    """Keep only array entries, checking there is at least one."""
    tensors = {key: value for key, value in state.items() if isinstance(value, np.ndarray)}
    if not tensors:
        raise ValueError(f"The checkpoint holds no tensors (top-level keys: {list(state)[:10]}).")
    return tensors
