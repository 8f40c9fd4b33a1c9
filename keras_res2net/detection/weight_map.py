"""mmdetection key <-> Keras variable for every weight of a detector, with the layout changes.

`plan(model)` walks a built detector (backbone, FPN, RPN, box heads, mask heads, semantic
head) and lists one `Slot` per Keras variable: the mmdetection (3.x, also 2.x) key that fills
it and the `Transform` between the two layouts. The same plan drives loading
(`load_mmdet_state_dict`, strict: every variable filled once with a checked shape, every
tensor used, all problems in one error) and its exact inverse (`to_mmdet_state_dict`), and
`build_variables` creates a detector's variables from its config without running it.

Layout changes (PyTorch -> Keras):
- Conv2d (out, in, kh, kw) -> (kh, kw, in, out); ConvTranspose2d (in, out, kh, kw) ->
  Conv2DTranspose (kh, kw, out, in): the same axis permutation, no spatial flip (both
  scatter input pixel (i, j) times kernel tap (a, b) to output (s*i + a, s*j + b));
- Linear (out, in) -> Dense (in, out);
- the box head's first FC reads RoI features flattened C, H, W in PyTorch and H, W, C here:
  its input rows are permuted;
- fc_cls has the background class last in mmdetection (2.x and 3.x) and first here: its
  outputs are rotated by one. fc_reg is class-major (4 per class, no background) in both, or
  4 outputs when class-agnostic (the cascade stages).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from keras_res2net.checkpoints.mapping import LoadReport, torch_prefix
from keras_res2net.detection.mmdet_checkpoint import (
    ARCHITECTURE_NAMES,
    DetectorCheckpointError,
    MMDetCheckpoint,
    check_architecture,
)

# Official Res2Net names of the deep stem (Keras layer names) -> mmdetection's `stem.N`.
_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
         "conv1.6": "stem.6", "bn1": "stem.7"}
_BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
              ("moving_variance", "running_var"))


@dataclasses.dataclass(frozen=True)
class Transform:
    """PyTorch layout -> Keras layout and back; `name` is what error messages show."""

    name: str
    to_keras: Callable[[np.ndarray], np.ndarray]
    to_mmdet: Callable[[np.ndarray], np.ndarray]


def _rank(ndim: int, fn):
    def checked(array: np.ndarray) -> np.ndarray:
        if array.ndim != ndim:
            raise ValueError(f"expected {ndim} dimensions")
        return fn(array)
    return checked


IDENTITY = Transform("as is", lambda a: a, lambda a: a)
CONV = Transform("conv (out, in, kh, kw) -> (kh, kw, in, out)",
                 _rank(4, lambda a: a.transpose(2, 3, 1, 0)),
                 _rank(4, lambda a: a.transpose(3, 2, 0, 1)))
DECONV = Transform("conv-transpose (in, out, kh, kw) -> (kh, kw, out, in)",
                   _rank(4, lambda a: a.transpose(2, 3, 1, 0)),
                   _rank(4, lambda a: a.transpose(3, 2, 0, 1)))
LINEAR = Transform("linear (out, in) -> (in, out)", _rank(2, lambda a: a.T),
                   _rank(2, lambda a: a.T))
CLS_WEIGHT = Transform(
    "fc_cls (K+1, in), background last -> (in, K+1), background first",
    _rank(2, lambda a: np.roll(a.T, 1, axis=1)), _rank(2, lambda a: np.roll(a, -1, axis=1).T))
CLS_BIAS = Transform("fc_cls bias, background last -> first",
                     _rank(1, lambda a: np.roll(a, 1)), _rank(1, lambda a: np.roll(a, -1)))


def linear_chw(size: int) -> Transform:
    """The first FC of a box head on (C, size, size) RoI features: rows C,H,W -> H,W,C."""
    def to_keras(a: np.ndarray) -> np.ndarray:
        out, features = a.shape
        channels, rest = divmod(features, size * size)
        if rest:
            raise ValueError(f"{features} inputs are not C x {size} x {size}")
        return a.reshape(out, channels, size, size).transpose(2, 3, 1, 0).reshape(-1, out)

    def to_mmdet(a: np.ndarray) -> np.ndarray:
        features, out = a.shape
        return a.reshape(size, size, features // (size * size), out).transpose(
            3, 2, 0, 1).reshape(out, -1)

    return Transform(f"linear on C x {size} x {size} RoI features (CHW rows -> HWC rows)",
                     _rank(2, to_keras), _rank(2, to_mmdet))


@dataclasses.dataclass
class Slot:
    """One Keras variable, the mmdetection key that fills it and the layout change."""

    key: str
    variable: keras.Variable
    transform: Transform


# -- the plan -------------------------------------------------------------------------------
def _layer_slots(layer, prefix: str, kernel: Transform = CONV) -> list[Slot]:
    """Conv2D / Conv2DTranspose / Dense with bias under `prefix.weight` and `prefix.bias`."""
    slots = [Slot(f"{prefix}.weight", layer.kernel, kernel)]
    if layer.bias is not None:
        slots.append(Slot(f"{prefix}.bias", layer.bias, IDENTITY))
    return slots


def _backbone_slots(backbone: keras.Model) -> list[Slot]:
    slots = []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        name = torch_prefix(layer.name)
        prefix = "backbone." + _STEM.get(name, name)
        if isinstance(layer, layers.BatchNormalization):
            slots += [Slot(f"{prefix}.{torch}", getattr(layer, attr), IDENTITY)
                      for attr, torch in _BN_FIELDS]
        elif isinstance(layer, layers.Conv2D):
            slots += _layer_slots(layer, prefix)
        else:
            raise TypeError(f"No mmdetection mapping for backbone layer {layer.name} "
                            f"({type(layer).__name__}).")
    return slots


def fpn_slots(fpn, prefix: str = "neck") -> list[Slot]:
    """mmdetection's FPN: lateral_convs.i / fpn_convs.i are the i-th input level (P2 first)."""
    slots = []
    for index, level in enumerate(fpn.levels):
        slots += _layer_slots(fpn.laterals[level], f"{prefix}.lateral_convs.{index}.conv")
        slots += _layer_slots(fpn.outputs_convs[level], f"{prefix}.fpn_convs.{index}.conv")
    return slots


