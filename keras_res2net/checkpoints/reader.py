"""Read a checkpoint file into `{key: numpy array}` without unpickling untrusted data.

`.safetensors` is read with safetensors' NumPy API (no torch needed); `.pth`/`.pt`/`.bin` need
the optional `torch` extra and go through `torch.load(..., weights_only=True)`, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import os
import re

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
        raw = _torch_load(torch, path)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(
            f"{path!r} is not a readable PyTorch state dict (loaded with weights_only=True, which "
            f"refuses pickled code): {err}") from err
    return _to_numpy(raw)


# NumPy data types a checkpoint's metadata may hold (a float64 score, a dtype, a small array):
# rebuilding them runs no code, so they are allowed on top of torch's weights_only defaults.
_NUMPY_DATA = re.compile(
    r"^numpy(\._core|\.core)?(\.multiarray)?\.(scalar|dtype|ndarray|_reconstruct)$"
    r"|^numpy\.dtypes\.\w+DType$")


def _torch_load(torch, path: str):
    """torch.load(weights_only=True), retried with NumPy's data types allowed when they are
    all it refused (mmdetection metadata may hold NumPy scalars)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "numpy" not in str(err) or not hasattr(torch.serialization, "safe_globals"):
            raise
        try:  # zip-format files only (torch >= 1.6 saves those)
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            raise err from None
        if not names or not all(_NUMPY_DATA.match(name) for name in names):
            raise
        allowed = [(_resolve(name), name) for name in names]
        # Unpickled dtypes are instances of per-type classes (numpy.dtypes.Float64DType...).
        allowed += list({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGUS"})
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)


def _resolve(name: str):
    import importlib
    import warnings

    module, attribute = name.rsplit(".", 1)
    with warnings.catch_warnings():  # numpy.core is a deprecated alias of numpy._core
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), attribute)


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
