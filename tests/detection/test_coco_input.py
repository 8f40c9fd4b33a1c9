"""The COCO input path at scale: RLE decoded in TensorFlow, mask crops, mask targets from
crops, aspect-ratio batches, JPEG decoding (normalise-then-pad is test_model.py's). References:
pycocotools, PIL, NumPy slices and the full-image mask targets (`crop_masks`)."""

import numpy as np
import pytest
import tensorflow as tf
from mock_coco import write_coco_set
from PIL import Image
from pycocotools import mask as mask_utils

from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.instance_masks import (
    crop_mask_to_box,
    crop_rle_to_box,
    decode_rle,
)
from keras_res2net.detection.data.pipeline import build_dataset
from keras_res2net.detection.modeling.roi_align import crop_box_masks, crop_masks


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """Four JPEGs, two landscape and two portrait, with polygon and RLE instances."""
    return write_coco_set(tmp_path_factory.mktemp("coco"),
                          sizes=((48, 80), (80, 48), (50, 90), (90, 50)), objects=3)


def test_rle_decodes_as_pycocotools_does():
    rng = np.random.default_rng(0)
    masks = [(rng.random((37, 23)) < p).astype(np.uint8) for p in (0.02, 0.5, 0.97)]
    masks.append(mask_utils.decode(mask_utils.frPyObjects(
        [[3, 2, 300, 40, 200, 230, 5, 210]], 240, 320))[..., 0])  # long runs, many chunks
    masks.append(np.ones((5, 4), np.uint8))  # a first run of 0 zeros
    for mask in masks:
        rle = mask_utils.encode(np.asfortranarray(mask))
        out = decode_rle(tf.constant(rle["counts"]), *mask.shape)
        np.testing.assert_array_equal(out, mask)


def _soft_crop(mask, box, size):
    """NumPy float64 bilinear samples at the centres of a size x size grid over `box`
    (0 outside the pixel centres' span), before thresholding."""
    def axis(start, end, pixels):
        coords = start + (np.arange(size) + 0.5) * (end - start) / size - 0.5
        low = np.floor(coords).astype(int)
        weights = np.zeros((size, pixels))
        inside = (coords >= 0) & (coords <= pixels - 1)
        for index, weight in ((low, 1 - (coords - low)), (low + 1, coords - low)):
            ok = inside & (index >= 0) & (index < pixels)
            weights[np.arange(size)[ok], index[ok]] += weight[ok]
        return weights
    return axis(box[1], box[3], mask.shape[0]) @ mask @ axis(box[0], box[2], mask.shape[1]).T


def test_crops_decoded_around_the_box_equal_crops_of_the_whole_mask():
    """Against a float64 NumPy reference: equal except where a sample sits on the 0.5 tie
    (float32 rounding decides those either way)."""
    mask = (np.random.default_rng(3).random((30, 41)) < 0.4).astype(np.uint8)
    rle = tf.constant(mask_utils.encode(np.asfortranarray(mask))["counts"])
    for box in ([0, 0, 41, 30], [0.4, 2.6, 9.3, 29.9], [30.2, 0, 41, 7.5], [12, 11, 13, 12]):
        soft = _soft_crop(mask.astype(np.float64), box, 9)
        for crop in (crop_rle_to_box(rle, box, 30, 41, size=9), crop_mask_to_box(mask, box, 9)):
            differ = np.asarray(crop) != (soft >= 0.5)
            assert np.all(np.abs(soft[differ] - 0.5) < 1e-4), box


def test_crop_of_an_integral_box_at_its_size_is_its_pixels():
    mask = (np.random.default_rng(1).random((40, 50)) < 0.5).astype(np.uint8)
    crop = crop_mask_to_box(mask, [7, 5, 27, 25], size=20)
    np.testing.assert_array_equal(crop, mask[5:25, 7:27])


def test_targets_from_crops_equal_targets_from_full_masks():
    """Lossless crops (integral boxes, crop size = box size, masks inside their boxes): the
    RoIAlign of the crop equals the RoIAlign of the full mask, for RoIs inside, across and
    beyond the box."""
    rng = np.random.default_rng(2)
    full = np.zeros((1, 2, 64, 64), np.float32)
    boxes = np.array([[[10, 12, 26, 28], [30, 20, 46, 36]]], np.float32)
    crops = np.zeros((1, 2, 16, 16), np.uint8)
    for m, (x1, y1, x2, y2) in enumerate(boxes[0].astype(int)):
        crops[0, m] = rng.random((16, 16)) < 0.6
        full[0, m, y1:y2, x1:x2] = crops[0, m]
    rois = np.array([[[10, 12, 26, 28], [12.5, 14.2, 21.7, 25.1], [4, 6, 22, 30],
                      [28.3, 18.6, 50.2, 39.9], [35, 25, 41, 30]]], np.float32)
    gt_index = np.array([[0, 0, 0, 1, 1]])
    expected = np.asarray(crop_masks(full, rois, gt_index, output_size=7, sampling_ratio=2))
    ours = np.asarray(crop_box_masks(crops, boxes, rois, gt_index, output_size=7))
    assert expected.max() > 0.9 and expected.min() < 0.1
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_pipeline_crops_equal_pycocotools_masks_cropped(coco_set):
    json_path, folder, masks = coco_set
    dataset = load_coco(json_path, folder)
    batches = build_dataset(dataset, batch_size=1, max_size=(90, 90), max_instances=4,
                            mask_crop_size=24)
    for record, full, batch in zip(dataset.records, masks, batches, strict=True):
        crops = np.asarray(batch["mask_crops"][0, :len(full)])
        for crop, mask, box in zip(crops, full, record.boxes, strict=True):
            np.testing.assert_array_equal(crop, crop_mask_to_box(mask, box, 24))
            assert crop.sum() > 0
        # JPEGs decode as PIL decodes them (the accurate IDCT), then resize as mmcv does.
        height, width = np.asarray(batch["image_sizes"][0]).astype(int)
        with Image.open(record.path) as image:
            assert (record.height, record.width) == (image.height, image.width)
            resized = tf.image.resize(np.asarray(image.convert("RGB"), np.float32),
                                      (height, width))
        np.testing.assert_array_equal(batch["images"][0, :height, :width],
                                      np.round(np.clip(resized, 0, 255)))


def test_training_batches_hold_one_orientation(coco_set):
    batches = build_dataset(load_coco(*coco_set[:2]), batch_size=2, max_size=(90, 90),
                            max_instances=4, training=True, seed=3)
    seen = set()
    for batch in batches.take(6):
        sizes = np.asarray(batch["original_sizes"])
        portrait = sizes[:, 1] < sizes[:, 0]
        assert portrait.all() or not portrait.any(), sizes
        seen.add(bool(portrait[0]))
    assert seen == {True, False}
    # Without grouping, some batch of the same stream mixes them.
    mixed = build_dataset(load_coco(*coco_set[:2]), batch_size=2, max_size=(90, 90),
                          max_instances=4, training=True, seed=3, group_by_aspect_ratio=False)
    assert any(len({bool(w < h) for h, w in np.asarray(b["original_sizes"])}) == 2
               for b in mixed.take(6))

