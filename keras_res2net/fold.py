"""Fold inference-mode BatchNorm into the convolution before it: conv + bias, no BN layer.

At inference a BatchNormalization is a per-channel affine map, `y = x * s + t` with
`s = gamma / sqrt(var + eps)` and `t = beta - mean * s`. When it directly follows a
convolution whose output nothing else reads, `conv(x) * s + t` is the same convolution with
kernel `W * s` (over output channels) and bias `b * s + t`, so the BN layer and its arithmetic
over the whole feature map disappear. Res2Net runs a BN after every narrow 3x3 conv, which
runtimes do not always fuse: folding saves time on Keras/TF, TFLite and ONNX alike
(docs/speed.md).

`fold_batchnorm(model)` rebuilds the functional graph generically with
`keras.models.clone_model` (nested functional models too): every other layer is copied with
its weights; a BN that cannot fold (after a concatenation, an activation, a shared or
multiply-read conv, a transposed conv...) is kept. The result is a plain functional model that
saves to `.keras` and loads with `safe_mode=True` on every backend. The folded model is for
inference only: it no longer has BN statistics to update.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections import Counter
from collections.abc import Callable

import keras
import numpy as np

__all__ = ["FoldPlan", "fold_batchnorm", "plan_batchnorm_folds"]

_LOG = logging.getLogger(__name__)
# Kernels whose last axis is the output channel (grouped convs included).
_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_TRANSPOSED = tuple(getattr(keras.layers, name) for name in
                    ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"))
_DEPTHWISE = tuple(getattr(keras.layers, name) for name in
                   ("DepthwiseConv1D", "DepthwiseConv2D") if hasattr(keras.layers, name))
_SEPARABLE = tuple(getattr(keras.layers, name) for name in
                   ("SeparableConv1D", "SeparableConv2D") if hasattr(keras.layers, name))


@dataclasses.dataclass
class FoldPlan:
    """Which BatchNorm layers fold into which convolution, and why the others stay."""

    folds: dict[str, str]  # conv layer name -> BN layer name folded into it
    kept: dict[str, str]  # BN layer name -> why it cannot fold
    batchnorms: int  # BN layers in the model, nested models included
    pairs: dict[int, tuple] = dataclasses.field(default_factory=dict, repr=False)  # by id(conv)

    def summary(self, model_name: str) -> str:
        text = (f"{model_name}: folded {len(self.folds)} of {self.batchnorms} BatchNorm layers "
                "into the convolution before them")
        if self.kept:
            reasons = Counter(self.kept.values())
            text += "; kept " + ", ".join(f"{n} ({why})" for why, n in reasons.items())
        return text + "."


def _is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def _is_functional(layer) -> bool:
    """A functional model (keras.Model(inputs, outputs) or a subclass built that way)."""
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") and not \
        isinstance(layer, keras.Sequential)


def _graphs(model: keras.Model):
    """`model` and every functional model nested in it."""
    yield model
    for layer in model.layers:
        if _is_functional(layer):
            yield from _graphs(layer)


def _channel_axis(conv, rank: int) -> int:
    if getattr(conv, "data_format", "channels_last") == "channels_first":
        return 1
    return rank - 1


def _why_not_foldable(conv, bn, tensor, calls: Counter, reads: Counter,
                      output_ids: set) -> str | None:
    """None when `bn` (reading `tensor`, the output of `conv`) can fold into `conv`."""
    if isinstance(conv, _TRANSPOSED + _SEPARABLE) or not isinstance(
            conv, _CONV_TYPES + _DEPTHWISE):
        return "not after a convolution"
    if getattr(conv.activation, "__name__", "linear") != "linear":
        return "after an activation"
    if getattr(conv, "quantization_mode", None) or getattr(conv, "lora_enabled", False):
        return "quantized or LoRA conv"
    if calls[id(conv)] != 1 or calls[id(bn)] != 1:
        return "shared layer"
    if reads[id(tensor)] != 1 or id(tensor) in output_ids:
        return "conv output read elsewhere"
    rank = len(tensor.shape)
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    if [axis % rank for axis in axes] != [_channel_axis(conv, rank)]:
        return "normalises another axis"
    return None


def plan_batchnorm_folds(model: keras.Model) -> FoldPlan:
    """Find every (conv -> BN) pair where the BN is the conv's only reader, in `model` and in
    the functional models nested in it."""
    plan = FoldPlan({}, {}, 0)
    for graph in _graphs(model):
        calls: Counter = Counter()
        reads: Counter = Counter()
        bn_inputs = {}
        for nodes in graph._nodes_by_depth.values():
            for node in nodes:
                if node.is_input:
                    continue
                calls[id(node.operation)] += 1
                for tensor in node.input_tensors:
                    reads[id(tensor)] += 1
                if _is_batchnorm(node.operation):
                    bn_inputs[id(node.operation)] = node.input_tensors
        output_ids = {id(t) for t in keras.tree.flatten(graph.outputs)}
        for layer in graph.layers:
            if not _is_batchnorm(layer):
                continue
            plan.batchnorms += 1
            inputs = bn_inputs.get(id(layer), [])
            if len(inputs) != 1:
                plan.kept[layer.name] = "not called once on one tensor"
                continue
            source = inputs[0]._keras_history.operation
            reason = _why_not_foldable(source, layer, inputs[0], calls, reads, output_ids)
            if reason is None:
                plan.folds[source.name] = layer.name
                plan.pairs[id(source)] = (source, layer, inputs[0])
            else:
                plan.kept[layer.name] = reason
    return plan


def _folded_weights(conv, bn, tensor) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of `conv` followed by `bn` (inference mode), computed in float64."""
    channels = tensor.shape[_channel_axis(conv, len(tensor.shape))]
    ones, zeros = np.ones(channels), np.zeros(channels)
    gamma = keras.ops.convert_to_numpy(bn.gamma).astype(np.float64) if bn.scale else ones
    beta = keras.ops.convert_to_numpy(bn.beta).astype(np.float64) if bn.center else zeros
    mean = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
    variance = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(conv.bias).astype(np.float64) if conv.use_bias else zeros
    if isinstance(conv, _DEPTHWISE):  # (..., in, multiplier); output channel i * mult + m
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:  # (..., in / groups, out)
        kernel = kernel * scale
    return kernel, bias * scale + beta - mean * scale


