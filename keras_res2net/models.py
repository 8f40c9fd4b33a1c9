"""Res2Net models in the `keras.applications` calling convention.

`build_res2net` is the one builder; `create_model(name)` and the named constructors
(`Res2Net50`, `Res2Net101V1b`, ...) read the variant table and pass the Res2Net knobs through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from keras_res2net import variants
from keras_res2net.cifar import CIFAR_CLASSES, CIFAR_INPUT_SIZE, cifar_trunk
from keras_res2net.trunks import dla_trunk, resnet_trunk

PYRAMID_LEVELS = ("P2", "P3", "P4", "P5")
_POOLINGS = (None, "avg", "max")


def _check_input_shape(input_shape, include_top: bool, family: str) -> tuple:
    if input_shape is None:
        size = CIFAR_INPUT_SIZE if family == "cifar" else 224
        return (size, size, 3) if include_top else (None, None, 3)
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels) (channels last); got {input_shape!r}.")
    if shape[-1] is None or shape[-1] < 1:
        raise ValueError(f"input_shape needs a known channel count; got {input_shape!r}.")
    for size in shape[:2]:
        if size is not None and size < 32:
            raise ValueError(
                f"input_shape {input_shape!r} is too small: height and width must be >= 32 "
                "(the network downsamples by 32).")
        if family == "dla" and size is not None and size % 32:
            raise ValueError(
                f"input_shape {input_shape!r}: DLA variants need height and width divisible by "
                "32 (their max-pool and strided-conv branches disagree otherwise, as in the "
                "reference).")
    return shape


def _check_head_args(pooling, classifier_activation, classes: int) -> None:
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of None, 'avg', 'max'; got {pooling!r}.")
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive integer; got {classes!r}.")
    if classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"classifier_activation {classifier_activation!r} is not a Keras activation "
                "(use None for logits, or e.g. 'softmax').") from err


def build_res2net(
    spec: variants.VariantSpec,
    *,
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
    stage_pool: bool | None = None,
    fuse_stage_convs: bool = False,
) -> keras.Model:
    """Build the variant `spec` (after any knob overrides) and load `weights`.

    `stage_pool=False` reproduces mmdetection's Res2Net, whose stride-1 stage block (layer1)
    concatenates its last split without the 3x3 average pool; `None` (the default) means
    "auto": False for a mmdetection checkpoint in `weights`, else True (the official and timm
    Res2Net). An explicit bool always wins, e.g. for the detection backbones, which are built
    without weights and then filled from a mmdetection detector checkpoint.
    `fuse_stage_convs=True` runs each stage block's independent 3x3 convs as one
    grouped conv (same weights and outputs; faster where grouped convs are native, slower on
    TensorFlow/CPU, hence off by default).
    """
    from keras_res2net import weights as weights_lib  # avoids an import cycle

    if classes is None:  # the variant's own: ImageNet's 1000, CIFAR-100's 100
        classes = CIFAR_CLASSES if spec.family == "cifar" else 1000
    _check_head_args(pooling, classifier_activation, classes)
    if spec.scale < 1 or spec.base_width < 1 or spec.cardinality < 1:
        raise ValueError(f"scale, base_width and cardinality must be >= 1; got {spec}.")
    checkpoint = weights_lib.open_weights(weights, spec)
    if stage_pool is None:
        stage_pool = not (checkpoint is not None and checkpoint.layout == "mmdet")
    if checkpoint is not None:
        checkpoint.check_head(include_top, classes)

    shape = _check_input_shape(input_shape, include_top, spec.family)
    if input_tensor is None:
        img_input = layers.Input(shape=shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        img_input = input_tensor
    else:
        img_input = layers.Input(tensor=input_tensor, shape=shape, name="image")

    if spec.family == "dla":
        features = dla_trunk(img_input, levels=spec.layers, channels=variants.DLA60_CHANNELS,
                             base_width=spec.base_width, scale=spec.scale,
                             cardinality=spec.cardinality, fuse_stage_convs=fuse_stage_convs)
    elif spec.family == "cifar":
        features = cifar_trunk(img_input, layers_per_stage=spec.layers,
                               base_width=spec.base_width, scale=spec.scale,
                               cardinality=spec.cardinality, fuse_stage_convs=fuse_stage_convs)
    else:
        features = resnet_trunk(img_input, layers_per_stage=spec.layers,
                                base_width=spec.base_width, scale=spec.scale,
                                cardinality=spec.cardinality, deep_stem=spec.deep_stem,
                                avg_down=spec.avg_down, stage_pool=stage_pool,
                                fuse_stage_convs=fuse_stage_convs)
    x = list(features.values())[-1]  # the last stage (P5; P3 for the CIFAR trunk)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="fc")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = img_input
    if input_tensor is not None:
        sources = keras.utils.get_source_inputs(input_tensor)
        inputs = sources[0] if len(sources) == 1 else sources
    model = keras.Model(inputs, x, name=name or spec.name)
    if checkpoint is not None:
        checkpoint.load_into(model)
    return model


def resolve_spec(name: str, **overrides) -> variants.VariantSpec:
    """The table's spec for `name`, with Res2Net knobs (`base_width`, `scale`, `cardinality`,
    `layers`, `v1b`) replaced where given (None means: keep the table's value)."""
    spec = variants.get_variant(name)
    v1b = overrides.pop("v1b", None)
    changes = {key: value for key, value in overrides.items() if value is not None}
    if "layers" in changes:
        changes["layers"] = tuple(changes["layers"])
        expected = len(spec.layers)
        if len(changes["layers"]) != expected:
            raise ValueError(f"layers for {spec.name} needs {expected} entries; "
                             f"got {changes['layers']!r}.")
    if v1b is not None:
        if spec.family != "resnet":
            raise ValueError("v1b (deep stem, average-pool shortcut) applies to ResNet-style "
                             f"ImageNet Res2Nets, not to {spec.family.upper()} variants.")
        changes.update(deep_stem=bool(v1b), avg_down=bool(v1b))
    if not changes:
        return spec
    # A modified architecture no longer matches the published reference numbers.
    changes.update(reference_params=None, reference_top1=None, checkpoint_url=None)
    return dataclasses.replace(spec, **changes)


def create_model(model_name: str, *, features_only: bool = False, base_width: int | None = None,
                 scale: int | None = None, cardinality: int | None = None,
                 layers: tuple | None = None, v1b: bool | None = None,
                 out_indices: Sequence[int] | None = None, precision: str = "fp32",
                 **kwargs) -> keras.Model:
    """Build any variant by official or timm name (`list_models()` lists them).

    `features_only=True` returns the multi-scale feature model (see `pyramid_model`);
    `out_indices` picks its feature levels as timm does (see `feature_levels`).
    `precision="bf16"` returns the model computing in bfloat16 for inference
    (`keras_res2net.with_precision`: Keras' `mixed_bfloat16`, float32 weights and head); on a
    CPU without native bfloat16 a `UserWarning` says why and the model stays float32.
    Other keyword arguments are those of `keras.applications` constructors.
    """
    from keras_res2net.precision import resolve_precision, with_precision

    precision = resolve_precision(precision, what="precision")
    spec = resolve_spec(model_name, base_width=base_width, scale=scale,
                        cardinality=cardinality, layers=layers, v1b=v1b)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature levels: it needs features_only=True.")
    if out_indices is not None:  # refused before the (slow) build
        select_levels(feature_level_names(spec.family), out_indices, spec.name)
    if features_only:
        kwargs.setdefault("include_top", False)
        if kwargs["include_top"]:
            raise ValueError("features_only=True builds a backbone: include_top must be False.")
        model = pyramid_model(build_res2net(spec, **kwargs), out_indices=out_indices)
    else:
        model = build_res2net(spec, **kwargs)
    return model if precision == "fp32" else with_precision(model, precision)


def pyramid_layer_names(model: keras.Model) -> dict[str, str]:
    """Names of the layers whose outputs are P2..P5 (stride 4..32) in a Res2Net model.

    Functional models list layers in topological order, so a stage's output is its last block
    output (`layerN_*_out`), and a DLA level's output its last root (`levelN_*root_relu`).
    """
    names = [layer.name for layer in model.layers]
    is_dla = "base_layer_0" in names
    found = {}
    for index, level in enumerate(PYRAMID_LEVELS):
        prefix, suffix = (f"level{index + 2}_", "root_relu") if is_dla else (
            f"layer{index + 1}_", "_out")
        candidates = [name for name in names if name.startswith(prefix) and name.endswith(suffix)]
        if not candidates:
            raise ValueError(f"{model.name} has no {prefix}* outputs: not a Res2Net model.")
        found[level] = candidates[-1]
    return found


def feature_level_names(family: str) -> list[str]:
    """Feature levels ("P<n>", stride 2**n) in timm's `feature_info` order: ResNet-style P1
    (the stem's ReLU, timm's `act1`), P2..P5 (layer1..4); DLA P0 (`level0`), P1..P5."""
    return (["P0", "P1"] if family == "dla" else ["P1"]) + list(PYRAMID_LEVELS)


def feature_levels(model: keras.Model) -> dict[str, str]:
    """Every feature level of a Res2Net model (`feature_level_names`) -> its layer name."""
    names = {layer.name for layer in model.layers}
    if "base_layer_0" in names:
        early = {"P0": "level0_0_relu", "P1": "level1_0_relu"}
    else:
        early = {"P1": "relu"}
    return {**early, **pyramid_layer_names(model)}


def select_levels(levels: Sequence[str], out_indices: Sequence[int], name: str) -> list[str]:
    """The levels timm's `out_indices` name (negative indices count from the end); a
    ValueError naming the index and the levels there are for anything else."""
    count = len(levels)
    chosen = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"out_indices must be integers; got {tuple(out_indices)!r}.")
        if not -count <= index < count:
            strides = ", ".join(f"{i}: stride {2 ** int(key[1:])}" for i, key in enumerate(levels))
            raise ValueError(f"out_indices {tuple(out_indices)!r}: index {index} is out of range; "
                             f"{name} has {count} feature levels ({strides}).")
        level = levels[index]
        if level in chosen:
            raise ValueError(f"out_indices {tuple(out_indices)!r} names level {level} twice.")
        chosen.append(level)
    if not chosen:
        raise ValueError("out_indices is empty: name at least one feature level.")
    return chosen


