"""`train/coco.py --data coco_json|tfds|tfrecord`: every source feeds the distributed trainer.

The TFRecord run goes through the script (flags to trainer, 2 steps at 64x64); the TFDS run
uses `tfds.testing.mock_data` (in-process only) with the consistent mock examples of
`test_tfds_coco.py` and a Faster R-CNN (TFDS COCO has no masks).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from loopback import ROOT, script_env
from test_tfds_coco import _examples

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data import sources, tf_example
from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.synthetic import write_dataset


def test_tfrecord_source_trains_through_the_script(tmp_path):
    data_dir = write_dataset(tmp_path / "shapes", train=4, val=2, seed=2, size=64)
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    train = load_coco(data_dir / config.data.train_json, data_dir / config.data.train_images)
    os.makedirs(tmp_path / "records")
    tf_example.write_tfrecord(train, tmp_path / "records" / "train-00000.tfrecord")
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train", "coco.py"), "--data", "tfrecord",
         "--tfrecord_pattern", str(tmp_path / "records" / "*.tfrecord"), "--data_dir",
         str(data_dir), "--model_dir", str(model_dir), "--steps", "2", "--batch_size", "2",
         "--max_size", "64"], capture_output=True, text=True, timeout=300, env=script_env(),
        cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training data: tfrecord" in result.stdout
    assert "step 2/2" in result.stdout and (model_dir / trainer.WEIGHTS).exists()


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


def test_tfds_source_trains_a_faster_rcnn(tmp_path):
    mask_config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    with pytest.raises(ValueError, match="no instance masks"):
        sources.open_source("tfds", mask_config, tmp_path)
    config = configs.get_experiment("faster_rcnn_res2net50_fpn_synthetic")
    config.model.num_classes = 80  # TFDS COCO labels
    config.data.max_size = (64, 64)
    config.data.batch_size = 2
    config.train.steps, config.train.warmup_steps, config.train.decay_steps = 2, 1, ()
    with tfds.testing.mock_data(as_dataset_fn=_examples):
        source = sources.open_source("tfds", config, tmp_path)
        _, model, _ = trainer.train(config, model_dir=tmp_path / "run", source=source)
    assert model is not None and (tmp_path / "run" / trainer.WEIGHTS).exists()
