"""Seeded detector weights shared by tools/make_mmdet_fixtures.py (mmdetection side) and the tests.

The mmdetection fixtures in ``tests/fixtures/mmdet/`` store no weights: both sides regenerate
them from a state dict's key names and shapes with :func:`seeded_state_dict`, then apply the
small calibration the tool recorded (:func:`rebuild_state_dict`). Pure NumPy, importable from
the mmdetection environment (the tool puts ``tests/`` on ``sys.path``) and from the project's.

Why not ``np.random.Generator.normal``/``uniform``: NumPy keeps the *bit generators'* raw
streams stable across releases (NEP 19), but not the algorithms that turn them into normal or
uniform variates. Only ``PCG64.random_raw`` is used here, turned into floats by this module, so
a fixture written with one NumPy version rebuilds bit-for-bit with another. The fixture records
the NumPy version and a sha256 of the tensors; :func:`verify_seeded_hash` fails loudly if a
stream ever changes.

Why not mmdetection's own initialisation: its heads start at std 0.01/0.001, which gives
near-uniform class scores and no detections above the score threshold, and it zero-inits the
last BatchNorm of each residual block. The draws below (Kaiming-like, with smaller gains on the
box regressors) give every config dozens of detections with spread scores.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "mmdet"
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
CALIB_PREFIX = "calib."

# Gain of a conv/linear weight by the name of its module (the key's second-to-last part).
# Everything else: sqrt(2) (Kaiming, ReLU follows), the FPN ("neck.") 1.0.
HEAD_GAINS = {"rpn_reg": 0.12, "fc_reg": 0.4, "rpn_cls": 1.0, "fc_cls": 1.0}
TRANSPOSED = ("upsample",)  # mask heads' ConvTranspose2d: weight is (in, out, kh, kw)
LAST_BN = ("bn3", "norm3")  # each residual block's last BatchNorm starts small
BN_GAMMA = (0.5, 1.0)
LAST_BN_GAMMA = (0.1, 0.3)
BN_BETA_STD = 0.1
BIAS_STD = 0.05


def uniform01(seed: int, key: str, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1) from PCG64's raw stream seeded by (seed, crc32(key)).

    The top 53 bits of each raw 64-bit word, times 2**-53: exact, no library algorithm involved.
    """
    bits = np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(key.encode())]))
    raw = bits.random_raw(n) if n else np.zeros(0, np.uint64)
    return (np.asarray(raw, np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _symmetric(seed: int, key: str, shape: tuple, std: float) -> np.ndarray:
    """Uniform on [-a, a] with standard deviation ``std`` (a = std * sqrt(3)), float64."""
    u = uniform01(seed, key, int(np.prod(shape, dtype=np.int64)))
    return ((2.0 * u - 1.0) * (std * np.sqrt(3.0))).reshape(shape)


def _module(key: str) -> tuple[str, str]:
    """('rpn_head.rpn_cls', 'rpn_cls') for 'rpn_head.rpn_cls.weight'."""
    module = key.rsplit(".", 1)[0]
    return module, module.rsplit(".", 1)[-1]


def _conv_weight(seed: int, key: str, shape: tuple) -> np.ndarray:
    module, leaf = _module(key)
    if leaf in TRANSPOSED:
        fan_in = shape[0] * int(np.prod(shape[2:]))
    else:
        fan_in = int(np.prod(shape[1:]))
    if leaf in HEAD_GAINS:
        gain = HEAD_GAINS[leaf]
    elif module.startswith("neck."):
        gain = 1.0
    else:
        gain = np.sqrt(2.0)
    w = _symmetric(seed, key, shape, gain / np.sqrt(fan_in))
    if leaf == "fc_cls":
        # Centre each class row: the pooled post-ReLU features share a large positive mean
        # component that would otherwise make one class win every RoI.
        w = w - w.mean(axis=1, keepdims=True)
    return w


def seeded_state_dict(shapes: Mapping[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    """A full mmdetection-style state dict drawn from key names and shapes alone.

    Per key (each from its own stream, so the order and the other keys do not matter):
    - ``*.weight`` with 2+ dims (conv, linear, transposed conv): uniform, std
      ``gain / sqrt(fan_in)``, gains as in ``HEAD_GAINS`` / FPN 1.0 / otherwise sqrt(2);
      ``fc_cls`` rows centred to zero mean;
    - ``*.bias`` of such a layer: uniform, std 0.05;
    - 1-D ``*.weight`` (BatchNorm gamma): U(0.5, 1.0), U(0.1, 0.3) for ``bn3``/``norm3``;
    - ``*.bias`` of a BatchNorm: uniform, std 0.1;
    - running statistics: the placeholders PyTorch starts from (mean 0, var 1, count 0), to be
      replaced by the recorded calibration (:func:`rebuild_state_dict`).
    Floats are float32, counts int64 scalars.
    """
    shapes = {key: tuple(int(d) for d in shape) for key, shape in shapes.items()}
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, np.int64)
            continue
        if key.endswith("running_mean"):
            state[key] = np.zeros(shape, np.float32)
            continue
        if key.endswith("running_var"):
            state[key] = np.ones(shape, np.float32)
            continue
        module, leaf = _module(key)
        name = key.rsplit(".", 1)[-1]
        weight_shape = shapes.get(f"{module}.weight", ())
        if name == "weight" and len(shape) >= 2:
            value = _conv_weight(seed, key, shape)
        elif name == "bias" and len(weight_shape) >= 2:
            value = _symmetric(seed, key, shape, BIAS_STD)
        elif name == "weight" and len(shape) == 1:
            lo, hi = LAST_BN_GAMMA if leaf in LAST_BN else BN_GAMMA
            value = lo + (hi - lo) * uniform01(seed, key, shape[0])
        elif name == "bias" and len(weight_shape) == 1:
            value = _symmetric(seed, key, shape, BN_BETA_STD)
        else:
            raise ValueError(f"seeded_state_dict: no rule for {key} {shape}")
        state[key] = value.astype(np.float32)
    return state


def state_dict_sha256(state: Mapping[str, np.ndarray]) -> str:
    """sha256 over sorted keys of (key, dtype, shape, little-endian C-order bytes)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = np.ascontiguousarray(state[key])
        value = value.astype(value.dtype.newbyteorder("<"), copy=False)
        digest.update(key.encode() + b"\0")
        digest.update(f"{value.dtype.str}{value.shape}".encode() + b"\0")
        digest.update(value.tobytes())
    return digest.hexdigest()


@dataclass
class MmdetFixture:
    """One config's fixture: ``meta`` (the ``.json``) and ``arrays`` (the ``.npz``)."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def manifest(self) -> dict[str, tuple]:
        """Key -> shape of the (reduced) model's state dict the fixture was made with."""
        return {key: tuple(shape) for key, shape in self.meta["state_dict_shapes"].items()}

    def image_count(self) -> int:
        return len(self.meta["images"])


def load_fixture(name: str, folder: str | pathlib.Path = FIXTURES) -> MmdetFixture:
    """Read ``<folder>/<name>.json`` and ``<folder>/<name>.npz`` (e.g. name ``"mask_rcnn"``)."""
    folder = pathlib.Path(folder)
    meta = json.loads((folder / f"{name}.json").read_text())
    with np.load(folder / f"{name}.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return MmdetFixture(meta, arrays)


def apply_lateral_scales(state: dict[str, np.ndarray], lateral_std: Mapping[str, float]) -> None:
    """Divide each FPN lateral weight by the std of the backbone level it reads (in place).

    Computed in float64 and rounded once to float32, so both sides get the same bits; this
    keeps P2-P6 at O(1) magnitude whatever the backbone depth.
    """
    for key, std in lateral_std.items():
        state[key] = (state[key].astype(np.float64) / float(std)).astype(np.float32)


def rebuild_state_dict(fixture: MmdetFixture) -> dict[str, np.ndarray]:
    """The exact state dict mmdetection ran: seeded weights, calibrated BN, scaled laterals."""
    state = seeded_state_dict(fixture.manifest(), fixture.meta["seed"])
    for key, value in fixture.arrays.items():
        if key.startswith(CALIB_PREFIX):
            target = key[len(CALIB_PREFIX):]
            if target not in state or state[target].shape != value.shape:
                raise KeyError(f"calibration entry {target} does not match the manifest")
            state[target] = value.copy()
    apply_lateral_scales(state, fixture.meta["lateral_std"])
    return state


def verify_seeded_hash(fixture: MmdetFixture) -> None:
    """Raise AssertionError unless the regenerated weights hash as when the fixture was made.

    Checks the seeded draw (the NumPy stream) and the rebuilt state dict (the calibration).
    """
    seeded = seeded_state_dict(fixture.manifest(), fixture.meta["seed"])
    recorded = fixture.meta["weights"]
    if state_dict_sha256(seeded) != recorded["seeded_sha256"]:
        raise AssertionError(
            f"{fixture.meta['config']}: seeded weights differ from those the fixture was made "
            f"with (NumPy {np.__version__} here, {recorded['numpy']} there): the PCG64 raw "
            "stream or SeedSequence changed; regenerate the fixtures (make fixtures-mmdet)")
    if state_dict_sha256(rebuild_state_dict(fixture)) != recorded["state_sha256"]:
        raise AssertionError(f"{fixture.meta['config']}: rebuilt state dict differs from the "
                             "one mmdetection ran (calibration entries or lateral scales)")