def pyramid_model(model: keras.Model, out_indices: Sequence[int] | None = None) -> keras.Model:
    """A functional model mapping the image to `{"P2": ..., "P5": ...}` (strides 4 to 32).

    The keras-hub `pyramid_outputs` contract the detection heads consume; it shares weights
    with `model` and saves to `.keras` like any functional model. `out_indices` picks levels
    by index into `feature_levels(model)` as timm's `features_only` does (ResNet-style:
    0 = stride 2 stem ... 4 = stride 32; DLA: 0 = stride 1 ... 5 = stride 32; negative
    indices count from the end), keyed "P<n>".
    """
    if out_indices is None:
        layers_by_level = pyramid_layer_names(model)
    else:
        levels = feature_levels(model)
        layers_by_level = {level: levels[level]
                           for level in select_levels(list(levels), out_indices, model.name)}
    outputs = {level: model.get_layer(layer).output for level, layer in layers_by_level.items()}
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_pyramid")


def _constructor(variant: str, doc: str, **default_knobs):
    def constructor(include_top: bool = True, weights: str | None = None, input_tensor=None,
                    input_shape=None, pooling: str | None = None, classes: int | None = None,
                    classifier_activation: str | None = "softmax", name: str | None = None,
                    **res2net_knobs) -> keras.Model:
        knobs = {**default_knobs, **res2net_knobs}
        return create_model(variant, include_top=include_top, weights=weights,
                            input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
                            classes=classes, classifier_activation=classifier_activation,
                            name=name, **knobs)

    constructor.__doc__ = (
        f"{doc}\n\nBuilt from `{variant}`. Res2Net knobs: base_width, scale, cardinality, "
        "layers, v1b. Other arguments as in keras.applications (classes: 1000; 100 for the "
        "CIFAR models).")
    return constructor


