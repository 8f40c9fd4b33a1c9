"""Seeded weights and images shared by the fixture script (torch side) and the tests (Keras side).

Pure NumPy, so both environments compute bit-identical arrays from a key name and a seed; the
committed fixtures then only need what PyTorch measured (BatchNorm statistics, logits), not
the tens of megabytes of weights.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import zlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "reference"
PROVENANCE = FIXTURES / "provenance.json"
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def seeded_parameters(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    """Random trainable tensors for a state dict: He-scaled convs, random BN affine terms.

    Running statistics are excluded: the reference measures them on random images.
    """
    params = {}
    for key in sorted(shapes):
        if key.endswith(RUNNING_STATS):
            continue
        shape = tuple(shapes[key])
        rng = _rng(seed, key)
        if len(shape) == 1 and key.endswith(".weight"):  # BatchNorm scale
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:  # BatchNorm shift or classifier bias
            value = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            gain = 1.0 if key.startswith("fc.") else 2.0
            value = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
        params[key] = value.astype(np.float32)
    return params


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over sorted names, dtypes, shapes and bytes: what a fixture's seeded weights
    (or images) were, recorded in `fixtures/reference/provenance.json`."""
    sha = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        sha.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def seeded_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Normalised-looking NHWC float32 images (standard normal)."""
    rng = np.random.default_rng([seed, height, width])
    return rng.standard_normal((batch, height, width, 3)).astype(np.float32)


def projection(channels: int, dims: int = 16, seed: int = 0) -> np.ndarray:
    """A fixed random (channels, dims) matrix: compares feature maps through a small summary."""
    return _rng(seed, f"projection{channels}").normal(0, 1 / np.sqrt(channels),
                                                      (channels, dims)).astype(np.float32)


class ReferenceFixture:
    """One `<name>.npz` written by tools/make_reference_fixtures.py."""

    def __init__(self, name: str):
        with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
            self.arrays = {key: data[key] for key in data.files}
        self.meta = json.loads(str(self.arrays.pop("meta")))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Seeded trainable tensors plus the running statistics PyTorch measured."""
        tensors = seeded_parameters(self.meta["key_shapes"], self.meta["seed"])
        tensors.update({key[len("stat:"):]: value for key, value in self.arrays.items()
                        if key.startswith("stat:")})
        return tensors

    def outputs(self, height: int, width: int) -> dict[str, np.ndarray]:
        prefix = f"out:{height}x{width}"
        return {key[len(prefix):].lstrip(":"): value for key, value in self.arrays.items()
                if key.startswith(prefix)}


def fixture_digests(name: str) -> dict[str, str]:
    """The digests of what both sides generate for fixture `name` from seeded NumPy: its
    trainable weights and every image batch the reference ran (calibration and outputs)."""
    meta = ReferenceFixture(name).meta
    images = {f"calibration{b}": seeded_images(8, 224, 224, seed=1000 + b)
              for b in range(CALIBRATION_BATCHES)}
    images.update({f"{h}x{w}": seeded_images(2, h, w) for h, w in meta["sizes"]})
    return {"weights": digest(seeded_parameters(meta["key_shapes"], meta["seed"])),
            "images": digest(images)}


CALIBRATION_BATCHES = 4  # tools/make_reference_fixtures.py: BatchNorm statistics batches


def load_manifests() -> dict:
    return json.loads((FIXTURES / "manifests.json").read_text())
