"""The detection train step under the 2-process MultiWorkerMirroredStrategy loopback test.

Two workers run `train/coco.py --strategy multi_worker --data tfrecord` for 2 steps of the
small synthetic Mask R-CNN (global batch 2, one image per worker, 64x64 shapes, each worker
reading its shard of Model Garden-style TFRecords): both must end with the same weights
(gradients all-reduced, BatchNorm statistics averaged) and only the chief's checkpoint and
`detector.weights.h5` are in the model folder.
"""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
from loopback import run_workers, script_popen, weight_digests

from keras_res2net.detection import configs, experiment_io
from keras_res2net.detection.data import tf_example
from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.synthetic import write_dataset
from keras_res2net.detection.trainer import WEIGHTS


@pytest.mark.slow
def test_two_workers_train_detector_in_lock_step(tmp_path):
    data_dir = write_dataset(tmp_path / "shapes", train=4, val=2, seed=5, size=64)
    data = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic").data
    train = load_coco(data_dir / data.train_json, data_dir / data.train_images)
    tf_example.write_tfrecord(train, data_dir / "train-00000.tfrecord")
    model_dir = str(tmp_path / "run")
    args = ["--experiment", "mask_rcnn_res2net50_fpn_synthetic", "--data_dir", str(data_dir),
            "--data", "tfrecord", "--model_dir", model_dir, "--strategy", "multi_worker",
            "--steps", "2", "--batch_size", "2", "--max_size", "64"]
    outputs = run_workers(script_popen(os.path.join("train", "coco.py")), args, timeout=1200)
    digests = weight_digests(outputs)
    assert digests[0] == digests[1]
    assert all("step 2/2" in out for out in outputs)
    assert all("training data: tfrecord" in out for out in outputs)
    assert "weights written to" in outputs[0]  # worker 0 is the chief
    assert "weights written by the chief" in outputs[1]
    assert "epoch 1/1" in outputs[0] and "epoch 1/1" not in outputs[1]  # only the chief logs
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest is not None and latest.endswith("ckpt-2")
    assert os.path.exists(os.path.join(model_dir, WEIGHTS))
    saved = experiment_io.load_experiment(model_dir)  # written once, by the chief
    assert (saved.data.max_size, saved.train.steps) == ((64, 64), 2)
    assert [p for p in os.listdir(model_dir) if p.startswith(".")] == []  # no temp files
