"""Recognise the three published key layouts and rename them to one (the official one).

- official Res2Net-PretrainedModels and timm share key names: v1 (`conv1.weight`), v1b
  (`conv1.0.weight`: deep stem, `downsample.1/2` shortcuts) and DLA (`base_layer.0.weight`);
- mmdetection / mmpretrain: deep stem at `stem.0..7`, often wrapped in `state_dict` with a
  `backbone.` prefix; mmpretrain classifiers keep their head at `head.fc`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from keras_res2net.checkpoints.reader import flatten_tensors

_WRAPPERS = ("state_dict", "model", "model_state", "module")
_MMDET_STEM = {"stem.0": "conv1.0", "stem.1": "conv1.1", "stem.3": "conv1.3",
               "stem.4": "conv1.4", "stem.6": "conv1.6", "stem.7": "bn1"}


@dataclasses.dataclass
class NormalizedCheckpoint:
    """Tensors under official key names, the detected layout, and keys set aside with why."""

    layout: str
    tensors: dict[str, np.ndarray]
    set_aside: dict[str, str]

    @property
    def has_head(self) -> bool:
        return "fc.weight" in self.tensors


def _unwrap(state: dict) -> dict:
    for key in _WRAPPERS:
        if key in state and isinstance(state[key], dict):
            return _unwrap(state[key])
    return state


def _strip_prefix(tensors: dict, set_aside: dict) -> dict:
    """Drop DataParallel's `module.` and keep the `backbone.` of detectors/classifiers."""
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    if any(key.startswith("backbone.") for key in tensors):
        kept = {}
        for key, value in tensors.items():
            if key.startswith("backbone."):
                kept[key[len("backbone."):]] = value
            elif key.startswith("head.fc."):  # mmpretrain ImageClassifier
                kept["fc." + key[len("head.fc."):]] = value
            else:
                set_aside[key] = "not part of the backbone (neck/head of a detector)"
        tensors = kept
    return tensors


def detect_layout(keys) -> str:
    keys = set(keys)
    if any(key.startswith("stem.") for key in keys):
        return "mmdet"
    if "base_layer.0.weight" in keys:
        return "dla"
    if "conv1.0.weight" in keys:
        return "v1b"
    if "conv1.weight" in keys:
        return "v1"
    sample = ", ".join(sorted(keys)[:8])
    raise ValueError(
        "Unrecognised checkpoint layout: expected Res2Net keys such as 'conv1.weight' (v1), "
        f"'conv1.0.weight' (v1b), 'stem.0.weight' (mmdetection) or 'base_layer.0.weight' (DLA); "
        f"found {sample} ...")


def normalize_state_dict(state: dict) -> NormalizedCheckpoint:
    """Unwrap, strip prefixes, detect the layout and rename keys to the official layout."""
    set_aside: dict[str, str] = {}
    tensors = _strip_prefix(flatten_tensors(_unwrap(state)), set_aside)
    for key in [k for k in tensors if k.endswith("num_batches_tracked")]:
        set_aside[key] = "BatchNorm step counter (unused at inference)"
        del tensors[key]
    layout = detect_layout(tensors)
    if layout == "mmdet":
        renamed = {}
        for key, value in tensors.items():
            match = re.match(r"^(stem\.\d+)\.(.*)$", key)
            if match and match.group(1) in _MMDET_STEM:
                key = f"{_MMDET_STEM[match.group(1)]}.{match.group(2)}"
            renamed[key] = value
        tensors = renamed
    return NormalizedCheckpoint(layout, tensors, set_aside)
