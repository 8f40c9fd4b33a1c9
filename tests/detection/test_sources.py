"""`train/coco.py --data coco_json|tfds|tfrecord`: every source feeds the distributed trainer.

The TFRecord source trains through the script in `test_multi_worker.py` (two workers, each
reading its shard); coco_json in `test_train_synthetic.py`. The TFDS source uses
`tfds.testing.mock_data` (in-process only) with the consistent mock examples of
`test_tfds_coco.py` and a Faster R-CNN (TFDS COCO has no masks); it is checked up to the
per-replica batches of the trainer's `distribute_datasets_from_function` pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mock_coco import coco_examples

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data import sources, tf_example
from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.pipeline import decode_record


def test_tfrecord_source_maps_category_ids(shapes_val, tmp_path):
    dataset = load_coco(*shapes_val)
    tf_example.write_tfrecord(dataset, tmp_path / "train.tfrecord")
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    source = sources.open_source("tfrecord", config, tmp_path)
    assert source.num_examples is None  # TFRecords do not say: --steps is needed
    examples = list(source.raw())
    assert len(examples) == 6
    np.testing.assert_array_equal(examples[0]["classes"], dataset.records[0].classes)
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        sources.open_source("tfrecord", config, tmp_path / "empty")


def test_tfds_source_feeds_the_distributed_pipeline(tmp_path):
    mask_config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    with pytest.raises(ValueError, match="no instance masks"):
        sources.open_source("tfds", mask_config, tmp_path)
    config = configs.get_experiment("faster_rcnn_res2net50_fpn_synthetic")
    config.model.num_classes = 80  # TFDS COCO labels
    config.data.max_size = (64, 64)
    config.data.batch_size = 2
    config.train.steps, config.train.warmup_steps, config.train.decay_steps = 2, 1, ()
    with tfds.testing.mock_data(as_dataset_fn=coco_examples):
        source = sources.open_source("tfds", config, tmp_path)
        detector = trainer.DetectionTrainer(config, source, tmp_path / "run")
        dist = detector.strategy.distribute_datasets_from_function(
            lambda context: detector.task.train_dataset(context, epoch=0, skip=0))
        batch = next(iter(dist))
    assert batch["images"].shape == (2, 32, 64, 3)  # 40x80 resized to fit 64, padded to 32
    # Crowd object dropped, labels + 1 (see test_tfds_coco.py); shuffled, so either order.
    classes = sorted(tuple(int(c) for c in row if c) for row in batch["classes"].numpy())
    assert classes == [(1,), (4, 5)]


def test_only_the_coco_json_source_reads_semantic_maps(shapes_semantic):
    json_path, images, semantic = shapes_semantic
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    config.data.train_json, config.data.train_images = json_path.name, images.name
    config.data.train_semantic = semantic.name
    source = sources.open_source("coco_json", config, json_path.parent)
    example = decode_record(next(iter(source.raw())))  # records decode after shuffling
    assert example["semantic"].shape == (128, 128) and example["semantic"].dtype == "uint8"
    np.testing.assert_array_equal(example["semantic"],
                                  load_coco(json_path, images, semantic_dir=semantic)
                                  .records[0].load_semantic())
    for kind in ("tfds", "tfrecord"):
        with pytest.raises(ValueError, match=f"--data {kind} has no semantic maps"):
            sources.open_source(kind, config, json_path.parent)
