"""Data sources and pipelines: TFDS (mocked, never downloading), TFRecord, folder, digits."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.training.config import TrainConfig, resolve_config
from keras_res2net.training.data import eval_dataset, open_source, train_dataset


def _jpeg(seed: int, shape=(40, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def _config(**kw) -> TrainConfig:
    base = dict(data="digits", image_size=32, batch_size=4, flip=True, crop_scale_min=0.08,
                eval_crop_fraction=0.875, shuffle_buffer=16)
    base.update(kw)
    return resolve_config(TrainConfig(**base))


def _check_batches(source, config):
    images, labels = next(iter(train_dataset(source, config, None, epoch=0)))
    assert images.shape == (config.batch_size, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (config.batch_size, source.num_classes)
    # preprocess_input ran: values are normalised, not 0..255.
    assert -2.5 < float(tf.reduce_min(images)) and float(tf.reduce_max(images)) < 2.7
    total = 0
    for images, _labels, valid in eval_dataset(source, config, None):
        assert images.shape[1:] == (32, 32, 3)
        total += int(tf.reduce_sum(valid))
    assert total == source.num_examples[source.splits[1]]


def test_tfrecord_imagenet_layout(tmp_path):
    for split, count in (("train", 6), ("validation", 3)):
        path = tmp_path / f"{split}-00000-of-00001"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(count):
                feature = {
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[_jpeg(i)])),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                        value=[1 + i % 3])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=feature)).SerializeToString())
    source = open_source("tfrecord", data_dir=str(tmp_path), num_classes=3, label_offset=1)
    assert source.num_examples == {"train": 6, "validation": 3}
    labels = [int(y) for _, y in source.records("validation", None)]
    assert labels == [0, 1, 2]
    _check_batches(source, _config(data="tfrecord", data_dir=str(tmp_path), num_classes=3))


def test_folder_of_images(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(_jpeg(i, shape=(60, 45)))
    source = open_source("folder", data_dir=str(tmp_path))
    assert source.num_classes == 2
    assert source.num_examples == {"train": 6, "val": 4}
    assert sorted(int(y) for _, y in source.records("val", None)) == [0, 0, 1, 1]
    _check_batches(source, _config(data="folder", data_dir=str(tmp_path)))


def test_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        source = open_source("imagenette")
        assert source.num_classes == 10
        _check_batches(source, _config(data="imagenette"))


def test_missing_tfds_dataset_fails_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded.*tfds build imagenette"):
        open_source("imagenette", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 30


def test_unknown_names_and_missing_folders_are_clear(tmp_path):
    with pytest.raises(ValueError, match="neither digits, tfrecord, folder nor a TFDS"):
        open_source("no_such_dataset_xyz")
    with pytest.raises(FileNotFoundError, match="no train-\\* shards"):
        open_source("tfrecord", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train.*is missing"):
        open_source("folder", data_dir=str(tmp_path))


def test_digits_resume_skips_seen_batches():
    source = open_source("digits", image_size=32)
    config = _config(flip=False, crop_scale_min=1.0, shuffle_buffer=2000)
    full = list(train_dataset(source, config, None, epoch=3).take(3))
    resumed = next(iter(train_dataset(source, config, None, epoch=3, skip_batches=2)))
    np.testing.assert_allclose(resumed[1], full[2][1])  # same labels: the same records
    np.testing.assert_allclose(resumed[0], full[2][0], atol=1e-5)


def test_mixup_cutmix_make_soft_labels():
    source = open_source("digits", image_size=32)
    config = _config(mixup_alpha=0.4, cutmix_alpha=1.0, batch_size=8)
    _, labels = next(iter(train_dataset(source, config, None, epoch=0)))
    np.testing.assert_allclose(tf.reduce_sum(labels, -1), np.ones(8), atol=1e-5)
    assert os.environ.get("KERAS_BACKEND") == "tensorflow"
