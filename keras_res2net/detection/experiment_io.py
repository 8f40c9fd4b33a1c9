"""`experiment.json`: the fully resolved experiment config that every run folder carries.

Training, the mmdetection converter and anything else that writes detector weights put the
config they used beside them, so prediction, evaluation and export rebuild exactly that
model (overrides such as `--max_size` included) instead of looking a name up in the registry.
The file is written through a temporary name in the same folder and renamed into place.

Reading a run: `open_run` finds the weights and the config (`resolve_experiment`: the
folder's file, else a registered name). A folder whose file describes another experiment is
refused with one line (`ExperimentMismatchError`): training on (`check_resumable`) needs the
same model and data config, the schedule may change; loading weights (`check_same_model`)
needs the same model config.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from keras_res2net.detection import configs

EXPERIMENT_FILE = "experiment.json"
WEIGHTS_FILE = "detector.weights.h5"  # beside it: the weights (trainer.WEIGHTS)
FORMAT_VERSION = 1


def config_to_dict(config: configs.ExperimentConfig) -> dict:
    """A JSON-ready dict of `config` (tuples become lists)."""
    return dataclasses.asdict(config)


def _dataclass_in(hint) -> type | None:
    """The dataclass a field's type hint names (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _build(cls: type, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object for {cls.__name__}, got "
                         f"{type(values).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(fields)}.")
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_in(hints[name])
        if nested is not None and value is not None:
            kwargs[name] = _build(nested, value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = _to_tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _to_tuple(value):
    return tuple(_to_tuple(v) if isinstance(v, list) else v for v in value)


def config_from_dict(values: dict, where: str = "experiment") -> configs.ExperimentConfig:
    """The `ExperimentConfig` `config_to_dict` wrote; fields it lacks keep their defaults,
    unknown fields are an error naming them."""
    return _build(configs.ExperimentConfig, values, where)


def save_experiment(config: configs.ExperimentConfig, directory, name: str | None = None
                    ) -> Path:
    """Write `directory/experiment.json` (through a temporary name); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, "name": name, "config": config_to_dict(config)}
    target = directory / EXPERIMENT_FILE
    write_json(target, payload)
    return target


def write_json(path, payload) -> Path:
    """Write `payload` as JSON to `path` through a temporary file in the same folder and a
    rename, so a reader never sees half a file (and a failed write leaves none)."""
    from keras_res2net.cli_errors import atomic_file

    path = Path(path)
    with atomic_file(str(path)) as temporary, open(temporary, "w") as stream:
        json.dump(payload, stream, indent=1)
        stream.write("\n")
    return path


def load_experiment(path) -> configs.ExperimentConfig:
    """The config in `path` (a run folder holding `experiment.json`, or the file itself)."""
    path = Path(path)
    file = path / EXPERIMENT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no {EXPERIMENT_FILE} (every run folder written by "
                                "train/coco.py or keras_res2net.detection.convert has one).")
    try:
        payload = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error}).") from None
    if not isinstance(payload, dict) or "config" not in payload:
        raise ValueError(f"{file}: not an experiment file (no 'config' object).")
    if payload.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{file}: format {payload['format']} is newer than this "
                         f"keras-res2net reads ({FORMAT_VERSION}).")
    return config_from_dict(payload["config"], where=str(file))


def saved_name(path) -> str | None:
    """The experiment name recorded in `path`'s `experiment.json` (None if absent/unnamed)."""
    path = Path(path)
    file = path / EXPERIMENT_FILE if path.is_dir() else path
    try:
        payload = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    name = payload.get("name") if isinstance(payload, dict) else None
    return name if isinstance(name, str) else None


class ExperimentMismatchError(ValueError):
    """A run folder's `experiment.json` describes another experiment than the one asked for."""


# What a resumed training run may change: the schedule (how long, how fast, how the learning
# rate moves, the seed) and the global batch size, which follows the number of replicas. The
# optimizer's kind is not among them (its slots are in the checkpoint). Everything else, the
# whole model config and the data pipeline (image size, size divisor, files, flips, instance
# cap), is what the weights were trained for: another value there is another experiment.
RESUMABLE_FIELDS = frozenset({
    "data.batch_size", "train.learning_rate", "train.momentum", "train.weight_decay",
    "train.warmup_steps", "train.warmup_ratio", "train.epochs", "train.decay_epochs",
    "train.steps", "train.decay_steps", "train.gradient_clip_norm", "train.seed"})


def _plain(value):
    """`value` as JSON reads it back (tuples become lists, dataclasses dicts), to compare."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value))


def _show(value) -> str:
    text = json.dumps(_plain(value), separators=(",", ":"))
    return text if len(text) <= 40 else text[:37] + "..."


def experiment_differences(saved, current, ignore=frozenset()) -> list[str]:
    """`"model.heads.fpn_channels: 16 in the folder, 64 here"` for each leaf field of two
    configs (or config sections) that differs, skipping the dotted names in `ignore`. A
    section present on one side only (a cascade, HTC) comes first: it says most."""
    sections: list[str] = []
    fields: list[str] = []

    def walk(a, b, name: str) -> None:
        if name in ignore:
            return
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            for field in dataclasses.fields(a):
                walk(getattr(a, field.name), getattr(b, field.name),
                     f"{name}.{field.name}" if name else field.name)
        elif _plain(a) != _plain(b):
            found = sections if dataclasses.is_dataclass(a) or dataclasses.is_dataclass(b) \
                else fields
            found.append(f"{name}: {_show(a)} in the folder, {_show(b)} here")

    walk(saved, current, "")
    return sections + fields


def mismatch_message(folder, differences: list[str], advice: str) -> str:
    """The one-line refusal: which folder, whose experiment, the first differences, what
    to do."""
    name = saved_name(folder)
    owner = f" ({name})" if name else ""
    shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more"
                                          if len(differences) > 3 else "")
    return (f"{folder} belongs to another experiment{owner}: its {EXPERIMENT_FILE} differs "
            f"in {shown}. {advice}")


def check_resumable(folder, config: configs.ExperimentConfig) -> None:
    """Raise `ExperimentMismatchError` unless `config` may train on in `folder`: no
    `experiment.json` there yet, or one that differs at most in `RESUMABLE_FIELDS`."""
    folder = Path(folder)
    if not (folder / EXPERIMENT_FILE).is_file():
        return
    differences = experiment_differences(load_experiment(folder), config, RESUMABLE_FIELDS)
    if differences:
        raise ExperimentMismatchError(mismatch_message(
            folder, differences, "Choose another --model_dir (or leave out "
            "--experiment and the model/data overrides to resume that run)."))


def check_same_model(folder, config: configs.ExperimentConfig,
                     advice: str = "Leave out --experiment to use the folder's own.") -> None:
    """Raise `ExperimentMismatchError` when `folder` has an `experiment.json` whose model config
    differs from `config`'s: its weights belong to that model. Data and schedule may differ
    (evaluating at another image size is a choice, not a mistake)."""
    folder = Path(folder)
    if not (folder / EXPERIMENT_FILE).is_file():
        return
    differences = experiment_differences(load_experiment(folder).model, config.model)
    if differences:
        raise ExperimentMismatchError(mismatch_message(
            folder, [f"model.{d}" for d in differences], advice))


def resolve_experiment(checkpoint=None, experiment: str | None = None
                       ) -> configs.ExperimentConfig:
    """The config of a run: `checkpoint`'s `experiment.json` when it has one, else the
    registered `experiment`. Giving neither (or a folder without the file and no name) is
    an error that says what to pass. Naming an `experiment` whose model differs from the
    folder's is an `ExperimentMismatchError` (the weights are the folder's model); otherwise the
    folder's file wins, with its data settings (e.g. a `--max_size` override)."""
    if checkpoint is not None:
        folder = Path(checkpoint)
        folder = folder if folder.is_dir() else folder.parent
        if (folder / EXPERIMENT_FILE).is_file():
            if experiment is not None:
                check_same_model(folder, configs.get_experiment(experiment))
            return load_experiment(folder)
    if experiment is None:
        where = f"{checkpoint} has no {EXPERIMENT_FILE}" if checkpoint else "no run folder"
        raise ValueError(f"{where}: pass --experiment NAME (one of "
                         f"{', '.join(configs.list_experiments())}).")
    return configs.get_experiment(experiment)


def weights_path(checkpoint) -> Path:
    """The weights of a run: `checkpoint/detector.weights.h5`, or `checkpoint` itself when it
    is a `.weights.h5` file. A missing folder or file is a `FileNotFoundError` saying which
    and who writes it."""
    path = Path(checkpoint)
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"{path}: no {WEIGHTS_FILE} in it (train/coco.py writes it at the end of "
                "training, python -m keras_res2net.detection.convert for mmdetection weights).")
        return weights
    if path.is_file():
        if not path.name.endswith(".weights.h5"):
            raise FileNotFoundError(f"{path}: neither a run folder nor a .weights.h5 file.")
        return path
    raise FileNotFoundError(f"{path}: no such run folder or weights file.")


def open_run(checkpoint, experiment: str | None = None
             ) -> tuple[configs.ExperimentConfig, Path]:
    """(config, weights path) of a run folder or weights file, checked before any model is
    built: the weights exist, and the config is the folder's `experiment.json` or the
    registered `experiment` (see `resolve_experiment`). Raises `FileNotFoundError` or
    `ValueError` (`ExperimentMismatchError` included) with a one-line message."""
    weights = weights_path(checkpoint)
    return resolve_experiment(weights.parent, experiment), weights
