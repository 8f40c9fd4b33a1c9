"""Data sources and pipelines: TFDS (mocked, never downloading), TFRecord, folder, digits."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.training.config import TrainConfig, resolve_config
from keras_res2net.training.data import eval_dataset, open_source, train_dataset
from keras_res2net.training.data.pipeline import mixup_cutmix


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
    import tensorflow_datasets as tfds  # the `data` extra, part of `test`: no skip
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
    """With every augmentation on (random crop, flip, mixup), a resumed epoch's first batch is
    the uninterrupted epoch's third, pixel for pixel: the draws are keyed by position."""
    source = open_source("digits", image_size=32)
    config = _config(crop_scale_min=0.3, mixup_alpha=0.4, shuffle_buffer=2000)
    full = list(train_dataset(source, config, None, epoch=3).take(3))
    resumed = next(iter(train_dataset(source, config, None, epoch=3, skip_batches=2)))
    np.testing.assert_array_equal(resumed[1], full[2][1])
    np.testing.assert_array_equal(resumed[0], full[2][0])


def test_same_seed_same_augmented_batches():
    """Two pipelines with the same seed give identical augmented batches, whatever order the
    parallel map runs its elements in; another seed gives other crops."""
    source = open_source("digits", image_size=32)

    def first_batches(seed):
        config = _config(crop_scale_min=0.3, cutmix_alpha=1.0, batch_size=16, seed=seed)
        return [np.asarray(x) for x, _ in train_dataset(source, config, None, epoch=0).take(4)]

    again = first_batches(0)
    for first, second in zip(first_batches(0), again, strict=True):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first_batches(1)[0], again[0])


def _batches(config, count=1):
    source = open_source("digits", image_size=32)
    return [(np.asarray(x), np.asarray(y))
            for x, y in train_dataset(source, config, None, epoch=0).take(count)]


def _mixup_weight(mixed, labels):
    """lam of `lam * labels + (1 - lam) * reversed labels`, from a row whose two classes
    differ (None if every row pairs equal classes)."""
    other = labels[::-1]
    for row in np.flatnonzero(labels.argmax(-1) != other.argmax(-1)):
        return float(mixed[row, labels[row].argmax()])
    return None


def test_mixup_mixes_images_and_labels_with_one_weight():
    deterministic = dict(flip=False, crop_scale_min=1.0, batch_size=8)
    clean = _batches(_config(**deterministic), count=4)
    mixed_batches = _batches(_config(mixup_alpha=0.4, **deterministic), count=4)
    weights = []
    for (images, labels), (mixed, soft) in zip(clean, mixed_batches, strict=True):
        lam = _mixup_weight(soft, labels)
        assert lam is not None and 0.0 <= lam <= 1.0
        weights.append(lam)
        np.testing.assert_allclose(soft, lam * labels + (1 - lam) * labels[::-1], atol=1e-5)
        # Each image is the same convex combination of itself and its partner in the
        # reversed batch.
        np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-4)
    assert any(1e-3 < lam < 1 - 1e-3 for lam in weights), f"no soft label: {weights}"


def _check_cutmix(images, mixed, labels, soft):
    """`mixed` pastes one rectangle of the reversed batch into every image; the labels weigh
    the partner's class by the rectangle's area. Returns that area."""
    other = images[::-1]
    from_self = np.isclose(mixed, images, atol=1e-5).all(-1)
    from_other = np.isclose(mixed, other, atol=1e-5).all(-1)
    assert (from_self | from_other).all(), "a pixel from neither image"
    # Pixels that tell the two images apart decide; the box is the same for the whole batch.
    inside = (from_other & ~from_self).any(0)
    outside = (from_self & ~from_other).any(0)
    assert not (inside & outside).any()
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size:
        box = np.zeros_like(inside)
        box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
        assert not (box & outside).any(), "the pasted pixels are not one rectangle"
    area = 1.0 - _mixup_weight(soft, labels)
    np.testing.assert_allclose(soft, (1 - area) * labels + area * labels[::-1], atol=1e-5)
    # The label weight is the pasted area: at least the box the decisive pixels span, at
    # most everything not shown to come from the image itself.
    height, width = inside.shape
    lower = rows.size and (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    assert lower / (height * width) - 1e-5 <= area <= 1 - outside.mean() + 1e-5
    return area


def test_cutmix_pastes_a_rectangle_weighted_by_its_area():
    deterministic = dict(flip=False, crop_scale_min=1.0, batch_size=8)
    clean = _batches(_config(**deterministic), count=3)
    cut = _batches(_config(cutmix_alpha=1.0, **deterministic), count=3)
    areas = [_check_cutmix(x, m, y, s) for (x, y), (m, s) in zip(clean, cut, strict=True)]
    assert any(0.0 < area < 1.0 for area in areas), areas


def test_cutmix_box_on_distinct_images():
    """On images whose every pixel differs from its partner's, the box is exact."""
    tf.random.set_seed(1)
    images = tf.random.uniform((4, 16, 24, 3))
    labels = tf.one_hot([0, 1, 2, 3], 4)
    for draw in range(5):
        key = tf.constant([1, draw], tf.int64)
        mixed, soft = (np.asarray(t) for t in mixup_cutmix(images, labels, 0.0, 1.0, key))
        pasted = (mixed != np.asarray(images)).any(-1)
        box = pasted[0]
        assert (pasted == box).all(), "the same box in every image"
        rows, cols = box.any(1), box.any(0)
        np.testing.assert_array_equal(box, rows[:, None] & cols[None, :])
        np.testing.assert_allclose(mixed[:, box], np.asarray(images)[::-1][:, box])
        area = box.mean()
        np.testing.assert_allclose(soft, (1 - area) * np.asarray(labels)
                                   + area * np.asarray(labels)[::-1], atol=1e-6)


def test_mixup_cutmix_make_soft_labels():
    deterministic = dict(flip=False, crop_scale_min=1.0, batch_size=8)
    clean = _batches(_config(**deterministic), count=8)
    both = _batches(_config(mixup_alpha=0.4, cutmix_alpha=1.0, **deterministic), count=8)
    kinds = set()
    for (images, labels), (mixed, soft) in zip(clean, both, strict=True):
        np.testing.assert_allclose(soft.sum(-1), np.ones(8), atol=1e-5)
        lam = _mixup_weight(soft, labels)
        if np.allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-4):
            kinds.add("mixup")
        else:
            _check_cutmix(images, mixed, labels, soft)
            kinds.add("cutmix")
    assert kinds == {"mixup", "cutmix"}  # with both on, each batch picks one of them
    assert any(np.any((s > 1e-3) & (s < 1 - 1e-3)) for _, s in both), "no soft label"
    assert os.environ.get("KERAS_BACKEND") == "tensorflow"
