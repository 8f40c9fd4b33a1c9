"""Convert a published mmdetection Res2Net detector into a Keras run folder.

    python -m keras_res2net.detection.convert CHECKPOINT --experiment NAME --output DIR
        [--force] [--verbose]

CHECKPOINT is a mmdetection 2.x or 3.x file (`.pth` needs PyTorch and is read with
`torch.load(weights_only=True)`; `.safetensors` needs no PyTorch), e.g. the published
`mask_rcnn_r2_101_fpn_2x_coco-17f061e8.pth`. NAME is a registered experiment
(`mask_rcnn_res2net101_fpn_coco`, `faster_rcnn_...`, `cascade_rcnn_...`,
`cascade_mask_rcnn_...`, `htc_...`) or an `experiment.json`. The backbone depth and widths,
the class count and the cascade's class-agnostic regression are read from the checkpoint's
shapes and recorded in the config. DIR receives `detector.weights.h5` and `experiment.json`
(the fully resolved config), which `keras_res2net.detection` prediction, evaluation and export
read. Both are written to a staging folder beside DIR, reloaded into a fresh detector and
compared with the converted weights, and only then moved into place: on any failure DIR is
left as it was. Exit status: 0 done, 1 the conversion failed, 2 a usage error (unknown
experiment, DIR exists and is not empty without --force).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from keras_res2net import variants
from keras_res2net.checkpoints.mapping import LoadReport
from keras_res2net.detection import configs
from keras_res2net.detection.mmdet_checkpoint import (
    ARCHITECTURE_NAMES,
    MMDetCheckpoint,
    check_architecture,
)

WEIGHTS_FILE = "detector.weights.h5"  # keras_res2net.detection.trainer.WEIGHTS


class UsageError(ValueError):
    """A problem with the command line itself (exit status 2)."""


@dataclasses.dataclass
class Conversion:
    """A converted detector with the config it was built from and what the load did."""

    model: object
    config: configs.ExperimentConfig
    experiment: str | None
    report: LoadReport
    checkpoint: MMDetCheckpoint
    notes: list[str]

    def summary(self, output: Path | None = None) -> str:
        model = self.config.model
        blocks = model.backbone.layers or variants.get_variant(model.backbone.name).layers
        arch = ARCHITECTURE_NAMES.get(model.architecture, model.architecture)
        if model.architecture == "htc" and not model.htc.semantic:
            arch = ARCHITECTURE_NAMES["htc_without_semantic"]
        reasons: dict[str, int] = {}
        for why in self.report.set_aside.values():
            reasons[why] = reasons.get(why, 0) + 1
        lines = [f"{self.checkpoint.source}: {arch}, R2-{3 * sum(blocks) + 2} backbone "
                 f"{tuple(blocks)}, {model.num_classes} classes"
                 + (f" (experiment {self.experiment})" if self.experiment else ""),
                 f"  {self.report.assigned} tensors used, {len(self.report.set_aside)} set aside"
                 + "".join(f"; {count} x {why}" for why, count in reasons.items())]
        lines += [f"  {note}" for note in self.notes]
        if output is not None:
            lines.append(f"  wrote {output / WEIGHTS_FILE} and {output / 'experiment.json'} "
                         "(reload verified)")
        return "\n".join(lines)


# -- config from the experiment and the checkpoint ----------------------------------------
def resolve_experiment(experiment) -> tuple[configs.ExperimentConfig, str | None]:
    """(a private copy of the config, its registered name or None)."""
    if isinstance(experiment, configs.ExperimentConfig):
        return copy.deepcopy(experiment), None
    name = str(experiment)
    if name.endswith(".json") and Path(name).is_file():
        from keras_res2net.detection.experiment_io import load_experiment

        return load_experiment(name), None
    if name not in configs.list_experiments():
        raise UsageError(f"unknown experiment {name!r}; registered: "
                         f"{', '.join(configs.list_experiments())}.")
    return configs.get_experiment(name), name


def adapt_config(config: configs.ExperimentConfig, checkpoint: MMDetCheckpoint) -> list[str]:
    """Set what the checkpoint's shapes fix (backbone depth, width and scale, mmdetection's
    stage blocks without pool, classes, class-agnostic cascade regression, semantic classes)
    in `config`; returns a note per change."""
    notes = []
    model = config.model
    backbone = model.backbone
    spec = variants.get_variant(backbone.name)
    blocks = checkpoint.stage_blocks()
    current = tuple(backbone.layers or spec.layers)
    if len(blocks) == len(current) and blocks != current:
        backbone.layers = blocks
        notes.append(f"backbone depth from the checkpoint: {blocks} (R2-{3 * sum(blocks) + 2}) "
                     f"instead of {current}")
    found = checkpoint.width_and_scale()
    if found is not None:
        width, scale = found
        if width != (backbone.base_width or spec.base_width):
            backbone.base_width = width
            notes.append(f"backbone base width from the checkpoint: {width}")
        if scale != (backbone.scale or spec.scale):
            backbone.scale = scale
            notes.append(f"backbone scale from the checkpoint: {scale}")
    if backbone.stage_pool:
        backbone.stage_pool = False
        notes.append("stage_pool=False: mmdetection's Res2Net has no pool in layer1's first block")
    classes = checkpoint.num_classes
    if classes is not None and classes != model.num_classes:
        notes.append(f"{classes} classes from fc_cls instead of {model.num_classes}")
        model.num_classes = classes
    agnostic = checkpoint.class_agnostic()
    cascade = model.cascade
    if cascade is not None and agnostic is not None and agnostic != cascade.class_agnostic:
        cascade.class_agnostic = agnostic
        notes.append("cascade box regression is " + ("class-agnostic" if agnostic else
                                                    "class-specific") + " (fc_reg)")
    logits = checkpoint.tensors.get("roi_head.semantic_head.conv_logits.weight")
    if model.htc is not None and logits is not None and logits.ndim == 4 \
            and logits.shape[0] != model.htc.semantic_classes:
        model.htc.semantic_classes = int(logits.shape[0])
        notes.append(f"{logits.shape[0]} semantic classes from the semantic head")
    return notes


# -- building and loading -----------------------------------------------------------------
def build_empty_detector(config: configs.ExperimentConfig):
    """The detector of `config` with its variables created but not run (see weight_map)."""
    from keras_res2net.detection.modeling.backbone import build_backbone
    from keras_res2net.detection.modeling.factory import build_detector
    from keras_res2net.detection.weight_map import build_variables

    model = build_detector(config.model, build_backbone(config.model.backbone))
    build_variables(model)
    return model


def open_checkpoint(checkpoint) -> MMDetCheckpoint:
    """A path (.pth / .safetensors), a state dict (possibly wrapped) or an MMDetCheckpoint."""
    if isinstance(checkpoint, MMDetCheckpoint):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        return MMDetCheckpoint.from_state_dict(checkpoint)
    return MMDetCheckpoint.read(checkpoint)


def config_for_checkpoint(checkpoint, experiment
                          ) -> tuple[configs.ExperimentConfig, str | None, list[str]]:
    """`(config, registered name or None, notes)`: `experiment`'s config (a name, an
    experiment.json or an ExperimentConfig, never modified) checked against the checkpoint's
    architecture and given its depth, widths and classes (see `adapt_config`). Build a model
    from it to load the checkpoint with `weight_map.load_mmdet_state_dict`, e.g. after
    changing test-time settings."""
    config, name = resolve_experiment(experiment)
    loaded = open_checkpoint(checkpoint)
    check_architecture(loaded, config.model, name, configs.list_experiments())
    return config, name, adapt_config(config, loaded)


def convert_checkpoint(checkpoint, experiment) -> Conversion:
    """Read `checkpoint` (a path, a state dict or an MMDetCheckpoint), check it against
    `experiment` (a registered name, an experiment.json or an ExperimentConfig), build the
    detector and fill it strictly."""
    from keras_res2net.detection.weight_map import load_mmdet_state_dict

    loaded = open_checkpoint(checkpoint)
    # Before building anything: a file of another architecture is named as such.
    config, name, notes = config_for_checkpoint(loaded, experiment)
    model = build_empty_detector(config)
    report = load_mmdet_state_dict(model, loaded, experiment=name)
    return Conversion(model, config, name, report, loaded, notes)


def from_mmdet(checkpoint, experiment):
    """The built Keras detector holding a mmdetection checkpoint (path or state dict).

    `experiment`: a registered name (`configs.list_experiments()`) or an ExperimentConfig;
    depth, widths and classes are taken from the checkpoint. Raises DetectorCheckpointError
    (naming the keys and shapes) when the checkpoint does not fit.
    """
    return convert_checkpoint(checkpoint, experiment).model


# -- writing ------------------------------------------------------------------------------
def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UsageError(f"--output {output} exists and is not empty; pass --force to "
                         "replace it.")


def verify_reload(model, folder: Path) -> None:
    """Rebuild from `folder`'s experiment.json, load its weights, compare every variable."""
    from keras_res2net.detection.experiment_io import load_experiment

    fresh = build_empty_detector(load_experiment(folder))
    fresh.load_weights(str(folder / WEIGHTS_FILE))
    if len(fresh.weights) != len(model.weights):
        raise RuntimeError(f"the reloaded detector has {len(fresh.weights)} weights, the "
                           f"converted one {len(model.weights)}.")
    for mine, theirs in zip(model.weights, fresh.weights, strict=True):
        if not np.array_equal(np.asarray(mine.numpy()), np.asarray(theirs.numpy())):
            raise RuntimeError(f"reloaded weight {theirs.path} differs from the converted one.")


