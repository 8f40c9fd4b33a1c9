"""Resolve the `weights=` argument: None, "imagenet", a Keras `.weights.h5` or a checkpoint.

A checkpoint is opened (and its layout detected) before the model is built, because the layout
decides one architectural detail: mmdetection's Res2Net has no stage pool at stride 1.
Converted `.weights.h5` files carry the same facts as HDF5 attributes (`ARCH_ATTR`).
"""

from __future__ import annotations

import json
import logging
import os

import keras

from keras_res2net import variants
from keras_res2net.checkpoints import assign_state_dict, normalize_state_dict, read_state_dict
from keras_res2net.checkpoints.reader import is_torch_checkpoint
from keras_res2net.cli_errors import UsageError

LOGGER = logging.getLogger(__name__)
CACHE_ENV = "KERAS_RES2NET_HOME"
ARCH_ATTR = "keras_res2net_arch"


def cache_dir() -> str:
    """Where converted ImageNet weights live: $KERAS_RES2NET_HOME, else $KERAS_HOME/res2net."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "res2net")


def cached_weights_path(variant: str) -> str:
    return os.path.join(cache_dir(), f"{variant}.weights.h5")


def imagenet_missing_message(spec: variants.VariantSpec) -> str:
    target = cached_weights_path(spec.name)
    source = spec.checkpoint_url or f"the checkpoint listed at {variants.OFFICIAL_REPO}"
    filename = (spec.checkpoint_url or "CHECKPOINT.pth").rsplit("/", 1)[-1]
    return (
        f"weights='imagenet' for {spec.name}: no converted weights at {target}. The published "
        "weights (CC BY-NC-SA 4.0) are not redistributed and nothing is downloaded at run time. "
        f"Download {source} yourself, then convert it once:\n"
        f"  python -m keras_res2net.convert {filename} {target} --model {spec.name}\n"
        f"(set {CACHE_ENV} to use another cache folder).")


class TorchWeights:
    """A PyTorch checkpoint in official, timm or mmdetection layout."""

    def __init__(self, path: str):
        self.path = path
        self.checkpoint = normalize_state_dict(read_state_dict(path))
        self.layout = self.checkpoint.layout
        self.report = None

    def check_head(self, include_top: bool, classes: int) -> None:
        if include_top and not self.checkpoint.has_head:
            raise ValueError(
                f"{self.path} is a backbone-only checkpoint ({self.layout} layout, no 'fc' "
                "classifier): build the model with include_top=False.")
        if include_top:
            found = self.checkpoint.tensors["fc.weight"].shape[0]
            if found != classes:
                raise ValueError(f"{self.path} has a {found}-class classifier but classes="
                                 f"{classes}: pass classes={found}, or include_top=False.")

    def load_into(self, model: keras.Model) -> None:
        optional = {r"^fc\.": "classifier unused: the model has no top"}
        if self.layout == "dla":
            # The official DLA code builds project layers in multi-level trees that its
            # forward pass never calls; timm dropped them (see timm's DlaTree note).
            optional[r"\.project\."] = "never used by the reference forward pass"
        self.report = assign_state_dict(model, self.checkpoint.tensors, layout=self.layout,
                                        set_aside=self.checkpoint.set_aside,
                                        optional=optional)
        LOGGER.info("%s: %s", self.path, self.report.summary())


class KerasWeights:
    """A `.weights.h5` file, from `model.save_weights` or from `keras_res2net.convert`."""

    layout = "keras"

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file {path!r} does not exist.")
        if os.path.getsize(path) == 0:
            raise UsageError(f"{path} is not a valid .weights.h5 file (an empty file; "
                             "truncated or corrupt?).")
        self.path = path
        self.arch = read_arch_attr(path)
        if self.arch and not self.arch.get("stage_pool", True):
            self.layout = "mmdet"

    def check_head(self, include_top: bool, classes: int) -> None:
        if self.arch and include_top and not self.arch["include_top"]:
            raise ValueError(f"{self.path} holds backbone weights only: use include_top=False.")
        if self.arch and include_top and self.arch["classes"] != classes:
            raise ValueError(f"{self.path} has a {self.arch['classes']}-class classifier but "
                             f"classes={classes}.")

    def load_into(self, model: keras.Model) -> None:
        has_top = any(layer.name == "fc" for layer in model.layers)
        if not self.arch or has_top == self.arch["include_top"]:
            check_fits(self.path, model)
            try:
                model.load_weights(self.path)
            except ValueError as err:  # Keras' message lists tensor values: keep its first line
                first = str(err).strip().splitlines()[0][:300]
                raise UsageError(f"{self.path} does not fit model {model.name}: {first}") from err
            return
        # The file has a classifier the model lacks: load into a donor, copy by layer name.
        from keras_res2net.models import build_res2net

        donor = build_res2net(variants.VariantSpec(**self.arch["spec"]), include_top=True,
                              classes=self.arch["classes"], classifier_activation=None,
                              stage_pool=self.arch.get("stage_pool", True))
        donor.load_weights(self.path)
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(donor.get_layer(layer.name).get_weights())


def _open_h5(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        what = "an empty file" if size == 0 else f"{size} bytes, no HDF5 signature"
        raise UsageError(f"{path} is not a valid .weights.h5 file ({what}; truncated or "
                         "corrupt?).") from err


def _shapes_in_file(path: str) -> dict[str, list[tuple]] | None:
    """{layer name: shapes of its saved variables} of a Keras `.weights.h5`, None if the file
    is not laid out by layer name (then Keras' own loader decides)."""
    with _open_h5(path) as handle:
        layers = handle.get("layers")
        if layers is None:
            return None
        shapes = {}
        for name, group in layers.items():
            variables = group.get("vars")
            if variables is not None and len(variables):
                shapes[name] = [tuple(variables[key].shape) for key in sorted(variables, key=int)]
        return shapes


def check_fits(path: str, model: keras.Model) -> None:
    """UsageError naming `path` and what does not fit if its tensors cannot load into `model`
    (another variant, depth, width or class count); silent when they can."""
    saved = _shapes_in_file(path)
    if saved is None:
        return
    # Keras stores a functional model's layers under class-based keys (conv2d, conv2d_1, ...)
    # in model.layers order; map them back to layer names for the message.
    from keras.src.utils.naming import to_snake_case

    used: dict[str, int] = {}
    wanted, names = {}, {}
    for layer in model.layers:
        key = to_snake_case(layer.__class__.__name__)
        used[key] = used.get(key, -1) + 1
        key = f"{key}_{used[key]}" if used[key] else key
        if layer.weights:
            wanted[key] = [tuple(w.shape) for w in layer.weights]
            names[key] = layer.name
    differ = [key for key in wanted if key in saved
              and sorted(saved[key]) != sorted(wanted[key])]
    missing = [key for key in wanted if key not in saved]
    extra = [key for key in saved if key not in wanted
             and not (key.startswith("dense") and "fc" not in names.values())]  # unused head
    if not (differ or missing or extra):
        return
    if [names[key] for key in differ] == ["fc"] and not (missing or extra):
        found, classes = saved[differ[0]][0][-1], wanted[differ[0]][0][-1]
        raise UsageError(f"{path} has a {found}-class classifier but model {model.name} has "
                         f"{classes} classes: pass classes={found}, or load it without the top.")
    parts = []
    if differ:
        key = differ[0]
        parts.append(f"{len(differ)} layers have other shapes (e.g. {names[key]}: file "
                     f"{saved[key][0]}, model {wanted[key][0]})")
    if missing:
        parts.append(f"{len(missing)} model layers are not in the file (e.g. "
                     f"{names[missing[0]]})")
    if extra:
        parts.append(f"{len(extra)} layers in the file are not in the model (e.g. {extra[0]})")
    raise UsageError(f"{path} does not fit model {model.name}: {'; '.join(parts)}. It was saved "
                     "from another variant, depth (--layers), width or class count.")


def read_arch_attr(path: str) -> dict | None:
    with _open_h5(path) as handle:
        raw = handle.attrs.get(ARCH_ATTR)
    if raw is None:
        return None
    arch = json.loads(raw)
    arch["spec"]["layers"] = tuple(arch["spec"]["layers"])
    arch["spec"]["aliases"] = tuple(arch["spec"]["aliases"])
    return arch


def open_weights(weights, spec: variants.VariantSpec):
    """A weight source for `weights`, or None for random initialisation."""
    if weights is None:
        return None
    if isinstance(weights, (TorchWeights, KerasWeights)):  # already opened (the converter)
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, 'imagenet' or a file path; got {weights!r}.")
    weights = os.fspath(weights)
    if weights == "imagenet":
        if spec.family == "cifar":
            raise ValueError(f"weights='imagenet': {spec.name} is a CIFAR-100 model of the "
                             "paper with no published weights; train it (train/imagenet.py "
                             "--data cifar100) and pass its model.keras or a .weights.h5.")
        path = cached_weights_path(spec.name)
        if variants.VARIANTS.get(spec.name) != spec:
            raise ValueError("weights='imagenet' needs a published variant as it stands in the "
                             f"table; this one has modified knobs: {spec}.")
        if not os.path.isfile(path):
            raise FileNotFoundError(imagenet_missing_message(spec))
        return KerasWeights(path)
    if weights.endswith(".h5"):
        return KerasWeights(weights)
    if is_torch_checkpoint(weights):
        return TorchWeights(weights)
    raise ValueError(
        f"Unsupported weights {weights!r}: use None, 'imagenet', a Keras .weights.h5 file or a "
        "PyTorch checkpoint (.pth, .pt, .bin, .safetensors).")
