"""Model Garden-style TFRecords: written from a COCO set, decoded back to the same data."""

import numpy as np
import pytest

from keras_res2net.detection.data import tf_example
from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.instance_masks import crop_masks_to_boxes
from keras_res2net.detection.data.pipeline import build_dataset


def test_tfrecord_round_trip(shapes_val, tmp_path):
    dataset = load_coco(*shapes_val)
    assert tf_example.write_tfrecord(dataset, tmp_path / "val.tfrecord") == 6
    decoded = list(tf_example.load(str(tmp_path / "*.tfrecord"), dataset.category_ids))
    assert len(decoded) == 6
    for record, example in zip(dataset.records, decoded, strict=True):
        assert int(example["image_id"]) == record.image_id
        np.testing.assert_array_equal(example["image"], record.load_image())
        np.testing.assert_allclose(example["boxes"], record.boxes, atol=1e-4)
        np.testing.assert_array_equal(example["classes"], record.classes)
        np.testing.assert_array_equal(
            example["mask_crops"], crop_masks_to_boxes(record.load_masks(), example["boxes"]))
    data = tf_example.load(str(tmp_path / "*.tfrecord"), dataset.category_ids)
    batch = next(iter(build_dataset(data, batch_size=2, max_size=(128, 128), max_instances=8)))
    assert batch["images"].shape == (2, 128, 128, 3)
    assert batch["mask_crops"].shape == (2, 8, 112, 112)


def test_missing_files_fail_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        tf_example.load(str(tmp_path / "*.tfrecord"), [1, 2, 3])