def rpn_slots(rpn, prefix: str = "rpn_head") -> list[Slot]:
    """RPNHead: the shared rpn_conv, rpn_cls (one sigmoid per anchor), rpn_reg (4 per anchor)."""
    slots = []
    for name, layer in (("rpn_conv", rpn.conv), ("rpn_cls", rpn.cls), ("rpn_reg", rpn.reg)):
        slots += _layer_slots(layer, f"{prefix}.{name}")
    return slots


def box_head_slots(head, prefix: str, pool_size: int) -> list[Slot]:
    """A BoxHead under mmdetection's Shared2FCBBoxHead keys (`prefix.shared_fcs.0`, ...)."""
    return (_layer_slots(head.fc1, f"{prefix}.shared_fcs.0", linear_chw(pool_size))
            + _layer_slots(head.fc2, f"{prefix}.shared_fcs.1", LINEAR)
            + [Slot(f"{prefix}.fc_cls.weight", head.cls.kernel, CLS_WEIGHT),
               Slot(f"{prefix}.fc_cls.bias", head.cls.bias, CLS_BIAS)]
            + _layer_slots(head.reg, f"{prefix}.fc_reg", LINEAR))


def mask_head_slots(head, prefix: str) -> list[Slot]:
    """A MaskHead under FCNMaskHead / HTCMaskHead keys (`convs.N.conv`, `upsample`, ...)."""
    slots = []
    for index, conv in enumerate(head.convs):
        slots += _layer_slots(conv, f"{prefix}.convs.{index}.conv")
    slots += _layer_slots(head.deconv, f"{prefix}.upsample", DECONV)
    slots += _layer_slots(head.logits, f"{prefix}.conv_logits")
    if head.conv_res is not None:
        slots += _layer_slots(head.conv_res, f"{prefix}.conv_res.conv")
    return slots