Res2Net50 = _constructor("res2net50_26w_4s", "Res2Net-50 (v1 stem), 26w x 4s by default.")
Res2Net101 = _constructor("res2net101_26w_4s", "Res2Net-101 (v1 stem), 26w x 4s by default.")
Res2Net152 = _constructor("res2net152_v1b_26w_4s", "Res2Net-152 (v1 stem, 3-8-36-3 blocks).",
                          v1b=False)
Res2Net50V1b = _constructor("res2net50_v1b_26w_4s", "Res2Net-50-v1b (deep stem, avg-down).")
Res2Net101V1b = _constructor("res2net101_v1b_26w_4s", "Res2Net-101-v1b (deep stem, avg-down).")
Res2Net152V1b = _constructor("res2net152_v1b_26w_4s", "Res2Net-152-v1b (deep stem, avg-down).")
Res2Net200V1b = _constructor("res2net200_v1b_26w_4s", "Res2Net-200-v1b (deep stem, avg-down).")
Res2NeXt50 = _constructor("res2next50", "Res2NeXt-50 (4w x 4s x 8 groups).")
Res2NetDLA60 = _constructor("dla60_res2net", "DLA-60 with Res2Net blocks (28w x 4s).")
Res2NeXtDLA60 = _constructor("dla60_res2next", "DLA-60 with Res2NeXt blocks (8 groups, 4s).")
ResNeXt29 = _constructor("resnext29_8c_64w", "ResNeXt-29 8c x 64w for 32x32 CIFAR images (the "
                         "paper's CIFAR-100 baseline); cardinality=16 gives 16c x 64w.")
Res2NeXt29 = _constructor("res2next29_6c_24w_4s", "Res2NeXt-29 for 32x32 CIFAR images, "
                          "6c x 24w x 4s by default (the paper's Table 4 via the knobs).")
