"""`experiment.json`: the fully resolved experiment config that every run folder carries.

Training, the mmdetection converter and anything else that writes detector weights put the
config they used beside them, so prediction, evaluation and export rebuild exactly that
model (overrides such as `--max_size` included) instead of looking a name up in the registry.
The file is written through a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path

from keras_res2net.detection import configs

EXPERIMENT_FILE = "experiment.json"
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
    handle, temporary = tempfile.mkstemp(prefix=f".{EXPERIMENT_FILE}-", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=1)
            stream.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


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


def resolve_experiment(checkpoint=None, experiment: str | None = None
                       ) -> configs.ExperimentConfig:
    """The config of a run: `checkpoint`'s `experiment.json` when it has one, else the
    registered `experiment`. Giving neither (or a folder without the file and no name) is
    an error that says what to pass."""
    if checkpoint is not None:
        folder = Path(checkpoint)
        folder = folder if folder.is_dir() else folder.parent
        if (folder / EXPERIMENT_FILE).is_file():
            return load_experiment(folder)
    if experiment is None:
        where = f"{checkpoint} has no {EXPERIMENT_FILE}" if checkpoint else "no run folder"
        raise ValueError(f"{where}: pass --experiment NAME (one of "
                         f"{', '.join(configs.list_experiments())}).")
    return configs.get_experiment(experiment)
