"""Assign official-layout tensors to a Keras Res2Net by layer name, strictly.

Keras layer names are the reference module paths with "." replaced by "_"; the fused stage
convs (`layer2_0_convs`, `layer2_0_bns`) take all of `layer2.0.convs.i` / `bns.i` concatenated
along the output channels. Every model weight must be filled exactly once with the right
shape; checkpoint tensors left over are an error unless they are known to be unused.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from keras import layers

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


@dataclasses.dataclass
class LoadReport:
    """What a load used and what it set aside (with the reason), for the user to read."""

    layout: str
    assigned: int
    set_aside: dict[str, str]

    def summary(self) -> str:
        text = f"loaded {self.assigned} tensors ({self.layout} layout)"
        if self.set_aside:
            text += f"; {len(self.set_aside)} set aside: " + ", ".join(
                f"{key} ({why})" for key, why in sorted(self.set_aside.items())[:6])
            if len(self.set_aside) > 6:
                text += ", ..."
        return text


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model: missing keys, unused keys or wrong shapes."""


def torch_prefix(layer_name: str) -> str:
    """`layer2_0_convs_1` -> `layer2.0.convs.1` (DLA's `base_layer` keeps its underscore)."""
    return layer_name.replace("_", ".").replace("base.layer", "base_layer")


def _indexed(tensors: dict, prefix: str, field: str) -> list[str]:
    """`prefix.0.field`, `prefix.1.field`, ...: a gap in the indices names the missing key."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.{field}$")
    found = dict(sorted((int(m.group(1)), key) for key in tensors if (m := pattern.match(key))))
    return [found.get(i, f"{prefix}.{i}.{field}") for i in range(max(found, default=-1) + 1)]


def _conv_kernel(arrays: list[np.ndarray]) -> np.ndarray:
    # PyTorch (out, in/groups, kh, kw) -> Keras (kh, kw, in/groups, out)
    return np.transpose(np.concatenate(arrays, axis=0), (2, 3, 1, 0))


def _sources(layer, tensors: dict) -> list[list[str]]:
    """For each variable of `layer`: the checkpoint keys that fill it (`_convert` lays them out)."""
    prefix = torch_prefix(layer.name)
    fused = layer.name.endswith(("_convs", "_bns"))
    if isinstance(layer, layers.BatchNormalization):
        if fused:
            keys = [_indexed(tensors, prefix, field) for field in _BN_FIELDS]
        else:
            keys = [[f"{prefix}.{field}"] for field in _BN_FIELDS]
        return keys
    if isinstance(layer, layers.Conv2D):
        keys = [_indexed(tensors, prefix, "weight") if fused else [f"{prefix}.weight"]]
        if layer.use_bias:
            keys.append([f"{prefix}.bias"])
        return keys
    if isinstance(layer, layers.Dense):
        return [[f"{prefix}.weight"], [f"{prefix}.bias"]]
    raise TypeError(f"No checkpoint mapping for layer {layer.name} ({type(layer).__name__}).")


def _convert(layer, index: int, arrays: list[np.ndarray]) -> np.ndarray:
    """PyTorch layout -> Keras layout; a tensor of the wrong rank is returned as is, so the
    caller reports it as a shape mismatch."""
    ranks = {array.ndim for array in arrays}
    if isinstance(layer, layers.Conv2D) and index == 0 and ranks == {4}:
        return _conv_kernel(arrays)
    if isinstance(layer, layers.Dense) and index == 0 and ranks <= {2, 4} and len(arrays) == 1:
        # (out, in) for nn.Linear, (out, in, 1, 1) for DLA's 1x1-conv classifier
        return arrays[0].reshape(arrays[0].shape[0], -1).T
    return np.concatenate(arrays, axis=0)


def assign_state_dict(model, tensors: dict, *, layout: str, set_aside: dict | None = None,
                      optional: dict[str, str] | None = None) -> LoadReport:
    """Fill every weight of `model` from `tensors` (official key names) or raise.

    `optional` maps regular expressions of keys that may stay unused to the reason (e.g. the
    classifier when the model has no top). All problems are collected and reported together.
    """
    set_aside = dict(set_aside or {})
    used: set[str] = set()
    missing, shape_errors, updates = [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        keys_per_var = _sources(layer, tensors)
        if len(keys_per_var) != len(layer.weights):
            raise TypeError(f"Unexpected variables in layer {layer.name}.")
        values = []
        for index, (variable, keys) in enumerate(zip(layer.weights, keys_per_var, strict=True)):
            absent = [key for key in keys if key not in tensors]
            if not keys or absent:
                missing.append(", ".join(absent) or f"{torch_prefix(layer.name)}.*")
                continue
            used.update(keys)
            value = _convert(layer, index, [tensors[key] for key in keys])
            if tuple(value.shape) != tuple(variable.shape):
                shape_errors.append(
                    f"{'+'.join(keys)}: checkpoint {tuple(value.shape)} (after layout change) vs "
                    f"model {layer.name}/{variable.name} {tuple(variable.shape)}")
                continue
            values.append(value)
        if len(values) == len(layer.weights):
            updates.append((layer, values))

    unused = []
    for key in sorted(set(tensors) - used):
        reason = next((why for pattern, why in (optional or {}).items()
                       if re.search(pattern, key)), None)
        if reason is None:
            unused.append(f"{key} {tuple(tensors[key].shape)}")
        else:
            set_aside[key] = reason
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights have no checkpoint tensor: "
                        + "; ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if shape_errors:
        problems.append(f"{len(shape_errors)} shape mismatches: " + "; ".join(shape_errors[:10])
                        + (" ..." if len(shape_errors) > 10 else ""))
    if unused:
        problems.append(f"{len(unused)} checkpoint tensors match no model weight: "
                        + ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""))
    if problems:
        raise CheckpointMismatchError(
            f"Checkpoint ({layout} layout) does not fit model {model.name!r}: "
            + " | ".join(problems))
    for layer, values in updates:
        layer.set_weights(values)
    return LoadReport(layout=layout, assigned=len(used), set_aside=set_aside)
