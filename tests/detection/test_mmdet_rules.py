"""mmdetection's training-data rules: annotation and image filters, OpenCV nearest resize."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.mmdet_rules import (
    annotation_box,
    clip_boxes,
    keep_training_image,
    resize_nearest,
)
from keras_res2net.detection.data.pipeline import resize_and_pad


@pytest.mark.parametrize("bbox, area, kept", [
    ([10, 10, 20, 30], 600, [10, 10, 30, 40]),
    ([-5, 90, 20, 30], 600, [-5, 90, 15, 120]),   # partly outside: kept unclipped
    ([100, 10, 5, 5], 25, None),                  # starts at the right border: no overlap
    ([10, 10, 0.9, 30], 27, None),                # narrower than 1 px
    ([10, 10, 30, 0.5], 15, None),                # shorter than 1 px
    ([10, 10, 20, 30], 0, None),                  # zero area
])
def test_annotation_box_as_mmdetection_parses(bbox, area, kept):
    assert annotation_box(bbox, 100, 100, area) == kept


def test_keep_training_image_as_filter_cfg():
    assert keep_training_image(1, 32, 500)
    assert not keep_training_image(1, 31, 500)        # shorter side under min_size=32
    assert not keep_training_image(0, 640, 480)       # no annotation
    assert keep_training_image(0, 640, 480, filter_empty_gt=False)


def test_load_coco_drops_and_filters_as_mmdetection(shapes_val, tmp_path):
    data = json.loads(shapes_val[0].read_text())
    first = [a for a in data["annotations"] if a["image_id"] == 1]  # two objects
    first[0]["bbox"] = [first[0]["bbox"][0], first[0]["bbox"][1], 0.5, 10]  # under 1 px
    first[1]["bbox"] = [120, 120, 30, 30]  # mostly outside the 128x128 image: kept
    next(a for a in data["annotations"] if a["image_id"] == 3)["ignore"] = 1  # dropped
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    full = load_coco(path, shapes_val[1])  # evaluation: every image, even the empty one
    assert [r.image_id for r in full.records] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(full.records[0].boxes, [[120, 120, 150, 150]])
    assert len(full.records[0].segmentations) == 1 and len(full.records[1].boxes) == 0
    assert len(full.records[2].boxes) == 2  # image 3: three objects, one marked "ignore"
    train = load_coco(path, shapes_val[1], filter_empty_gt=True, min_size=32)
    assert [r.image_id for r in train.records] == [1, 3, 4, 5, 6]
    assert load_coco(path, shapes_val[1], min_size=129).records == []


def test_resize_nearest_takes_the_floor_index():
    row = tf.constant(np.arange(5, dtype=np.uint8)[None, :])
    # OpenCV INTER_NEAREST, 5 -> 3: floor(d * 5 / 3) = 0, 1, 3 (half-pixel centres: 0, 2, 4).
    np.testing.assert_array_equal(resize_nearest(row, (1, 3))[0], [0, 1, 3])
    assert not np.array_equal(tf.image.resize(row[..., None], (1, 3), "nearest")[0, :, 0],
                              [0, 1, 3])
    # 3 -> 5: floor(d * 3 / 5) = 0, 0, 1, 1, 2; 4 -> 6 in rows, channels untouched.
    np.testing.assert_array_equal(resize_nearest(row[:, :3], (1, 5))[0], [0, 0, 1, 1, 2])
    image = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    out = np.asarray(resize_nearest(image, (6, 2)))
    np.testing.assert_array_equal(out, image[[0, 0, 1, 2, 2, 3]])


def test_pipeline_resizes_maps_with_the_floor_index_and_clips_boxes():
    # Masks travel as crops cut from the original-resolution mask at the (clipped) box, so no
    # nearest-neighbour resize touches them; semantic maps are resized as OpenCV does.
    masks = np.zeros((1, 5, 5), np.uint8)
    masks[0, :, 1] = 1
    semantic = np.tile(np.arange(5, dtype=np.uint8), (5, 1))
    example = {"image": np.zeros((5, 5, 3), np.uint8), "masks": masks, "semantic": semantic,
               "boxes": np.array([[-1.0, 0.0, 5.5, 5.0]], np.float32),
               "classes": np.array([1], np.int32), "image_id": np.int64(1)}
    out = resize_and_pad(example, (3, 3), 4, None, mask_crop_size=5)
    np.testing.assert_array_equal(np.asarray(out["semantic"])[:3, :3], [[0, 1, 3]] * 3)
    np.testing.assert_allclose(out["boxes"], [[0.0, 0.0, 3.0, 3.0]])  # clipped to 3x3
    # The crop covers the clipped box [0, 5] x [0, 5]: the mask's own pixels, column 1 set.
    np.testing.assert_array_equal(np.asarray(out["mask_crops"])[0], masks[0])


def test_clip_boxes():
    boxes = tf.constant([[-2.0, 3.0, 50.0, 70.0]])
    np.testing.assert_allclose(clip_boxes(boxes, (60, 40)), [[0.0, 3.0, 40.0, 60.0]])


def test_tfrecord_source_filters_as_mmdetection(shapes_val, tmp_path):
    from keras_res2net.detection import configs
    from keras_res2net.detection.data import sources, tf_example

    data = json.loads(shapes_val[0].read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    path = tmp_path / "empty2.json"
    path.write_text(json.dumps(data))
    tf_example.write_tfrecord(load_coco(path, shapes_val[1]), tmp_path / "train.tfrecord")
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    source = sources.open_source("tfrecord", config, tmp_path)
    assert [int(e["image_id"]) for e in source.raw()] == [1, 3, 4, 5, 6]
    config.data.min_image_size = 129  # the 128 px images are now too small
    assert list(sources.open_source("tfrecord", config, tmp_path).raw()) == []
    config.data.min_image_size, config.data.filter_empty_gt = 0, False
    assert len(list(sources.open_source("tfrecord", config, tmp_path).raw())) == 6