def write_conversion(result: Conversion, output, force: bool = False) -> Path:
    """Write `result` to `output` via a staging folder beside it (see the module doc)."""
    from keras_res2net.detection.experiment_io import save_experiment

    output = Path(output).absolute()
    _check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    backup = None
    try:
        result.model.save_weights(str(staging / WEIGHTS_FILE))
        save_experiment(result.config, staging, name=result.experiment)
        verify_reload(result.model, staging)
        os.chmod(staging, 0o755)
        if output.is_dir() and any(output.iterdir()):
            backup = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-",
                                           dir=output.parent))
            os.replace(output, backup / output.name)
        os.replace(staging, output)  # replaces an empty folder atomically
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if backup is not None and (backup / output.name).exists() and not output.exists():
            os.replace(backup / output.name, output)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    return output


def convert(checkpoint, experiment, output, force: bool = False) -> tuple[Conversion, Path]:
    """Check the output folder, convert, write and verify; what the CLI runs."""
    output = Path(output).absolute()
    _check_output(output, force)
    result = convert_checkpoint(checkpoint, experiment)
    return result, write_conversion(result, output, force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_res2net.detection.convert",
        description="Convert a mmdetection Res2Net detector checkpoint into a Keras run folder.")
    parser.add_argument("checkpoint", help="mmdetection .pth (needs torch) or .safetensors")
    parser.add_argument("--experiment", required=True,
                        help="registered experiment name or an experiment.json, e.g. "
                             "mask_rcnn_res2net101_fpn_coco")
    parser.add_argument("--output", required=True, help="folder to write (must not exist or "
                        "be empty, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        result, output = convert(args.checkpoint, args.experiment, args.output, args.force)
    except UsageError as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one or two lines for the user
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary(output) + f" in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