def semantic_slots(head, prefix: str) -> list[Slot]:
    """HTC's FusedSemanticHead: lateral_convs.i is level P(i+2), as mmdetection's feats[i]."""
    slots = []
    for index, level in enumerate(head.levels):
        slots += _layer_slots(head.laterals[level], f"{prefix}.lateral_convs.{index}.conv")
    for index, conv in enumerate(head.convs):
        slots += _layer_slots(conv, f"{prefix}.convs.{index}.conv")
    slots += _layer_slots(head.conv_embedding, f"{prefix}.conv_embedding.conv")
    slots += _layer_slots(head.conv_logits, f"{prefix}.conv_logits")
    return slots


def _heads(model, single: str, many: str) -> list[tuple[str, object]]:
    """`[(key prefix, head)]`: `roi_head.x` for one head, `roi_head.x.N` for a cascade."""
    if getattr(model, many, None):
        return [(str(stage), head) for stage, head in enumerate(getattr(model, many))]
    head = getattr(model, single, None)
    return [] if head is None else [("", head)]


def plan(model) -> list[Slot]:
    """Every variable of the built detector `model` with its mmdetection key; raises if a
    variable has no mapping (a layer this converter does not know)."""
    config = model.config
    slots = _backbone_slots(model.backbone) + fpn_slots(model.fpn) + rpn_slots(model.rpn_head)
    for stage, head in _heads(model, "box_head", "box_heads"):
        prefix = "roi_head.bbox_head" + (f".{stage}" if stage else "")
        slots += box_head_slots(head, prefix, config.roi.box_pool_size)
    for stage, head in _heads(model, "mask_head", "mask_heads"):
        slots += mask_head_slots(head, "roi_head.mask_head" + (f".{stage}" if stage else ""))
    if getattr(model, "semantic_head", None) is not None:
        slots += semantic_slots(model.semantic_head, "roi_head.semantic_head")

    mapped = {id(slot.variable) for slot in slots}
    unmapped = [v.path for v in model.weights if id(v) not in mapped]
    if unmapped or len(mapped) != len(slots):
        raise TypeError("The detector has variables without a mmdetection key (a layer the "
                        f"converter does not know): {', '.join(unmapped[:8])}.")
    return slots


# -- building without a forward pass -----------------------------------------------------------
def _build(layer, channels: int, rank: int = 4) -> None:
    if not layer.built:
        layer.build((None,) * (rank - 1) + (channels,))


def build_variables(model) -> None:
    """Create every variable of a detector from its config, without calling it.

    Loading a checkpoint needs only the variables; a forward pass of a full-size detector
    costs seconds on a CPU and depends on the test-time code. The shapes are those a call
    would create: FPN on the backbone's P2..P5 widths, heads on the FPN width, box heads on
    (box_pool x box_pool x C) and mask heads on (mask_pool x mask_pool x C) RoI features.
    Layers are built under the name scopes a call would open, so variable paths match too.
    """
    config = model.config
    channels = config.heads.fpn_channels
    widths = {level: int(tensor.shape[-1]) for level, tensor in model.backbone.output.items()}
    with keras.name_scope(model.name):
        with keras.name_scope(model.fpn.name):
            for level in model.fpn.levels:
                _build(model.fpn.laterals[level], widths[level])
                _build(model.fpn.outputs_convs[level], channels)
        model.fpn.built = True
        with keras.name_scope(model.rpn_head.name):
            for conv in (model.rpn_head.conv, model.rpn_head.cls, model.rpn_head.reg):
                _build(conv, channels)
        model.rpn_head.built = True
        for pool, name in ((config.roi.box_pool_size, "box"), (config.roi.mask_pool_size, "mask")):
            for _, head in _heads(model, f"{name}_head", f"{name}_heads"):
                if not head.built:
                    head.build((None, None, pool, pool, channels))
        semantic = getattr(model, "semantic_head", None)
        if semantic is not None:
            with keras.name_scope(semantic.name):
                for level in semantic.levels:
                    _build(semantic.laterals[level], channels)
                for conv in [*semantic.convs, semantic.conv_embedding, semantic.conv_logits]:
                    _build(conv, semantic.channels)
            semantic.built = True
    model.built = True


