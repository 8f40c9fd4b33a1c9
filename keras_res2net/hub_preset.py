"""Write a converted Res2Net as a keras-hub preset folder, atomically and verified.

`write_preset(model, ...)` takes a Keras Res2Net built from a checkpoint (`build_res2net` with
the checkpoint's head, logits) and writes, with keras-hub's own `save_to_preset`:
config.json + model.weights.h5 (the `Res2NetBackbone`), metadata.json, preprocessor.json +
image_converter.json (the checkpoint's eval transform), and, when the checkpoint has a
classifier, task.json + task.weights.h5 (`Res2NetImageClassifier`). The folder is written under
a temporary name beside `preset_dir`, reloaded with `keras_hub.models.*.from_preset` and
compared with `model` before it is renamed into place, so `preset_dir` is never half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import keras
import numpy as np

from keras_res2net.cli_errors import (
    UsageError,
    WorkError,
    current_umask,
    os_error_message,
    remove_stale,
)
from keras_res2net.variants import PretrainedConfig, VariantSpec, get_variant

TEMP_PREFIX = ".converting-preset-"
OLD_PREFIX = ".replaced-preset-"


def check_destination(preset_dir: str, force: bool) -> None:
    """UsageError if `preset_dir` is a file, or exists without --force, or is a non-empty folder
    that is not a keras-hub preset (never replaced, even with --force)."""
    if os.path.isfile(preset_dir):
        raise UsageError(f"--preset {preset_dir} is a file; a preset is a folder.")
    if not os.path.isdir(preset_dir):
        return
    if not force:
        raise UsageError(f"--preset {preset_dir} exists; pass --force to replace it.")
    entries = os.listdir(preset_dir)
    if entries and "config.json" not in entries:
        raise UsageError(f"--preset {preset_dir} is a non-empty folder without config.json, not "
                         "a keras-hub preset: refusing to replace it.")


def spec_knobs(spec: VariantSpec) -> dict:
    """The `Res2NetBackbone` knobs that turn the table's variant into `spec` (none for a
    published variant as it stands)."""
    table = get_variant(spec.name)
    knobs = {key: getattr(spec, key) for key in ("layers", "base_width", "scale", "cardinality")
             if getattr(spec, key) != getattr(table, key)}
    if (spec.deep_stem, spec.avg_down) != (table.deep_stem, table.avg_down):
        knobs["v1b"] = spec.is_v1b
    return knobs


def build_classifier(model: keras.Model, spec: VariantSpec, pretrained: PretrainedConfig, *,
                     stage_pool: bool = True):
    """`model`'s weights as a keras-hub task: a `Res2NetImageClassifier` (logits) when `model`
    has the `fc` head, else the `Res2NetBackbone`; the preprocessor is returned separately."""
    from keras_res2net.hub import Res2NetBackbone
    from keras_res2net.hub_classifier import (
        Res2NetImageClassifier,
        Res2NetImageClassifierPreprocessor,
        Res2NetImageConverter,
    )

    backbone = Res2NetBackbone(spec.name, stage_pool=stage_pool, **spec_knobs(spec))
    values = {weight.path: weight for weight in model.weights}
    missing = [weight.path for weight in backbone.weights if weight.path not in values]
    if missing:
        raise ValueError(f"{model.name} does not match Res2NetBackbone({spec.name}): no "
                         f"{missing[0]} ({len(missing)} weights missing).")
    for weight in backbone.weights:
        weight.assign(values[weight.path])
    converter = Res2NetImageConverter.from_pretrained_config(pretrained)
    preprocessor = Res2NetImageClassifierPreprocessor(image_converter=converter)
    if not _has_head(model):
        return backbone, preprocessor
    fc = model.get_layer("fc")
    classifier = Res2NetImageClassifier(backbone=backbone, num_classes=int(fc.units),
                                        preprocessor=preprocessor, activation=None)
    classifier.output_dense.kernel.assign(fc.kernel)
    classifier.output_dense.bias.assign(fc.bias)
    return classifier, preprocessor


def _has_head(model: keras.Model) -> bool:
    return "fc" in {layer.name for layer in model.layers}


def _verify(preset: str, model: keras.Model, size: int) -> None:
    """Reload `preset` the way a user would and compare its raw outputs (logits, or the
    backbone's stride-32 features) with `model`'s, at its input size (else `size`)."""
    import keras_hub

    if _has_head(model):
        loaded = keras_hub.models.ImageClassifier.from_preset(preset)
    else:
        loaded = keras_hub.models.Backbone.from_preset(preset)
    height, width = (side or size for side in model.input_shape[1:3])
    images = np.random.default_rng(0).standard_normal((1, height, width, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(loaded(images, training=False))
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    diff = float(np.abs(got - expected).max())
    if diff > 1e-5:
        raise WorkError(f"{preset}: the reloaded preset differs from the converted model "
                        f"({diff:.2e}); nothing written.")


def write_preset(model: keras.Model, spec: VariantSpec, pretrained: PretrainedConfig,
                 preset_dir: str, *, force: bool = False, stage_pool: bool = True,
                 verify_size: int = 64) -> list[str]:
    """Write `model` as the keras-hub preset folder `preset_dir` (see the module docstring);
    returns the file names written."""
    check_destination(preset_dir, force)
    parent = os.path.dirname(os.path.abspath(preset_dir))
    remove_stale(parent, (f"{TEMP_PREFIX}*", f"{OLD_PREFIX}*"), "keras_res2net.convert")
    task, preprocessor = build_classifier(model, spec, pretrained, stage_pool=stage_pool)
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
    except OSError as err:
        raise WorkError(os_error_message(err, preset_dir)) from err
    try:
        try:
            task.save_to_preset(temporary)
            if not _has_head(model):  # a backbone: its preprocessor on its own
                preprocessor.save_to_preset(temporary)
        except OSError as err:
            raise WorkError(os_error_message(err, preset_dir)) from err
        _verify(temporary, model, verify_size)
        written = sorted(os.listdir(temporary))
        os.chmod(temporary, 0o777 & ~current_umask())
        _replace_folder(temporary, preset_dir)
    finally:
        with contextlib.suppress(OSError):
            if os.path.isdir(temporary):
                shutil.rmtree(temporary)
    return written


def _replace_folder(source: str, destination: str) -> None:
    """Rename `source` onto `destination`; an existing `destination` is moved aside first
    and deleted only once the new folder is in place."""
    old = None
    try:
        if os.path.isdir(destination):
            old = tempfile.mkdtemp(prefix=OLD_PREFIX, dir=os.path.dirname(
                os.path.abspath(destination)))
            os.rmdir(old)
            os.rename(destination, old)
        os.rename(source, destination)
    except OSError as err:
        if old and not os.path.exists(destination):
            with contextlib.suppress(OSError):
                os.rename(old, destination)
        raise WorkError(os_error_message(err, destination)) from err
    if old:
        shutil.rmtree(old, ignore_errors=True)
