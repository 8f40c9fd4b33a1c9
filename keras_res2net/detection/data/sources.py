"""Where training examples come from: COCO JSON + images, TFDS `coco/2017`, or TFRecords.

Each source yields raw examples (`{"image", "boxes", "classes", "masks", "image_id"}`, see
`pipeline.raw_dataset`) as a fresh `tf.data.Dataset` on every call, so that each input
pipeline of a `tf.distribute` strategy can build (and shard) its own. `num_examples` sets the
length of an epoch when it is known.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from keras_res2net.detection.configs import ExperimentConfig

SOURCES = ("coco_json", "tfds", "tfrecord")


@dataclasses.dataclass
class TrainSource:
    """Raw training examples and, when known, how many there are."""

    name: str
    raw: Callable[[], tf.data.Dataset]
    num_examples: int | None
    cacheable: bool = False  # small enough to keep decoded in memory


def coco_json_source(config: ExperimentConfig, data_dir) -> TrainSource:
    """The experiment's training JSON and image folder under `data_dir` (checked up front)."""
    from keras_res2net.detection.data.coco import load_coco
    from keras_res2net.detection.data.pipeline import raw_dataset

    data = config.data
    dataset = load_coco(Path(data_dir) / data.train_json, Path(data_dir) / data.train_images,
                        needs_masks=config.model.include_mask)
    count = len(dataset.records)
    return TrainSource("coco_json", lambda: raw_dataset(dataset, data.max_instances), count,
                       cacheable=count <= 5000)


def open_source(kind: str, config: ExperimentConfig, data_dir) -> TrainSource:
    """The `TrainSource` of `--data kind`."""
    if kind == "coco_json":
        return coco_json_source(config, data_dir)
    raise ValueError(f"--data {kind!r}: choose from {', '.join(SOURCES)}.")