def _training_problem(model: keras.Model, plan: FoldPlan) -> str | None:
    """Why folding would freeze BN statistics that are still meant to update, if it would."""
    if getattr(model, "optimizer", None) is None:
        return None
    trainable = [bn.name for _, bn, _ in plan.pairs.values() if bn.trainable]
    if not trainable:
        return None
    return (f"fold_batchnorm: {model.name!r} is compiled for training and {len(trainable)} of "
            f"its BatchNormalization layers are trainable (e.g. {trainable[0]!r}): their "
            "statistics still update in fit(), and folding freezes them. Fold after training "
            "(load with compile=False, or set trainable=False), or pass allow_training=True.")


def _clone_folded(graph: keras.Model, plan: FoldPlan) -> keras.Model:
    """`graph` rebuilt with `plan`'s BN layers folded away; nested functional models too."""
    folded_bns = {id(bn) for _, bn, _ in plan.pairs.values()}
    originals: dict[int, object] = {}

    def clone_layer(operation):
        if _is_functional(operation):
            clone = _clone_folded(operation, plan)
        else:
            config = operation.get_config()
            if id(operation) in plan.pairs:
                config["use_bias"] = True
            clone = operation.__class__.from_config(config)
            originals[id(clone)] = operation
        return clone

    def call_layer(clone, *args, **kwargs):
        original = originals.get(id(clone))
        if id(original) in folded_bns:
            return args[0]  # the folded conv's output already carries this BN
        outputs = clone(*args, **kwargs)
        if id(original) in plan.pairs:
            conv, bn, tensor = plan.pairs[id(original)]
            kernel, bias = _folded_weights(conv, bn, tensor)
            clone.kernel.assign(kernel.astype(clone.kernel.dtype))
            clone.bias.assign(bias.astype(clone.bias.dtype))
        elif getattr(original, "weights", None):
            clone.set_weights(original.get_weights())
        return outputs

    return keras.models.clone_model(graph, clone_function=clone_layer, call_function=call_layer)


def fold_batchnorm(model: keras.Model, *, allow_training: bool = False,
                   log: Callable[[str], None] | None = None) -> keras.Model:
    """A new functional model equal to `model` at inference, with every BatchNorm that directly
    follows a convolution folded into that convolution's kernel and bias.

    BN layers that cannot fold are kept (`plan_batchnorm_folds` says which and why); `log`
    (default: this module's logger, INFO) receives a one-line count. A model without
    BatchNorm is returned unchanged, with a warning. A model compiled for training whose BN
    layers are trainable raises ValueError unless `allow_training=True` (the folded model
    would silently stop updating statistics). `model` itself is not modified.
    """
    given = model
    if isinstance(model, keras.Sequential) and model.built:  # fold its functional twin
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not _is_functional(model):
        raise ValueError(f"fold_batchnorm needs a functional Keras model (keras.Model(inputs, "
                         f"outputs), or a built Sequential); got {type(model).__name__} "
                         f"{model.name!r}.")
    plan = plan_batchnorm_folds(model)
    if not plan.folds:
        why = ("has no BatchNormalization layer" if not plan.batchnorms else
               f"has no BatchNorm that can fold ({plan.summary(model.name)})")
        warnings.warn(f"fold_batchnorm: {model.name!r} {why}; returning it unchanged.",
                      stacklevel=2)
        return given
    problem = None if allow_training else _training_problem(model, plan)
    if problem:
        raise ValueError(problem)
    folded = _clone_folded(model, plan)
    (log or _LOG.info)(plan.summary(model.name))
    return folded