# -- loading and its inverse ----------------------------------------------------------------
def _group(key: str) -> str:
    """`roi_head.mask_head.1.convs.0.conv.weight` -> `roi_head.mask_head.1`."""
    parts = key.split(".")
    size = 3 if parts[0] == "roi_head" and len(parts) > 3 and parts[2].isdigit() else 2
    return ".".join(parts[:size] if parts[0] == "roi_head" else parts[:1])


def _listing(entries: list[str], limit: int = 12) -> str:
    return "; ".join(entries[:limit]) + (f"; ... ({len(entries) - limit} more)"
                                         if len(entries) > limit else "")


def _by_group(keys) -> str:
    groups: dict[str, int] = {}
    for key in keys:
        groups[_group(key)] = groups.get(_group(key), 0) + 1
    return ", ".join(f"{group}.* ({count})" for group, count in groups.items())


def map_checkpoint(model, checkpoint: MMDetCheckpoint) -> list[tuple[Slot, np.ndarray]]:
    """Every slot with its Keras-layout value, or DetectorCheckpointError with all problems."""
    slots = plan(model)
    tensors = checkpoint.tensors
    missing, shape_errors, pairs, used = [], [], [], set()
    for slot in slots:
        if slot.key not in tensors:
            missing.append(slot.key)
            continue
        used.add(slot.key)
        source = tensors[slot.key]
        want = tuple(slot.variable.shape)
        try:
            value = slot.transform.to_keras(source)
            ok = tuple(value.shape) == want
        except ValueError:
            ok = False
        if not ok:
            shape_errors.append(f"{slot.key} {tuple(source.shape)} does not fit "
                                f"{slot.variable.path} {want} ({slot.transform.name})")
            continue
        pairs.append((slot, value))
    unused = sorted(set(tensors) - used)
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights have no checkpoint tensor, in "
                        f"{_by_group(missing)}: " + _listing(missing))
    if shape_errors:
        problems.append(f"{len(shape_errors)} shapes do not fit: " + _listing(shape_errors))
    if unused:
        problems.append(f"{len(unused)} checkpoint tensors match no model weight, in "
                        f"{_by_group(unused)}: "
                        + _listing([f"{k} {tuple(tensors[k].shape)}" for k in unused]))
    if problems:
        arch = model.config.architecture
        raise DetectorCheckpointError(
            f"{checkpoint.source} does not fit the {ARCHITECTURE_NAMES.get(arch, arch)} "
            "detector: " + " | ".join(problems))
    return pairs


def load_mmdet_state_dict(model, state_dict, *, experiment: str | None = None,
                          source: str = "the state dict") -> LoadReport:
    """Fill the built detector `model` from a mmdetection state dict (key -> NumPy array,
    optionally wrapped in `{"state_dict": ...}`, or an `MMDetCheckpoint`); strict.

    The architecture is checked first (a Faster R-CNN file for a Mask R-CNN model is named
    as such), then every variable is mapped; nothing is assigned unless everything fits.
    """
    from keras_res2net.detection import configs

    checkpoint = (state_dict if isinstance(state_dict, MMDetCheckpoint)
                  else MMDetCheckpoint.from_state_dict(state_dict, source=source))
    check_architecture(checkpoint, model.config, experiment, configs.list_experiments())
    pairs = map_checkpoint(model, checkpoint)
    for slot, value in pairs:
        slot.variable.assign(value.astype(slot.variable.dtype, copy=False))
    return LoadReport(layout="mmdetection", assigned=len(pairs),
                      set_aside=dict(checkpoint.set_aside))


def to_mmdet_state_dict(model, *, counters: bool = True) -> dict[str, np.ndarray]:
    """The exact inverse of loading: `model`'s weights under mmdetection keys and layouts.

    `counters=True` adds BatchNorm's `num_batches_tracked` (int64 zeros), as a saved
    PyTorch state dict has them.
    """
    state = {}
    for slot in plan(model):
        state[slot.key] = np.ascontiguousarray(slot.transform.to_mmdet(
            np.asarray(slot.variable.numpy())))
        if counters and slot.key.endswith(".running_var"):
            state[slot.key[: -len("running_var")] + "num_batches_tracked"] = np.zeros(
                (), np.int64)
    return state
