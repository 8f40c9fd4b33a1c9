"""Where training examples come from: COCO JSON + images, TFDS `coco/2017`, or TFRecords.

Each source yields raw examples (`{"image", "boxes", "classes", "masks" or "mask_crops",
"image_id"}`, see `pipeline.raw_dataset`; the COCO JSON source yields undecoded
`pipeline.record_dataset` records, decoded after shuffling) as a fresh `tf.data.Dataset` on
every call, so that each input
pipeline of a `tf.distribute` strategy can build (and shard) its own. `num_examples` sets the
length of an epoch when it is known. Only the COCO JSON source reads semantic maps
(`DataConfig.train_semantic`, HTC's semantic branch); TFDS and TFRecord sources refuse a
config that asks for them.
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


def semantic_dir(config: ExperimentConfig, data_dir, training: bool = True) -> Path | None:
    """The folder of semantic maps of the training (or validation) split, or None."""
    folder = config.data.train_semantic if training else config.data.val_semantic
    return None if folder is None else Path(data_dir) / folder


def _refuse_semantic(config: ExperimentConfig, kind: str) -> None:
    if config.data.train_semantic is not None:
        raise ValueError(f"--data {kind} has no semantic maps (DataConfig.train_semantic="
                         f"{config.data.train_semantic!r}): use --data coco_json, which reads "
                         "them from that folder, or train without the semantic branch.")


def coco_json_source(config: ExperimentConfig, data_dir, *, check_images: bool = True,
                     skip_bad_images: bool = False) -> TrainSource:
    """The experiment's training JSON and image folder (and semantic maps, when configured)
    under `data_dir`, checked up front: the annotations by `load_coco`, and with
    `check_images` every image decoded once (`image_check`; `skip_bad_images` leaves the bad
    ones out instead of stopping)."""
    from keras_res2net.detection.data import image_check
    from keras_res2net.detection.data.coco import load_coco
    from keras_res2net.detection.data.pipeline import record_dataset

    data = config.data
    dataset = load_coco(Path(data_dir) / data.train_json, Path(data_dir) / data.train_images,
                        needs_masks=config.model.include_mask,
                        semantic_dir=semantic_dir(config, data_dir),
                        filter_empty_gt=data.filter_empty_gt, min_size=data.min_image_size)
    if check_images:
        dataset = image_check.check_images(dataset, skip_bad=skip_bad_images)
    record_dataset(dataset, data.max_instances)  # refuses too many objects now
    count = len(dataset.records)
    return TrainSource("coco_json", lambda: record_dataset(dataset, data.max_instances), count,
                       cacheable=count <= 5000)


def check_eval_data(config: ExperimentConfig, data_dir, *, check_images: bool = True) -> None:
    """Refuse a bad validation split (annotations, and images when `check_images`) before
    any model is built or trained: the evaluation reads it only at the end."""
    from keras_res2net.detection.data import image_check
    from keras_res2net.detection.data.coco import load_coco

    data = config.data
    dataset = load_coco(Path(data_dir) / data.val_json, Path(data_dir) / data.val_images,
                        needs_masks=config.model.include_mask,
                        semantic_dir=semantic_dir(config, data_dir, training=False))
    if check_images:
        image_check.check_images(dataset)


def tfds_source(config: ExperimentConfig, data_dir, split: str = "train",
                name: str = "coco/2017") -> TrainSource:
    """TFDS COCO (prepared under `data_dir`); boxes only, so Faster R-CNN experiments only."""
    _refuse_semantic(config, "tfds")
    if config.model.include_mask:
        raise ValueError("--data tfds has no instance masks (TFDS coco/2017 stores boxes "
                         "only): train a faster_rcnn_* experiment, or use --data coco_json or "
                         "tfrecord for Mask R-CNN.")
    from keras_res2net.detection.data import tfds_coco

    tfds_coco.load(split, data_dir=data_dir, name=name)  # fails now if it is not prepared
    return TrainSource(f"tfds {name}:{split}",
                       lambda: _filtered(config, tfds_coco.load(split, data_dir=data_dir,
                                                                name=name)),
                       _tfds_count(name, split, data_dir))


def _filtered(config: ExperimentConfig, data: tf.data.Dataset) -> tf.data.Dataset:
    """mmdetection's training filter (`DataConfig.filter_empty_gt`, `min_image_size`)."""
    from keras_res2net.detection.data.mmdet_rules import filter_training_examples

    return filter_training_examples(data, config.data.filter_empty_gt,
                                    config.data.min_image_size)


def _tfds_count(name: str, split: str, data_dir) -> int | None:
    import tensorflow_datasets as tfds

    try:
        count = tfds.builder(name, data_dir=data_dir).info.splits[split].num_examples
    except Exception:  # metadata not prepared (or a mocked builder): length unknown
        return None
    return int(count) or None


def category_ids_for(config: ExperimentConfig, data_dir) -> list[int]:
    """Dataset category ids in class order: from the experiment's validation JSON under
    `data_dir` when there is one (as COCO's 80 ids out of 1..90), else 1..num_classes."""
    path = Path(data_dir) / config.data.val_json
    if path.is_file():
        import json

        with open(path) as f:
            return sorted(int(c["id"]) for c in json.load(f)["categories"])
    return list(range(1, config.model.num_classes + 1))


def tfrecord_source(config: ExperimentConfig, data_dir,
                    pattern: str | None = None) -> TrainSource:
    """Model Garden-style TFRecords (`pattern`, default `data_dir/train*.tfrecord*`)."""
    from keras_res2net.detection.data import tf_example

    _refuse_semantic(config, "tfrecord")
    pattern = pattern or str(Path(data_dir) / "train*.tfrecord*")
    category_ids = category_ids_for(config, data_dir)
    tf_example.load(pattern, category_ids)  # fails now if no file matches
    return TrainSource(f"tfrecord {pattern}",
                       lambda: _filtered(config, tf_example.load(pattern, category_ids)), None)


def open_source(kind: str, config: ExperimentConfig, data_dir, *,
                tfds_split: str = "train", tfds_name: str = "coco/2017",
                tfrecord_pattern: str | None = None, check_images: bool = True,
                skip_bad_images: bool = False) -> TrainSource:
    """The `TrainSource` of `--data kind` (`check_images`, `skip_bad_images`: coco_json)."""
    if kind == "coco_json":
        return coco_json_source(config, data_dir, check_images=check_images,
                                skip_bad_images=skip_bad_images)
    if kind == "tfds":
        return tfds_source(config, data_dir, tfds_split, tfds_name)
    if kind == "tfrecord":
        return tfrecord_source(config, data_dir, tfrecord_pattern)
    raise ValueError(f"--data {kind!r}: choose from {', '.join(SOURCES)}.")
